"""An event loop in a background thread, for the blocking API.

A synchronous Client (the usual case in a notebook) runs its connection to
the scheduler on this loop and waits for results from the calling thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._exceptions import ShoalTimeoutError

T = TypeVar("T")


class LoopRunner:
    """Owns an asyncio loop running in a daemon thread."""

    def __init__(self, name: str = "shoal-loop") -> None:
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), name=name, daemon=True)
        self.thread.start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        self.loop.run_forever()

    def run(self, func: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Run a coroutine function on the loop and wait for its result."""
        if threading.current_thread() is self.thread:
            raise RuntimeError("cannot wait on the client's loop from inside it")

        async def call() -> T:
            return await func()

        future = asyncio.run_coroutine_threadsafe(call(), self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():  # the call's own timeout, with its own message
                raise
            future.cancel()
            raise ShoalTimeoutError(f"no result within timeout={timeout}s") from None
        finally:
            # an exception raised here holds this frame, which held the future,
            # which holds the exception: a cycle only the cyclic GC would free
            del future

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(callback, *args)

    def stop(self, timeout: float = 5.0) -> None:
        if self.loop.is_closed():
            return

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(drain(), self.loop).result(timeout)
        except (concurrent.futures.TimeoutError, RuntimeError):
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()


async def bounded(awaitable: Awaitable[T], timeout: float | None, what: Callable[[], str]) -> T:
    """``await awaitable`` within ``timeout`` seconds, else ShoalTimeoutError naming
    ``what()`` and the timeout.

    The error is raised after the ``except`` block, with no context: a
    context would hold the cancelled wait's frames, and through them the
    task that the error is stored in, a cycle only the cyclic GC frees.
    """
    try:
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError:
        pass
    raise ShoalTimeoutError(f"{what()} within timeout={timeout}s")
