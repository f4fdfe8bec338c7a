"""LocalCluster with real processes: faults, scaling, clean shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from shoal import Client, LocalCluster

from ..polling import wait_for


def slow_inc(x: int, delay: float = 0.02) -> int:
    time.sleep(delay)
    return x + 1


def add(a: int, b: int) -> int:
    return a + b


def test_workers_are_separate_processes(proc_cluster):
    with Client(proc_cluster) as client:
        pids = client.run(os.getpid)
        assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
        assert client.submit(add, 1, 2).result(timeout=30) == 3


def test_function_defined_in_a_script_runs_on_workers(proc_cluster, tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        from shoal import Client
        def square(x):
            return x * x
        with Client({proc_cluster.scheduler_address!r}) as c:
            print(sum(c.gather(c.map(square, range(10)))))
    """))
    out = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "285", out.stderr


def test_worker_killed_mid_computation_loses_nothing(proc_cluster):
    with Client(proc_cluster) as client:
        leaves = client.map(slow_inc, range(60), pure=False)
        total = client.submit(sum, leaves)
        victim = next(iter(client.run(os.getpid).values()))
        os.kill(victim, signal.SIGKILL)
        assert total.result(timeout=60) == sum(range(1, 61))
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, 30,
                   "the nanny restarting the worker")
        assert victim not in client.run(os.getpid).values()


def test_client_disconnecting_mid_computation_releases_its_work(proc_cluster, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(f"""
        import time, sys
        from shoal import Client
        c = Client({proc_cluster.scheduler_address!r})
        fs = c.map(time.sleep, [0.5] * 40, pure=False)
        print("submitted", flush=True)
        time.sleep(60)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "submitted"
        with Client(proc_cluster) as client:
            wait_for(lambda: client.scheduler_info()["tasks"] > 0, 10, "tasks arriving")
            proc.kill()
            proc.wait(10)
            wait_for(lambda: client.scheduler_info()["tasks"] == 0, 30,
                       "the departed client's tasks being released")
            assert client.submit(add, 2, 2).result(timeout=30) == 4
    finally:
        proc.kill()
        proc.wait()


def test_scale_up_and_down(tmp_path):
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                      nanny=False) as cluster, Client(cluster) as client:
        cluster.scale(3)
        assert len(client.scheduler_info()["workers"]) == 3
        data = client.map(add, range(30), range(30))
        client.gather(data)
        cluster.scale(1)
        assert len(client.scheduler_info()["workers"]) == 1
        assert sum(client.gather(data)) == 2 * sum(range(30))


def test_close_leaves_no_processes():
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
    children = [p for p in me.children(recursive=True) if p.pid not in before]
    assert len(children) == 5  # scheduler + 2 nannies + 2 workers
    cluster.close()
    _gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive


def test_close_is_orderly_every_worker_says_goodbye(capfd):
    """Each worker is asked to stop once: a second SIGTERM makes its nanny kill it
    on the spot, and the scheduler then logged it as lost."""
    with LocalCluster(n_workers=3, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert sum(client.gather(client.map(slow_inc, range(30), delay=0.0))) == 465
    err = capfd.readouterr().err
    assert "connection lost" not in err and "killed" not in err, err


def test_forgotten_cluster_is_cleaned_up_at_exit(tmp_path):
    script = tmp_path / "forget.py"
    script.write_text(textwrap.dedent("""
        import psutil
        from shoal import LocalCluster
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None)
        print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
        # exits without closing
    """))
    out = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True,
                         timeout=120)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) >= 3, out.stderr
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                               for p in pids), 20, "children exiting")


def test_parent_killed_takes_the_cluster_along(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent("""
        import psutil, time
        from shoal import LocalCluster
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None)
        print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
        time.sleep(120)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert pids
        proc.kill()
        proc.wait(10)
        wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                   for p in pids), 20, "orphans exiting")
    finally:
        proc.kill()
        proc.wait()


def test_cli_scheduler_and_worker(tmp_path):
    from shoal.cluster._process import ChildProcess

    scheduler = ChildProcess(["scheduler", "--host", "127.0.0.1", "--port", "0",
                              "--http-port", "-1"])
    worker = None
    try:
        address = scheduler.wait_announced(30)["address"]
        worker = ChildProcess(["worker", address, "--nthreads", "2", "--name", "cli-w",
                               "--no-nanny"])
        assert worker.wait_announced(30)["name"] == "cli-w"
        with Client(address) as client:
            assert client.submit(add, 20, 22).result(timeout=30) == 42
            (info,) = client.scheduler_info()["workers"].values()
            assert info["name"] == "cli-w" and info["nthreads"] == 2
    finally:
        if worker is not None:
            worker.terminate()
        scheduler.terminate()
    assert worker.proc.returncode == 0 and scheduler.proc.returncode == 0


def test_worker_without_scheduler_gives_up_clearly():
    out = subprocess.run([sys.executable, "-m", "shoal.cli", "worker", "tcp://127.0.0.1:9",
                          "--no-nanny", "--death-timeout", "1"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "could not reach the scheduler" in out.stderr


def test_shoal_local_serves_until_terminated():
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", "local", "--workers", "1",
                             "--threads", "1"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("shoal local cluster: scheduler at tcp://"), line
        address = line.split()[-1]
        with Client(address) as client:
            assert client.submit(add, 1, 2).result(timeout=30) == 3
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()


def test_demo_command_prints_its_report():
    out = subprocess.run([sys.executable, "-m", "shoal.cli", "demo", "--units", "120"],
                         check=False, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "quality assurance of 120 units" in out.stdout
    assert "tasks in" in out.stdout and "flagged units" in out.stdout


def test_worker_refuses_thresholds_out_of_order():
    out = subprocess.run([sys.executable, "-m", "shoal.cli", "worker", "tcp://127.0.0.1:9",
                          "--memory-pause", "0.5", "--memory-spill", "0.9"],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "out of order" in out.stderr


def test_client_without_address_starts_and_stops_its_own_cluster():
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        assert client.submit(add, 2, 3).result(timeout=30) == 5
        started = [p for p in me.children(recursive=True) if p.pid not in before]
        assert started
    _gone, alive = psutil.wait_procs(started, timeout=15)
    assert not alive
