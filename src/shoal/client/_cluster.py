"""Questions and calls about the cluster as a whole, for ``Client`` (which
mixes in :class:`ClusterCalls`): ``run_on_scheduler``, ``wait_for_workers``,
``has_what``, ``nthreads``, ``restart``, ``get_versions``, ``replicate``,
logs, the task stream, plugins (``register_plugin``; ``upload_file`` is
one), ``rebalance``, ``profile`` and ``shutdown``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from .._exceptions import ShoalTimeoutError
from ..protocol import deserialize, serialize

if TYPE_CHECKING:
    from ._client import Client
    from ._future import Future

#: How often ``wait_for_workers`` asks the scheduler.
WORKER_POLL_INTERVAL = 0.1


def run_on_scheduler(client: Client, function: Callable[..., Any], args: tuple,
                     kwargs: dict[str, Any]) -> Any:
    ser, ser_args, ser_kwargs = serialize(function), serialize(args), serialize(kwargs)

    async def run() -> Any:
        answer = await client.ask_scheduler("run_function",
                                            function=ser, args=ser_args, kwargs=ser_kwargs)
        return deserialize(answer["result"])

    return client.sync(run)


def wait_for_workers(client: Client, n_workers: int, timeout: float | None) -> Any:
    if n_workers < 0:
        raise ValueError(f"n_workers must be 0 or more, got {n_workers}")

    async def wait() -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = await client.ask_scheduler("scheduler_info")
            if len(info["workers"]) >= n_workers:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise ShoalTimeoutError(f"only {len(info['workers'])} of {n_workers} workers "
                                        f"joined within timeout={timeout}s")
            await asyncio.sleep(WORKER_POLL_INTERVAL)  # a polling period, not a sync

    return client.sync(wait)


def _only(mapping: dict[str, Any], workers: list[str] | None) -> dict[str, Any]:
    return mapping if workers is None else {w: v for w, v in mapping.items() if w in workers}


def has_what(client: Client, workers: list[str] | None) -> Any:
    async def ask() -> dict[str, list[str]]:
        answer = await client.ask_scheduler("has_what")
        return _only(answer, workers)

    return client.sync(ask)


def nthreads(client: Client, workers: list[str] | None) -> Any:
    async def ask() -> dict[str, int]:
        info = await client.ask_scheduler("scheduler_info")
        return _only({a: w["nthreads"] for a, w in info["workers"].items()}, workers)

    return client.sync(ask)


def restart(client: Client, timeout: float) -> Any:
    async def ask() -> list[str]:
        answer = await client.ask_scheduler("restart", timeout=timeout)
        return answer["workers"]

    return client.sync(ask)


#: What ``get_versions`` reports besides Python and shoal.
VERSIONED_PACKAGES = ("cloudpickle", "msgpack", "dask", "numpy", "pandas")


def versions(packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """This process's Python and package versions (None: not installed)."""
    import importlib.metadata
    import platform

    found: dict[str, str | None] = {}
    for name in ("shoal", *VERSIONED_PACKAGES, *packages):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return {"python": platform.python_version(), "packages": found}


def _flat(found: dict[str, Any]) -> dict[str, Any]:
    return {"python": found["python"], **found["packages"]}


def get_versions(client: Client, check: bool, packages: tuple[str, ...]) -> dict[str, Any]:
    out = {"client": versions(packages),
           "scheduler": client.run_on_scheduler(versions, packages),
           "workers": client.run(versions, packages)}
    if check:
        where = {"scheduler": out["scheduler"], **out["workers"]}
        mine = _flat(out["client"])
        mismatched = sorted({name for v in where.values() for name, version in _flat(v).items()
                             if version != mine.get(name)})
        if mismatched:
            raise ValueError(f"versions differ between the client and the cluster for "
                             f"{mismatched}: {where}")
    return out


def upload_file(client: Client, filename: str, load: bool = True) -> dict[str, Any]:
    """As a worker plugin (as dask does): workers that join later get the file too;
    uploading a file of the same name again replaces it (and reloads the module)."""
    import os

    from .._plugins import UploadFile

    plugin = UploadFile(filename, load=load)
    return cast("dict[str, Any]", register_plugin(
        client, plugin, f"upload-file-{os.path.basename(filename)}", False))


def logs(client: Client, n: int | None, workers: list[str] | None, scheduler: bool) -> Any:
    async def ask() -> Any:
        if scheduler:
            answer = await client.ask_scheduler("get_logs", n=n)
            return [tuple(line) for line in answer["logs"]]
        answers = await client.ask_scheduler("broadcast",
                                             worker_op="get_logs", workers=workers, n=n)
        out = {}
        for address, answer in answers.items():
            if answer.get("status") != "ok":
                raise RuntimeError(f"no logs from {address}: {answer.get('message')}")
            out[address] = [tuple(line) for line in answer["logs"]]
        return out

    return client.sync(ask)


class ClusterCalls:
    """The Client methods of this module (a mixin of ``Client``)."""

    @property
    def _me(self) -> Client:
        return cast("Client", self)

    def run_on_scheduler(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``function`` in the scheduler's process (``dask_scheduler=`` if it asks)."""
        return run_on_scheduler(self._me, function, args, kwargs)

    def restart(self, timeout: float = 30.0) -> Any:
        """Cancel every task and start every worker afresh (they need a nanny)."""
        return restart(self._me, timeout)

    def wait_for_workers(self, n_workers: int, timeout: float | None = None) -> Any:
        """Block until at least ``n_workers`` workers are connected."""
        return wait_for_workers(self._me, n_workers, timeout)

    def get_versions(self, check: bool = False, packages: tuple[str, ...] = ()) -> Any:
        """Python and package versions of the client, scheduler and workers; with
        ``check=True``, a ValueError naming what differs."""
        return get_versions(self._me, check, tuple(packages))

    def upload_file(self, filename: str, load: bool = True) -> Any:
        """Send a ``.py`` (imported) or ``.zip``/``.egg``/``.whl`` file to every
        worker, and to each worker that joins later."""
        return upload_file(self._me, filename, load)

    def get_scheduler_logs(self, n: int | None = None) -> Any:
        """The scheduler's newest ``n`` log lines: ``[(level, line), ...]``."""
        return logs(self._me, n, None, scheduler=True)

    def get_worker_logs(self, n: int | None = None, workers: list[str] | None = None) -> Any:
        """``{worker: [(level, line), ...]}``, each worker's newest ``n`` log lines."""
        return logs(self._me, n, workers, scheduler=False)

    def replicate(self, futures: Iterable[Future], n: int | None = None,
                  timeout: float = 30.0) -> Any:
        """Keep ``n`` copies (all workers if None) of each future's result, once
        the futures are done."""
        client, futures = self._me, list(futures)

        async def ask() -> None:
            await client._wait_final(f._state for f in futures)
            await client.ask_scheduler("replicate", keys=[f.key for f in futures], n=n,
                                       timeout=timeout)

        return client.sync(ask)

    def rebalance(self, futures: Iterable[Future] | None = None,
                  workers: list[str] | None = None, timeout: float = 30.0) -> Any:
        """Move results between ``workers`` (all if None) so that they hold similar
        numbers of bytes; only those of ``futures``, if given, once they are done."""
        client = self._me
        futures = list(futures) if futures is not None else None

        async def ask() -> None:
            keys = None
            if futures is not None:
                await client._wait_final(f._state for f in futures)
                keys = [f.key for f in futures]
            await client.ask_scheduler("rebalance", keys=keys, workers=workers, timeout=timeout)

        return client.sync(ask)

    def has_what(self, workers: list[str] | None = None) -> Any:
        """``{worker: [keys it holds]}``."""
        return has_what(self._me, workers)

    def nthreads(self, workers: list[str] | None = None) -> Any:
        """``{worker: number of threads}``."""
        return nthreads(self._me, workers)

    ncores = nthreads

    def register_plugin(self, plugin: Any, name: str | None = None,
                        idempotent: bool | None = None) -> Any:
        """Run a SchedulerPlugin on the scheduler, a WorkerPlugin on every worker
        (and each that joins later), a NannyPlugin on every nanny (before its
        worker starts; one with ``restart = True`` restarts the workers now)."""
        return register_plugin(self._me, plugin, name, bool(idempotent))

    def register_worker_plugin(self, plugin: Any, name: str | None = None,
                               nanny: bool | None = None) -> Any:
        """dask's older name for :meth:`register_plugin`."""
        return register_plugin(self._me, plugin, name, False)

    def register_scheduler_plugin(self, plugin: Any, name: str | None = None,
                                  idempotent: bool | None = None) -> Any:
        """dask's older name for :meth:`register_plugin`."""
        return register_plugin(self._me, plugin, name, bool(idempotent))

    def shutdown(self) -> Any:
        """Close the scheduler and every worker (other clients lose them too), then
        this client, and the cluster object it was given or made, if any."""
        return shutdown(self._me)

    def unregister_plugin(self, name: str) -> Any:
        """Remove the plugin registered as ``name`` (tearing it down or closing it)."""
        return unregister_plugin(self._me, name)

    def unregister_worker_plugin(self, name: str, nanny: bool | None = None) -> Any:
        return unregister_plugin(self._me, name)

    def unregister_scheduler_plugin(self, name: str) -> Any:
        return unregister_plugin(self._me, name)

    def profile(self, key: str | None = None, start: float | None = None,
                stop: float | None = None, workers: list[str] | None = None,
                merge_workers: bool = True, filename: str | None = None,
                plot: bool = False) -> Any:
        """The statistical profile of the tasks run on ``workers`` (all if None)
        between ``start`` and ``stop`` (``time.time()`` values), of tasks of
        prefix ``key`` only if given: dask's tree of frames and sample counts,
        merged over the workers unless ``merge_workers=False``; ``filename``
        also writes it as an HTML page (``plot`` is accepted and ignored)."""
        from ._profile import profile

        return profile(self._me, key, start, stop, workers, merge_workers, filename)

    def get_task_stream(self, start: float = 0.0) -> list[dict[str, Any]]:
        """Tasks that finished since ``start`` (a ``time.time()``): key, worker, startstops."""
        from ._diagnostics import task_stream

        return task_stream(self._me, start)


async def _shutdown(client: Client) -> None:
    from ..comm import CommClosedError

    try:
        await client.ask_scheduler("terminate")
    except (CommClosedError, OSError):
        pass  # gone already
    cluster = client.cluster
    await client._close()
    if cluster is not None:
        closing = cluster.close() if not client._own_cluster else None
        if closing is not None and hasattr(closing, "__await__"):
            await closing


def shutdown(client: Client) -> Any:
    if client.asynchronous:
        return _shutdown(client)
    from ..comm import CommClosedError

    cluster = client.cluster
    try:
        client.sync(lambda: client.ask_scheduler("terminate"))
    except (CommClosedError, OSError):
        pass  # gone already
    client.close()  # closes a cluster it made itself
    if cluster is not None and not client._own_cluster:
        cluster.close()
    return None


def _raise_failure(answer: dict[str, Any]) -> None:
    if answer.get("exception") is not None:
        raise deserialize(answer["exception"])


def register_plugin(client: Client, plugin: Any, name: str | None,
                    idempotent: bool) -> Any:
    from .._plugins import plugin_kind, plugin_name

    kind, name = plugin_kind(plugin), plugin_name(plugin, name)
    ser = serialize(plugin)

    async def ask() -> Any:
        if kind == "scheduler":
            answer = await client.ask_scheduler("register_scheduler_plugin", plugin=ser,
                                                name=name, idempotent=idempotent)
            _raise_failure(answer)
            return None
        if kind == "nanny":
            answer = await client.ask_scheduler(
                "register_nanny_plugin", plugin=ser, name=name,
                idempotent=idempotent, restart=bool(getattr(plugin, "restart", False)))
            return {w: {"status": "OK"} for w in answer["workers"]}
        answer = await client.ask_scheduler("register_worker_plugin", plugin=ser, name=name,
                                            idempotent=idempotent)
        for reply in answer["workers"].values():
            if isinstance(reply, dict):
                _raise_failure(reply)
        return {w: {"status": "OK"} for w in answer["workers"]}

    return client.sync(ask)


def unregister_plugin(client: Client, name: str) -> Any:
    async def ask() -> None:
        answer = await client.ask_scheduler("unregister_plugin", name=name)
        if not answer["found"]:
            raise ValueError(f"no plugin named {name!r} is registered")

    return client.sync(ask)
