"""Futures: handles on results that live on workers.

A :class:`Future` is cheap; many may point at one key.  The client counts
them per key, and when the last one is garbage-collected it tells the
scheduler it no longer wants the result, so the worker can free the memory.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._exceptions import CancelledError, ShoalTimeoutError, TaskError
from ..protocol import SerializationError, Serialized, deserialize
from ._loop import bounded
from ._traceback import traceback_from_text

if TYPE_CHECKING:
    from ._client import Client

logger = logging.getLogger(__name__)

FINAL = ("finished", "error", "cancelled")
_NO_WORKERS: tuple[str, ...] = ()

#: Guards ``FutureState.callbacks``, which threads other than the loop's add to
#: (see :func:`wait_final_threadsafe`).
_callbacks_lock = threading.Lock()


class FutureState:
    """What the client knows about one key; shared by its Futures.

    A client may hold a million of these, so each is one slotted object of
    eight slots: the count of Futures (``refs``) and the recipe to make the
    key again after a scheduler restart live here rather than in dicts of
    their own, the workers holding the result are a tuple shared by every key
    on them, one slot holds the small result or the failure (a key has at
    most one of the two), and waiters, on the loop or in other threads, are
    callbacks made only when someone waits.
    """

    __slots__ = (
        "callbacks",
        "key",
        "nbytes",
        "outcome",
        "recipe",
        "refs",
        "status",
        "workers",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.status = "pending"
        self.workers: tuple[str, ...] = _NO_WORKERS
        self.nbytes = 0
        self.refs = 0  # Futures of this key (counted on register and release)
        self.recipe: Any = None  # see Client._send_graph and _recipes.Column
        self.callbacks: list[Callable[[], None]] | None = None  # made by the first one
        #: a small result sent with the report (Serialized or bytes), or once
        #: the task failed (exception, traceback, its text)
        self.outcome: Serialized | bytes | tuple[Serialized | None, str, str] | None = None

    @property
    def inline(self) -> Serialized | bytes | None:
        """The result, when it was small enough to come with the report."""
        outcome = self.outcome
        return None if isinstance(outcome, tuple) else outcome

    @property
    def failure(self) -> tuple[Serialized | None, str, str] | None:
        outcome = self.outcome
        return outcome if isinstance(outcome, tuple) else None

    @property
    def exception(self) -> Serialized | None:
        failure = self.failure
        return failure[0] if failure is not None else None

    @property
    def traceback(self) -> str:
        failure = self.failure
        return failure[1] if failure is not None else ""

    @property
    def exception_text(self) -> str:
        failure = self.failure
        return failure[2] if failure is not None else ""

    async def wait(self) -> None:
        """Return once the key is done; only on the client's loop (where the
        reports that finish keys are handled)."""
        if self.status in FINAL:
            return
        waiter = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not waiter.done():
                waiter.set_result(None)

        if not self.add_callback(wake):
            return
        try:
            await waiter
        except BaseException:  # cancelled (a timeout): keep no callback for it
            self.discard_callback(wake)
            raise

    # the status changes last: another thread that sees it final finds the rest set
    def finish(self, workers: tuple[str, ...], nbytes: int,
               inline: Serialized | bytes | None = None) -> None:
        self.workers = workers
        self.nbytes = nbytes
        self.outcome = inline
        self.status = "finished"
        self._done()

    def fail(self, exception: Serialized | None, traceback: str, text: str) -> None:
        self.outcome = (exception, traceback, text)
        self.status = "error"
        self._done()

    def cancel(self) -> None:
        self.status = "cancelled"
        self._done()

    def lose(self) -> None:
        """The result was lost with its worker and is being recomputed."""
        self.status = "pending"
        self.workers = _NO_WORKERS
        self.outcome = None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Have ``callback`` called when the key is done (from any thread); False,
        and nothing kept, if it is done already."""
        with _callbacks_lock:
            if self.status in FINAL:
                return False
            if self.callbacks is None:
                self.callbacks = [callback]
            else:
                self.callbacks.append(callback)
        return True

    def discard_callback(self, callback: Callable[[], None]) -> None:
        """Take back a callback of :meth:`add_callback` (a waiter that gave up)."""
        with _callbacks_lock:
            if self.callbacks is not None and callback in self.callbacks:
                self.callbacks.remove(callback)

    def _done(self) -> None:
        with _callbacks_lock:
            callbacks, self.callbacks = self.callbacks, None
        for callback in callbacks or ():
            _call_guarded(callback, self.key)

    def make_exception(self) -> BaseException:
        if self.status == "cancelled":
            return CancelledError(f"{self.key!r} was cancelled")
        exc: Any = None
        try:
            exc = deserialize(self.exception) if self.exception is not None else None
        except SerializationError:  # e.g. the exception's class is unknown here
            exc = None
        if not isinstance(exc, BaseException):
            exc = TaskError(self.exception_text or f"task {self.key!r} failed")
        if self.traceback:
            note = f"remote traceback of task {self.key!r}:\n{self.traceback}"
            if note not in getattr(exc, "__notes__", []):
                exc.add_note(note)
        return exc


def wait_final_threadsafe(state: FutureState, timeout: float | None) -> bool:
    """Block the calling thread (not the client's loop) until ``state`` is final;
    False if ``timeout`` seconds passed first.

    The loop releases a lock when the key is done: the caller wakes straight
    from the report, without a round of the loop to run a coroutine for it.
    """
    if state.status in FINAL:
        return True
    waiter = threading.Lock()
    waiter.acquire()
    if not state.add_callback(waiter.release):
        return True
    if waiter.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
        return True
    state.discard_callback(waiter.release)
    return False


def _call_guarded(callback: Callable[[], None], key: str) -> None:
    """Run a user's done-callback: if it raises, say so and carry on delivering results."""
    try:
        callback()
    except Exception:  # user code; its failure must not stop the client
        logger.exception("a done-callback of the future for %r raised", key)


class Future:
    """A result being computed, or held, by the cluster."""

    __slots__ = ("__weakref__", "_released", "_state", "client")

    #: dask reads a Future inside a graph as a reference to its key (dask's
    #: protocol for third-party futures), so persisted collections compose.
    __dask_future__ = True

    def __init__(self, key: str, client: Client, state: FutureState | None = None) -> None:
        self.client = client
        self._released = False
        self._state = client._register_future(key, state)

    @property
    def key(self) -> str:
        return self._state.key

    @property
    def status(self) -> str:
        return self._state.status

    def done(self) -> bool:
        return self._state.status in FINAL

    def cancelled(self) -> bool:
        return self._state.status == "cancelled"

    def release(self) -> None:
        """Let go of the result now rather than when this Future is collected."""
        if not self._released:
            self._released = True
            self.client._release_future(self.key)

    def result(self, timeout: float | None = None) -> Any:
        """The value; raises the task's exception if it failed."""
        if self.client.asynchronous:
            return self.client._result(self, timeout)
        return self.client._result_blocking(self, timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait_sync(timeout)
        return self._state.make_exception() if self._state.status != "finished" else None

    def traceback(self, timeout: float | None = None) -> TracebackType | None:
        """The remote traceback if the task failed, as a traceback object
        (``traceback.format_tb`` shows the worker's frames)."""
        self._wait_sync(timeout)
        if self._state.status != "error" or not self._state.traceback:
            return None
        return traceback_from_text(self._state.traceback)

    def _wait_sync(self, timeout: float | None) -> None:
        if self.done():
            return
        state = self._state
        if not self.client.asynchronous and not self.client._on_loop():
            if not wait_final_threadsafe(state, timeout):
                raise ShoalTimeoutError(f"{state.key!r} not done within timeout={timeout}s")
            return

        async def wait() -> None:
            await bounded(state.wait(), timeout, lambda: f"{state.key!r} not done")

        self.client.sync(wait)

    def cancel(self) -> None:
        self.client.cancel([self])

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """Call ``fn(future)`` once the future is done (on the client's loop thread)."""
        state = self._state

        def call() -> None:
            fn(self)

        def attach() -> None:
            if not state.add_callback(call):
                _call_guarded(call, self.key)

        self.client._call_on_loop(attach)

    def __await__(self) -> Any:
        return self.client._result(self, None).__await__()

    def __del__(self) -> None:
        try:
            if not self._released:
                self.client._release_future(self.key)
        except Exception:  # noqa: BLE001, S110 - at interpreter shutdown anything goes
            pass

    def __dask_tokenize__(self) -> str:
        return self.key

    def _repr_html_(self) -> str:
        from ._repr import future_html

        return future_html(self)

    def __repr__(self) -> str:
        return f"<Future: {self.status}, key: {self.key}>"

    def __reduce__(self) -> Any:
        raise TypeError(
            "a shoal Future cannot be pickled; pass it to submit/map as an argument "
            "(it arrives as its value) instead of capturing it in a closure"
        )
