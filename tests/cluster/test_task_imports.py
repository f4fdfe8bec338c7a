"""Imports on the workers: a module next to the user's script imports on
LocalCluster workers, whatever directory the script was started from (as with
dask's LocalCluster), and a worker warms the modules it is told to at start."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from shoal import Client
from shoal.cluster._process import ChildProcess, parent_path

from ..polling import wait_for


def test_a_module_next_to_the_script_imports_on_the_workers(tmp_path):
    project = tmp_path / "project"
    elsewhere = tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "helpers_next_to_script.py").write_text("def triple(x):\n    return 3 * x\n")
    (project / "job.py").write_text(textwrap.dedent("""
        from shoal import Client, LocalCluster
        from helpers_next_to_script import triple

        with LocalCluster(n_workers=1, processes=True, dashboard_address=None) as cluster, \\
                Client(cluster, timeout=20) as client:
            print("result", client.submit(triple, 14).result())
    """))
    out = subprocess.run([sys.executable, str(project / "job.py")], check=False,
                         capture_output=True, text=True, timeout=120, cwd=elsewhere)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "result 42" in out.stdout


def test_a_worker_imports_its_warm_modules_in_the_background(tmp_path):
    """``--warm-imports``: the worker process has the modules loaded before any
    task asks for them (the default warms numpy and dask's task spec)."""
    (tmp_path / "shoal_warmed_module.py").write_text("WARMED = True\n")
    scheduler = ChildProcess(["scheduler", "--host", "127.0.0.1", "--port", "0",
                              "--http-port", "-1"])
    worker = None
    try:
        address = scheduler.wait_announced(30)["address"]
        worker = ChildProcess(["worker", address, "--no-nanny", "--nthreads", "1",
                               "--warm-imports", "shoal_warmed_module,shoal_not_installed"],
                              env={"PYTHONPATH": os.pathsep.join([str(tmp_path), parent_path()])})
        worker.wait_announced(30)
        with Client(address, timeout=20) as client:
            wait_for(lambda: all(client.run(_loaded, "shoal_warmed_module").values()),
                     what="the warm import")
            assert not any(client.run(_loaded, "shoal_not_installed").values())
    finally:
        if worker is not None:
            worker.terminate()
        scheduler.terminate()


def _loaded(name: str) -> bool:
    return name in sys.modules
