"""Actors: a stateful object living on one worker, called from anywhere.

``client.submit(Counter, actor=True)`` runs a task that builds ``Counter()``
on a worker (see ``worker/_actors.py``); the future's result is an
:class:`Actor`, a small proxy naming that worker and the task's key.  Its
methods return :class:`ActorFuture` s (``.result()``, or ``await`` in async
code) and its other attributes are read from the object itself.  Calls go
straight to the worker holding it, not through the scheduler, and run one at
a time.  A proxy pickles as its class, worker and key, so tasks can be given
actors (as arguments, or as futures that resolve to them) and call them.

The object lives as long as its key is held: a proxy obtained from a
future's result holds that future.  If its worker dies, calls through the
proxy raise :class:`~shoal.ActorLostError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import weakref
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

from .._exceptions import ActorLostError, CommClosedError, ShoalTimeoutError
from ..protocol import deserialize, serialize

T = TypeVar("T")

#: Connections one process keeps busy with calls to one worker's actors at
#: once: a burst of calls queues for them instead of opening one each.
ACTOR_CONNECTIONS = 4
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary())


def _gate(address: str) -> asyncio.Semaphore:
    gates = _gates.setdefault(asyncio.get_running_loop(), {})
    gate = gates.get(address)
    if gate is None:
        gate = gates[address] = asyncio.Semaphore(ACTOR_CONNECTIONS)
    return gate


class BaseActorFuture(Generic[T]):
    """The result of an actor's method call: ``result(timeout)``, ``done()``, ``await``."""

    def result(self, timeout: float | None = None) -> T:
        raise NotImplementedError

    def done(self) -> bool:
        raise NotImplementedError

    def __await__(self) -> Generator[Any, None, T]:
        raise NotImplementedError


class ActorFuture(BaseActorFuture[T]):
    """A call in flight on the loop that carries it (a client's or a worker's)."""

    def __init__(self, future: concurrent.futures.Future | asyncio.Future,
                 describe: str) -> None:
        self._future = future
        self._describe = describe

    def result(self, timeout: float | None = None) -> T:
        future = self._future
        if isinstance(future, asyncio.Future):
            raise RuntimeError(  # noqa: TRY004 - misuse of the loop, not of a type
                f"{self._describe}: use `await` on the event loop that made it")
        try:
            answer = future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise ShoalTimeoutError(f"{self._describe} gave no result within "
                                    f"timeout={timeout}s") from None
        return answer  # type: ignore[no-any-return]

    def done(self) -> bool:
        return self._future.done()

    def __await__(self) -> Generator[Any, None, T]:
        future = self._future
        if isinstance(future, concurrent.futures.Future):
            return asyncio.wrap_future(future).__await__()
        return future.__await__()

    def __repr__(self) -> str:
        return f"<ActorFuture: {self._describe}{' done' if self.done() else ''}>"


def _transport(held_by: Any) -> tuple[Any, asyncio.AbstractEventLoop]:
    """The connection pool and loop a proxy talks through: the worker of the
    task (or actor) calling it; else the client of the future it came from;
    else this process's worker, or the default client."""
    from ..worker._context import task_worker
    from ..worker._server import _current_worker

    worker = task_worker()
    client = held_by.client if held_by is not None else None
    if worker is None and client is None and _current_worker:
        worker = _current_worker[-1]
    if worker is not None:
        return worker.pool, worker.executor.loop
    if client is None:
        from ._client import default_client

        client = default_client()
    assert client.loop is not None
    return client.pool, client.loop


class Actor:
    """A proxy to an object living on worker ``address`` under ``key``."""

    def __init__(self, cls: type, address: str, key: str) -> None:
        self._cls = cls
        self._address = address
        self.key = key
        self._future: Any = None  # the Future it came from, holding the object alive

    def __reduce__(self) -> Any:
        return (Actor, (self._cls, self._address, self.key))

    def __repr__(self) -> str:
        return f"<Actor: {self._cls.__name__}, key={self.key}>"

    def __dir__(self) -> list[str]:
        return sorted(set(dir(type(self))) | {n for n in dir(self._cls) if not n.startswith("_")})

    async def _request(self, pool: Any, op: str, **kwargs: Any) -> Any:
        try:
            async with _gate(self._address):
                answer = await pool.request(self._address, op, key=self.key, **kwargs)
        except (CommClosedError, OSError) as exc:
            raise ActorLostError(
                f"the worker {self._address} holding actor {self.key!r} is gone: {exc}"
            ) from exc
        if answer.get("exception") is not None:
            raise deserialize(answer["exception"])
        return deserialize(answer["result"])

    def _submit(self, op: str, describe: str, **kwargs: Any) -> ActorFuture:
        pool, loop = _transport(self._future)
        coro = self._request(pool, op, **kwargs)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return ActorFuture(loop.create_task(coro), describe)
        return ActorFuture(asyncio.run_coroutine_threadsafe(coro, loop), describe)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._cls, name, None)
        if callable(attr):
            @functools.wraps(attr)
            def call(*args: Any, **kwargs: Any) -> ActorFuture:
                return self._submit("actor_execute", f"{self._cls.__name__}.{name}()",
                                    method=name, args=serialize(args), kwargs=serialize(kwargs))

            return call
        future = self._submit("actor_attribute", f"{self._cls.__name__}.{name}",
                              attribute=name)
        if isinstance(future._future, asyncio.Future):
            return future  # on the loop itself: await it
        return future.result()


class ActorMaker:
    """The function of an actor's task: builds the object where the task runs."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.__name__ = cls.__name__  # names the task's key

    def __call__(self, *args: Any, **kwargs: Any) -> Actor:
        from ..worker._context import current_key, task_worker

        worker, key = task_worker(), current_key()
        if worker is None or key is None:
            raise RuntimeError("an actor can only be created by a task on a worker")
        worker.actors.add(key, self.cls(*args, **kwargs))
        return Actor(self.cls, worker.address, key)


def actor_maker(func: Callable[..., Any]) -> ActorMaker:
    if not isinstance(func, type):
        raise TypeError(f"actor=True needs a class, got {type(func).__name__}")
    return ActorMaker(func)
