"""The worker's side of actors: the objects themselves, and their calls.

``client.submit(Cls, ..., actor=True)`` runs a task that builds ``Cls(...)``
here and registers it under the task's key (:meth:`ActorHost.add`); the
task's result, what the data store keeps and what clients and other tasks
receive, is only a small proxy naming this worker and that key (see
``client/_actor.py``).  Proxies call methods and read attributes with the
``actor_execute`` and ``actor_attribute`` requests served here.

Calls on one actor never overlap: each actor has one thread of its own, and
its coroutine methods run on the worker's event loop (as in dask), so the
object needs no locks of its own.  An actor lives as long as its key is
held here: when the scheduler frees the key, the object and its thread go.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from typing import TYPE_CHECKING, Any

from ..protocol import Serialized, ToPickle, deserialize
from ..protocol._call import raised
from ._context import as_actor_call

if TYPE_CHECKING:
    from ._server import Worker

logger = logging.getLogger(__name__)


class _Hosted:
    __slots__ = ("executor", "instance")

    def __init__(self, instance: Any, name: str) -> None:
        self.instance = instance
        self.executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"shoal-actor-{name}")


class ActorHost:
    """The actors living on one worker, by key."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.actors: dict[str, _Hosted] = {}
        self._lock = threading.Lock()  # ``add`` runs in task threads

    def handlers(self) -> dict[str, Any]:
        return {"actor_execute": self.execute, "actor_attribute": self.attribute}

    def add(self, key: str, instance: Any) -> None:
        """From the task that built ``instance``: it lives here under ``key``."""
        hosted = _Hosted(instance, type(instance).__name__)
        with self._lock:
            old = self.actors.pop(key, None)
            self.actors[key] = hosted
        if old is not None:
            old.executor.shutdown(wait=False)

    def release(self, key: str) -> None:
        """The key was freed here: drop the object (after its running call)."""
        if not self.actors:
            return
        with self._lock:
            hosted = self.actors.pop(key, None)
        if hosted is not None:
            hosted.executor.shutdown(wait=False)

    def close(self) -> None:
        with self._lock:
            hosted, self.actors = list(self.actors.values()), {}
        for h in hosted:
            h.executor.shutdown(wait=False)

    def _get(self, key: str) -> _Hosted:
        hosted = self.actors.get(key)
        if hosted is None:
            raise KeyError(f"no actor {key!r} on worker {self.worker.address} "
                           "(its future was released, or the worker restarted)")
        return hosted

    async def execute(self, key: str, method: str, args: Serialized | None = None,
                      kwargs: Serialized | None = None) -> dict[str, Any]:
        """Call ``method`` of actor ``key``: in its thread, or on this loop if async."""
        try:
            hosted = self._get(key)
            func = getattr(hosted.instance, method)
            call_args = deserialize(args) if args is not None else ()
            call_kwargs = deserialize(kwargs) if kwargs is not None else {}
            if inspect.iscoroutinefunction(func):
                result = await func(*call_args, **call_kwargs)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(
                    hosted.executor, as_actor_call, self.worker, key, func, call_args,
                    call_kwargs)
        except Exception as exc:  # noqa: BLE001 - the caller re-raises it as itself
            return raised(exc)
        return {"status": "ok", "result": ToPickle(result)}

    def attribute(self, key: str, attribute: str) -> dict[str, Any]:
        try:
            value = getattr(self._get(key).instance, attribute)
        except Exception as exc:  # noqa: BLE001 - the caller re-raises it as itself
            return raised(exc)
        return {"status": "ok", "result": ToPickle(value)}
