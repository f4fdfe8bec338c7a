"""A scheduler SIGKILLed mid-computation and started again on the same port.

Real processes throughout: ``shoal scheduler`` and two ``shoal worker``
processes, and a client in this process.  The workers rejoin the new
scheduler announcing what they hold; the client reconnects and resubmits
what it still wants; the computation completes with the right answer, and
the results that survived on the workers are reused, not recomputed.  A
worker's readiness (``/ready``) follows its registration through all this.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import Client, SchedulerLostError
from shoal.client import _dask
from shoal.client._client import _current

from ..polling import wait_for

CLI = [sys.executable, "-m", "shoal.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def leaf(x: int, marks: str) -> int:
    """Leaves sign each run, so the test can count executions per input."""
    Path(marks, f"{x}-{uuid.uuid4().hex}").touch()
    time.sleep(0.05)
    return x + 1


def add(a: int, b: int) -> int:
    time.sleep(0.02)
    return a + b


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class Processes:
    """The processes a test started; all stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def scheduler(self, port: int) -> subprocess.Popen:
        proc = self.start("scheduler", "--host", "127.0.0.1", "--port", str(port),
                          "--http-port", "-1")
        wait_for(lambda: listening(port) or proc.poll() is not None, 30, "the scheduler")
        assert proc.poll() is None, "the scheduler exited"
        return proc


    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop()


def test_computation_survives_a_scheduler_sigkill_and_restart(processes, tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    old = processes.scheduler(port)
    for i in range(2):
        processes.start("worker", address, "--name", f"w{i}", "--nthreads", "1",
                        "--no-nanny", "--death-timeout", "60")
    marks = str(tmp_path)
    with Client(address, timeout=30, reconnect_timeout=60) as client:
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, 30, "two workers")
        leaves = client.map(leaf, range(60), marks=marks)
        layer = leaves
        while len(layer) > 1:  # a tree of sums over the leaves
            layer = [client.submit(add, a, b) for a, b in zip(layer[::2], layer[1::2])] + (
                [layer[-1]] if len(layer) % 2 else [])
        total = layer[0]

        # kill by progress, not by clock: once a third of the leaves are done
        wait_for(lambda: sum(f.status == "finished" for f in leaves) >= 20, 60,
                 "a third of the leaves finishing")
        old.send_signal(signal.SIGKILL)
        old.wait(10)
        done_before = [f.key for f in leaves if f.status == "finished"]
        assert not total.done()
        processes.scheduler(port)

        assert total.result(timeout=120) == sum(range(1, 61))
        assert client.gather(leaves) == list(range(1, 61))
        assert client.status == "running"
        # reconnecting registers again with the scheduler, not again as the
        # current client nor as dask's default scheduler
        assert _current.count(client) == 1
        assert [h._client() for h in _dask._defaults].count(client) == 1
        runs: dict[str, int] = {}
        for mark in os.listdir(marks):
            x = mark.split("-")[0]
            runs[x] = runs.get(x, 0) + 1
        assert sorted(runs) == sorted(str(x) for x in range(60))  # each leaf ran
        reused = [f for f in leaves if f.key in done_before]
        recomputed = [f.key for f in reused if runs[str(leaves.index(f))] > 1]
        assert not recomputed, f"results held by rejoined workers were recomputed: {recomputed}"


def test_futures_fail_clearly_when_the_scheduler_does_not_come_back(processes):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    sched = processes.scheduler(port)
    with Client(address, timeout=30, reconnect_timeout=1.0) as client:
        future = client.submit(add, 1, 2)  # no worker: it stays pending
        wait_for(lambda: client.scheduler_info()["tasks"] == 1, 30, "the task arriving")
        sched.send_signal(signal.SIGKILL)
        sched.wait(10)
        with pytest.raises(SchedulerLostError, match="reconnect_timeout=1.0s"):
            future.result(timeout=30)
        assert client.status == "disconnected"


def inc(x: int) -> int:
    return x + 1


def test_a_restarted_scheduler_gets_a_maps_recipes_after_half_was_let_go(processes):
    """Nothing ran before the restart (no workers yet): every result comes from the
    recipes the client kept: a map's column, repacked once most of its futures were
    let go, and a task depending on two of the let-go ones."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    old = processes.scheduler(port)
    with Client(address, timeout=30, reconnect_timeout=60) as client:
        futures = client.map(inc, range(40))
        total = client.submit(add, futures[0], futures[1])
        column = futures[0]._state.recipe
        kept = futures[30:]
        del futures
        wait_for(lambda: len(client._states) == 11, 30, "the releases")
        assert len(column.packed.keys) < 40  # repacked: what was let go is not kept
        old.send_signal(signal.SIGKILL)
        old.wait(10)
        processes.scheduler(port)
        for i in range(2):
            processes.start("worker", address, "--name", f"w{i}", "--nthreads", "1",
                            "--no-nanny", "--death-timeout", "60")
        assert total.result(timeout=120) == 3
        assert client.gather(kept) == list(range(31, 41))


def probe(url: str) -> int:
    """The status a kubelet's HTTP probe would see (0: no answer)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_a_worker_is_ready_only_while_registered_with_a_scheduler(processes):
    """The pods' readiness probe (/ready) follows the worker's registration; liveness
    (/health) stays up through a lost scheduler, so the kubelet does not restart it."""
    port, http_port = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes.start("worker", address, "--name", "w", "--nthreads", "1", "--no-nanny",
                    "--death-timeout", "60", "--http-port", str(http_port))
    base = f"http://127.0.0.1:{http_port}"
    wait_for(lambda: probe(base + "/health") == 200, 30, "the worker serving /health")
    assert probe(base + "/ready") == 503  # no scheduler yet
    sched = processes.scheduler(port)
    wait_for(lambda: probe(base + "/ready") == 200, 30, "the worker registering")
    sched.send_signal(signal.SIGKILL)
    sched.wait(10)
    wait_for(lambda: probe(base + "/ready") == 503, 30, "the worker noticing its loss")
    assert probe(base + "/health") == 200  # alive, reconnecting
    processes.scheduler(port)
    wait_for(lambda: probe(base + "/ready") == 200, 30, "the worker registering again")
