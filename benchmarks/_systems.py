"""Start the same cluster shape on shoal or on dask.distributed (Ray: _ray_workloads).

The benchmark compares two systems through one code path, so everything that
differs between them (imports, LocalCluster keywords, command lines) is kept
here. Two cluster shapes are offered:

* ``local_cluster``: each system's own ``LocalCluster`` with 2 worker
  processes of 1 thread each. This is what a user gets, and what the latency,
  throughput and transfer workloads use. (dask's LocalCluster runs its
  scheduler inside the client process; shoal's runs it as a separate one.)
* ``cli_cluster``: a scheduler process and 2 worker processes started from
  each system's command line. The memory workload uses it because it must
  read the resident memory of a process that runs the scheduler and nothing
  else, for both systems alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _profile

N_WORKERS = 2
THREADS_PER_WORKER = 1
WORKER_WAIT_SECONDS = 60.0
STOP_WAIT_SECONDS = 10.0
HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
SYSTEMS = ("shoal", "dask", "ray")

# ``python -c`` entry point for shoal's CLI that works whatever main()'s signature.
_SHOAL_MAIN = (
    "import sys; from shoal.cli import main; sys.argv[0] = 'shoal'; "
    "rc = main(); sys.exit(rc if isinstance(rc, int) else 0)"
)


@dataclass(frozen=True)
class System:
    """The handful of names a workload needs from one system."""

    name: str
    version: str
    client_cls: Any
    cluster_cls: Any
    wait: Callable[..., Any]


def child_environment() -> dict[str, str]:
    """The environment for every process the harness starts: tasks and shoal importable."""
    env = dict(os.environ)
    paths = [str(HERE), str(SRC)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def ensure_importable() -> None:
    """Make ``shoal`` importable from a checkout even when it is not installed."""
    for path in (str(HERE), str(SRC)):
        if path not in sys.path:
            sys.path.append(path)


def load(name: str) -> System:
    """Import one system's client API."""
    if name == "dask":
        import distributed

        return System("dask", distributed.__version__, distributed.Client,
                      distributed.LocalCluster, distributed.wait)
    if name == "shoal":
        ensure_importable()
        import shoal

        return System("shoal", getattr(shoal, "__version__", "?"), shoal.Client,
                      shoal.LocalCluster, shoal.wait)
    if name == "ray":  # its workloads are in _ray_workloads.py: no client/cluster classes
        import ray

        return System("ray", ray.__version__, None, None, ray.wait)
    raise ValueError(f"unknown system {name!r}; expected one of {SYSTEMS}")


@contextlib.contextmanager
def local_cluster(system: System) -> Iterator[Any]:
    """Yield a client connected to the system's own LocalCluster (2 procs x 1 thread)."""
    kwargs: dict[str, Any] = {
        "n_workers": N_WORKERS, "threads_per_worker": THREADS_PER_WORKER, "processes": True,
    }
    if system.name == "dask":
        kwargs.update(dashboard_address=None, silence_logs=logging.ERROR)
    with system.cluster_cls(**kwargs) as cluster, system.client_cls(cluster) as client:
        wait_for_workers(client, N_WORKERS)
        with _profile.recording(process_roles(client)):
            yield client


def wait_for_workers(client: Any, count: int, timeout: float = WORKER_WAIT_SECONDS) -> None:
    """Poll the scheduler until ``count`` workers have joined (bounded)."""
    deadline = time.monotonic() + timeout
    while len(client.scheduler_info()["workers"]) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(client.scheduler_info()['workers'])} of "
                               f"{count} workers joined within {timeout:.0f}s")
        time.sleep(0.05)


def process_roles(client: Any) -> dict[int, str]:
    """pid -> role ("client", "scheduler", "workers", or "client+scheduler" when the
    scheduler runs inside the client process, as in dask's LocalCluster)."""
    roles = {os.getpid(): "client"}
    for pid in client.run(os.getpid).values():
        roles[int(pid)] = "workers"
    scheduler_pid = client.scheduler_info().get("pid")
    if scheduler_pid is None and hasattr(client, "run_on_scheduler"):
        scheduler_pid = client.run_on_scheduler(os.getpid)
    if isinstance(scheduler_pid, int):
        roles[scheduler_pid] = "client+scheduler" if scheduler_pid in roles else "scheduler"
    return roles


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scheduler_command(name: str, port: int) -> list[str]:
    if name == "dask":
        return [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1",
                "--port", str(port), "--no-dashboard"]
    return [sys.executable, "-c", _SHOAL_MAIN, "scheduler", "--host", "127.0.0.1",
            "--port", str(port), "--http-port", str(free_port())]


def _worker_command(name: str, address: str) -> list[str]:
    if name == "dask":
        return [sys.executable, "-m", "dask", "worker", address, "--nthreads",
                str(THREADS_PER_WORKER), "--nworkers", "1", "--no-nanny", "--no-dashboard"]
    return [sys.executable, "-c", _SHOAL_MAIN, "worker", address, "--nthreads",
            str(THREADS_PER_WORKER), "--no-nanny"]


@contextlib.contextmanager
def cli_cluster(system: System) -> Iterator[tuple[Any, int]]:
    """Yield ``(client, scheduler_pid)`` for a scheduler + 2 workers started from the CLI."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as logdir:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            procs.append(_spawn(_scheduler_command(system.name, port), logdir, "scheduler"))
            for i in range(N_WORKERS):
                procs.append(_spawn(_worker_command(system.name, address), logdir, f"worker{i}"))
            client = _connect(system, address, procs, logdir)
            try:
                with _profile.recording(process_roles(client) | {procs[0].pid: "scheduler"}):
                    yield client, procs[0].pid
            finally:
                client.close()
        finally:
            _stop(procs)


def _spawn(command: list[str], logdir: str, label: str) -> subprocess.Popen[bytes]:
    log = open(os.path.join(logdir, f"{label}.log"), "wb")  # noqa: SIM115 - closed with the dir
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                            env=child_environment())


def _connect(system: System, address: str, procs: list[subprocess.Popen[bytes]],
             logdir: str) -> Any:
    deadline = time.monotonic() + WORKER_WAIT_SECONDS
    while True:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{system.name} process exited early:\n{_log_tails(logdir)}")
        try:
            client = system.client_cls(address, timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        wait_for_workers(client, N_WORKERS)
    except TimeoutError as exc:
        client.close()
        raise RuntimeError(f"{exc}\n{_log_tails(logdir)}") from exc
    return client


def _log_tails(logdir: str, lines: int = 15) -> str:
    out = []
    for path in sorted(Path(logdir).glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {path.name}\n" + "\n".join(tail))
    return "\n".join(out)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate workers first, then the scheduler; kill whatever does not exit in time."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
    for proc in reversed(procs):
        try:
            proc.wait(STOP_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_WAIT_SECONDS)
