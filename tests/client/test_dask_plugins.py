"""Plugins on a multi-process cluster, as with dask.distributed:
``register_plugin`` for worker, scheduler and nanny plugins (applied to
workers that join later too), ``unregister_plugin``, a plugin's errors kept
away from the servers, and the built-ins ``PipInstall``, ``UploadFile``,
``UploadDirectory`` and ``Environ``."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from shoal import (
    Client,
    Environ,
    LocalCluster,
    NannyPlugin,
    PipInstall,
    SchedulerPlugin,
    UploadDirectory,
    UploadFile,
    WorkerPlugin,
)
from tests.polling import wait_for


class Recorder(WorkerPlugin):
    name = "recorder"

    def setup(self, worker: Any) -> None:
        worker.recorded = []
        worker.torn_down = False

    def teardown(self, worker: Any) -> None:
        worker.torn_down = True

    def transition(self, key: str, start: str, finish: str, **kwargs: Any) -> None:
        from shoal import get_worker

        get_worker().recorded.append((key, start, finish))


class FailsToSetUp(WorkerPlugin):
    def setup(self, worker: Any) -> None:
        raise ZeroDivisionError("no setup for you")


class Watcher(SchedulerPlugin):
    name = "watcher"

    def start(self, scheduler: Any) -> None:
        scheduler.watched = {"workers": [], "removed": [], "graphs": [], "done": []}
        self.watched = scheduler.watched

    def add_worker(self, scheduler: Any, worker: str) -> None:
        self.watched["workers"].append(worker)

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self.watched["removed"].append(worker)

    def update_graph(self, scheduler: Any, *, keys: set, **kwargs: Any) -> None:
        self.watched["graphs"].append(sorted(keys))

    def transition(self, key: str, start: str, finish: str, **kwargs: Any) -> None:
        if finish == "memory":
            self.watched["done"].append(key)


class Broken(SchedulerPlugin):
    def transition(self, key: str, start: str, finish: str, **kwargs: Any) -> None:
        raise RuntimeError("a buggy plugin")


class MarkNanny(NannyPlugin):
    name = "mark-nanny"

    def setup(self, nanny: Any) -> None:
        nanny.env["SHOAL_TEST_NANNY_MARK"] = "set-by-nanny-plugin"


def recorded(dask_worker: Any) -> list:
    return list(getattr(dask_worker, "recorded", []))


def watched(dask_scheduler: Any) -> dict:
    return dict(getattr(dask_scheduler, "watched", {}))


def environ(name: str) -> str | None:
    return os.environ.get(name)


def test_a_worker_plugin_sees_transitions_and_is_torn_down(proc_client):
    assert set(proc_client.register_plugin(Recorder())) == set(
        proc_client.scheduler_info()["workers"])
    future = proc_client.submit(sum, [1, 2], pure=False)
    assert future.result(timeout=20) == 3
    wait_for(lambda: any((future.key, "executing", "memory") in r
                         for r in proc_client.run(recorded).values()),
             timeout=20, what="the plugin to see the task finish")
    proc_client.unregister_plugin("recorder")
    torn = proc_client.run(lambda dask_worker: dask_worker.torn_down)
    assert all(torn.values())
    assert all(proc_client.run(unhooked).values())
    with pytest.raises(ValueError, match="no plugin named"):
        proc_client.unregister_plugin("recorder")


def test_a_failing_setup_fails_the_registration_not_the_worker(proc_client):
    with pytest.raises(ZeroDivisionError, match="no setup for you"):
        proc_client.register_plugin(FailsToSetUp(), name="fails")
    assert proc_client.submit(sum, [1, 1]).result(timeout=20) == 2
    proc_client.unregister_plugin("fails")


def test_scheduler_plugins_see_workers_graphs_and_transitions_and_bugs_are_contained():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster, timeout=20) as client:
        client.register_plugin(Watcher())
        client.register_plugin(Broken(), name="broken")
        future = client.submit(sum, [4, 5])
        assert future.result(timeout=20) == 9  # the broken plugin stopped nothing
        cluster.scale(2)
        client.wait_for_workers(2, timeout=30)
        seen = wait_for(lambda: (w := client.run_on_scheduler(watched))["workers"] and w,
                        timeout=20, what="the new worker to be seen")
        assert future.key in seen["done"]
        assert [future.key] in seen["graphs"]
        assert len(seen["workers"]) == 1  # the one that joined after registering
        client.unregister_plugin("broken")
        client.unregister_plugin("watcher")
        assert client.run_on_scheduler(unhooked)  # no plugin left: no cost left


def unhooked(dask_scheduler: Any = None, dask_worker: Any = None) -> bool:
    """The state machine records transitions with its story log's own call again."""
    server = dask_scheduler or dask_worker
    state = server.state
    return bool(state._record == state.story_log.entries.extend
                and not getattr(server.plugins, "active", False))


def test_worker_plugins_reach_workers_that_join_later(tmp_path):
    module = tmp_path / "shoal_uploaded_helper.py"
    module.write_text("def answer():\n    return 42\n")
    package = tmp_path / "shoal_uploaded_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 'from a directory'\n")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster, timeout=20) as client:
        client.register_plugin(UploadFile(module))
        client.register_plugin(UploadDirectory(package, update_path=True))
        client.register_plugin(Recorder())
        cluster.scale(2)
        client.wait_for_workers(2, timeout=30)

        def imports() -> tuple:
            import shoal_uploaded_helper
            import shoal_uploaded_pkg

            return shoal_uploaded_helper.answer(), shoal_uploaded_pkg.VALUE

        assert set(client.run(imports).values()) == {(42, "from a directory")}
        assert all(isinstance(r, list) for r in client.run(recorded).values())


def test_environ_and_nanny_plugins_set_up_before_the_worker_starts():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster, timeout=20) as client:
        client.register_plugin(Environ({"SHOAL_TEST_ENVIRON": "42"}))
        client.register_plugin(MarkNanny())  # no restart: for the workers started from now
        assert set(client.run(environ, "SHOAL_TEST_ENVIRON").values()) == {"42"}
        cluster.scale(3)
        client.wait_for_workers(3, timeout=30)
        marks = client.run(environ, "SHOAL_TEST_NANNY_MARK")
        assert sorted(marks.values(), key=str) == [None, None, "set-by-nanny-plugin"]
        assert set(client.run(environ, "SHOAL_TEST_ENVIRON").values()) == {"42"}


def _wheel(directory: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel built by hand (no build backend, no network)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": b"PROBE = 'installed by PipInstall'\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: shoal-tests\nRoot-Is-Purelib: true\n"
                         b"Tag: py3-none-any\n",
    }
    lines = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{path},sha256={digest},{len(data)}")
    lines.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(lines) + "\n").encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def test_pip_install_installs_a_local_wheel_on_every_worker(proc_client, tmp_path):
    name = "shoal_pip_probe"
    wheel = _wheel(tmp_path, name, "0.1")
    try:
        proc_client.register_plugin(PipInstall([str(wheel)], pip_options=["--no-index",
                                                                          "--no-deps"]))

        def probe() -> str:
            import shoal_pip_probe

            return str(shoal_pip_probe.PROBE)

        assert set(proc_client.run(probe).values()) == {"installed by PipInstall"}
        with pytest.raises(RuntimeError, match="pip install"):
            proc_client.register_plugin(PipInstall(["shoal-no-such-package-anywhere"],
                                                   pip_options=["--no-index"]))
    finally:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "--quiet", name],
                       check=False, timeout=120)
        for plugin in ("pip-install-shoal-no-such-package-anywhere",
                       f"pip-install-{wheel}"[:200]):
            try:
                proc_client.unregister_plugin(plugin)
            except ValueError:
                pass
