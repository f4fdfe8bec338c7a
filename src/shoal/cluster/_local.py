"""LocalCluster: a scheduler and workers on this machine, no configuration.

By default the scheduler and every worker are separate processes talking
over TCP on the loopback interface (``processes=True``), each worker under a
nanny that restarts it; ``processes=False`` runs them all in one background
event loop of this process instead.  Sized to the machine when not told.
Closing (explicitly, by the context manager, at interpreter exit, or when the
object is garbage collected) stops every process it started.
"""

from __future__ import annotations

import asyncio
import atexit
import itertools
import logging
import math
import os
import weakref
from typing import Any, Self

from .._exceptions import ShoalTimeoutError
from ..client._loop import LoopRunner
from ..comm import ConnectionPool, Security
from ..worker._monitor import DEFAULT_STUCK_TIMEOUT
from ._adapt import Adaptive
from ._process import ChildProcess

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT = 60.0
#: What the cluster's processes log to this terminal (SHOAL_LOG_LEVEL overrides).
CHILD_LOG_LEVEL = os.environ.get("SHOAL_LOG_LEVEL", "WARNING")
_live: weakref.WeakSet[LocalCluster] = weakref.WeakSet()


def _default_sizes(n_workers: int | None, threads: int | None) -> tuple[int, int]:
    cores = os.cpu_count() or 1
    if n_workers is None and threads is None:
        n_workers = max(1, min(cores, 4))
        threads = max(1, cores // n_workers)
    elif n_workers is None:
        n_workers = max(1, cores // threads)  # type: ignore[operator]
    elif threads is None:
        threads = max(1, math.ceil(cores / max(n_workers, 1)))
    return n_workers, threads  # type: ignore[return-value]


class LocalCluster:
    """``with LocalCluster(n_workers=2) as cluster, Client(cluster) as client: ...``"""

    def __init__(
        self,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        processes: bool = True,
        *,
        memory_limit: str | float | None = "auto",
        nanny: bool = True,
        dashboard_address: int | None = 0,
        worker_ttl: float = 10.0,
        resources: dict[str, float] | None = None,
        local_directory: str | None = None,
        asynchronous: bool = False,
        startup_timeout: float = STARTUP_TIMEOUT,
        memory_stuck_timeout: float = DEFAULT_STUCK_TIMEOUT,
        security: Security | bool | None = None,
    ) -> None:
        #: ``True``: a fresh CA, certificates and HTTP token (Security.temporary()).
        self.security = (Security.temporary() if security is True
                         else security if isinstance(security, Security) else Security())
        self.n_workers, self.threads_per_worker = _default_sizes(n_workers, threads_per_worker)
        self.processes = processes
        if memory_limit in ("auto", None):
            from ..worker._memory import memory_limit_for

            memory_limit = memory_limit_for("auto", self.n_workers)
        self.memory_limit = memory_limit
        self.nanny = nanny
        self.dashboard_port = dashboard_address
        self.worker_ttl = worker_ttl
        self.resources = dict(resources or {})
        self.local_directory = local_directory  # workers' spill files (None: temp dir)
        self.asynchronous = asynchronous
        self.startup_timeout = startup_timeout
        #: seconds a worker stays paused with a full spill disk before it fails
        #: the tasks waiting to start there
        self.memory_stuck_timeout = memory_stuck_timeout
        self.scheduler_address = ""
        self.dashboard_link: str | None = None
        self.status = "created"
        self.workers: dict[str, Any] = {}  # name -> ChildProcess or Worker
        self._names = itertools.count()
        self._scheduler: Any = None
        self._runner: LoopRunner | None = None
        self.pool: ConnectionPool | None = None
        self._adaptive: Adaptive | None = None
        if not asynchronous:
            self._runner = LoopRunner("shoal-local-cluster")
            try:
                self._runner.run(self._start, timeout=startup_timeout * 2)
            except BaseException:
                self._stop_everything()
                raise
        _live.add(self)

    def __await__(self) -> Any:
        async def start() -> LocalCluster:
            if self.status == "created":
                await self._start()
            return self

        return start().__await__()

    # ------------------------------------------------------------ starting

    async def _start(self) -> None:
        self.status = "starting"
        self.pool = ConnectionPool(connection_args=self.security.connection_args("client"))
        if self.processes:
            self._start_scheduler_process()
        else:
            await self._start_scheduler_inprocess()
        await self._add_workers(self.n_workers)
        self.status = "running"

    def _start_scheduler_process(self) -> None:
        args = ["--log-level", CHILD_LOG_LEVEL, "scheduler", "--host", "127.0.0.1", "--port", "0",
                "--worker-ttl", str(self.worker_ttl)]
        args += ["--http-port", str(-1 if self.dashboard_port is None else self.dashboard_port)]
        args += self.security.cli_args("scheduler")
        proc = ChildProcess(args, env=self.security.child_env())
        info = proc.wait_announced(self.startup_timeout)
        self._scheduler = proc
        self.scheduler_address = info["address"]
        self._set_dashboard(info.get("http_address"))

    async def _start_scheduler_inprocess(self) -> None:
        from ..scheduler import Scheduler

        self._scheduler = await Scheduler("127.0.0.1", 0, http_port=self.dashboard_port,
                                          worker_ttl=self.worker_ttl,
                                          security=self.security).start()
        self.scheduler_address = self._scheduler.address
        self._set_dashboard(self._scheduler.http_address)

    def _set_dashboard(self, http_address: str | None) -> None:
        self.dashboard_link = f"{http_address}/" if http_address else None

    async def _add_workers(self, n: int) -> None:
        names = [f"local-{next(self._names)}" for _ in range(n)]
        if self.processes:
            env = self.security.child_env()
            procs = {name: ChildProcess(self._worker_args(name), env) for name in names}
            for name, proc in procs.items():
                try:
                    proc.wait_announced(self.startup_timeout)
                except RuntimeError:
                    for p in procs.values():
                        p.kill()
                    raise
                self.workers[name] = proc
        else:
            from ..worker import Worker

            for name in names:
                self.workers[name] = await Worker(
                    self.scheduler_address, nthreads=self.threads_per_worker, name=name,
                    memory_limit=self.memory_limit, resources=self.resources,
                    local_directory=self.local_directory,
                    memory_stuck_timeout=self.memory_stuck_timeout,
                    security=self.security,
                ).start()

    def _worker_args(self, name: str) -> list[str]:
        args = ["--log-level", CHILD_LOG_LEVEL, "worker", self.scheduler_address, "--name", name,
                "--host", "127.0.0.1",
                "--nthreads", str(self.threads_per_worker),
                "--memory-limit", str(self.memory_limit if self.memory_limit is not None
                                      else 0)]
        for resource, amount in self.resources.items():
            args += ["--resources", f"{resource}={amount}"]
        if self.local_directory is not None:
            args += ["--local-directory", self.local_directory]
        args += ["--memory-stuck-timeout", str(self.memory_stuck_timeout)]
        if not self.nanny:
            args.append("--no-nanny")
        if self.dashboard_port is not None:  # each worker serves /health and /metrics
            args += ["--http-port", "0"]
        return args + self.security.cli_args("worker")

    # ------------------------------------------------------------ scaling

    def scale(self, n: int) -> Any:
        """Run ``n`` workers: start new ones or retire (data moved first) the cheapest."""
        return self._call(lambda: self._scale(n))

    async def _scale(self, n: int) -> None:
        if n > len(self.workers):
            await self._add_workers(n - len(self.workers))
        elif n < len(self.workers):
            await self.retire(n=len(self.workers) - n)

    async def retire(self, n: int | None = None, names: list[str] | None = None) -> list[str]:
        assert self.pool is not None
        answer = await self.pool.request(self.scheduler_address, "retire_workers",
                                         workers=names, n=n)
        retired = [w["name"] for w in answer["retired"]]
        for name in retired:
            await self._stop_worker(name)
        return retired

    async def _stop_worker(self, name: str) -> None:
        handle = self.workers.pop(name, None)
        if isinstance(handle, ChildProcess):
            await asyncio.get_running_loop().run_in_executor(None, handle.terminate, 10.0)
        elif handle is not None:
            await handle.close()

    def adapt(self, minimum: int = 0, maximum: int | None = None, **kwargs: Any) -> Adaptive:
        """Scale between ``minimum`` and ``maximum`` following the scheduler's target."""
        if self._adaptive is not None:
            self._adaptive.stop()
        self._adaptive = Adaptive(self, minimum, maximum if maximum is not None else 10**6,
                                  **kwargs)
        self._call_soon(self._adaptive.start)
        return self._adaptive

    def _call(self, func: Any) -> Any:
        if self.asynchronous:
            return func()
        assert self._runner is not None
        return self._runner.run(func)

    def _call_soon(self, func: Any) -> None:
        if self.asynchronous:
            func()
        else:
            assert self._runner is not None
            self._runner.call_soon(func)

    async def scheduler_info(self) -> dict[str, Any]:
        assert self.pool is not None
        return await self.pool.request(self.scheduler_address, "scheduler_info")

    def get_logs(self, scheduler: bool = True, workers: bool = True) -> Any:
        """``{"Scheduler": text, worker name: text}``: the recent log lines of each."""

        async def collect() -> dict[str, str]:
            assert self.pool is not None
            out: dict[str, str] = {}
            if scheduler:
                answer = await self.pool.request(self.scheduler_address, "get_logs")
                out["Scheduler"] = "\n".join(line for _, line in answer["logs"])
            if workers:
                info = await self.scheduler_info()
                answers = await self.pool.request(self.scheduler_address, "broadcast",
                                                  worker_op="get_logs")
                for address, answer in answers.items():
                    name = info["workers"].get(address, {}).get("name", address)
                    out[str(name)] = "\n".join(line for _, line in answer.get("logs", []))
            return out

        return self._call(collect)

    def wait_for_workers(self, n: int, timeout: float = 30.0) -> Any:
        async def wait() -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while len((await self.scheduler_info())["workers"]) < n:
                if loop.time() > deadline:
                    raise ShoalTimeoutError(f"fewer than {n} workers within timeout={timeout}s")
                await asyncio.sleep(0.05)  # polling the scheduler, bounded by the deadline

        return self._call(wait)

    # ------------------------------------------------------------ closing

    def close(self) -> Any:
        if self.asynchronous:
            return self._close()
        if self.status == "closed":
            return None
        assert self._runner is not None
        try:
            self._runner.run(self._close, timeout=30)
        except (TimeoutError, RuntimeError):
            pass
        self._stop_everything()
        self._runner.stop()
        return None

    async def _close(self) -> None:
        if self.status == "closed":
            return
        self.status = "closing"
        if self._adaptive is not None:
            self._adaptive.stop()
        if not self.processes:
            for worker in list(self.workers.values()):
                await worker.close()
            if self._scheduler is not None:
                await self._scheduler.close()
            self.workers.clear()
        if self.pool is not None:
            self.pool.close()
        self._stop_everything()
        self.status = "closed"

    def _stop_everything(self) -> None:
        """Terminate every child process, workers first (idempotent, safe at exit)."""
        workers = [h for h in self.workers.values() if isinstance(h, ChildProcess)]
        for child in workers:  # all at once, then wait for each
            child.ask_to_stop()
        for child in workers:
            child.terminate(timeout=5.0)
        if isinstance(self._scheduler, ChildProcess):
            self._scheduler.terminate(timeout=5.0)
        if self.processes:
            self.workers.clear()
        self.status = "closed"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return await self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    def __del__(self) -> None:
        if self.status not in ("closed", "created"):
            try:
                self._stop_everything()
            except Exception:  # noqa: BLE001, S110 - at interpreter shutdown anything goes
                pass

    def _repr_html_(self) -> str:
        from ..client._repr import cluster_html

        return cluster_html(self)

    def __repr__(self) -> str:
        return (f"LocalCluster({self.scheduler_address!r}, workers={len(self.workers)}, "
                f"threads_per_worker={self.threads_per_worker}, status={self.status})")


@atexit.register
def _close_all_at_exit() -> None:
    for cluster in list(_live):
        try:
            cluster._stop_everything()
        except Exception:  # noqa: BLE001, S110 - best effort at exit
            pass
