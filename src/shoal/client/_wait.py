"""Waiting on many futures: ``wait`` and ``as_completed``."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, NamedTuple

from ._future import FINAL, Future
from ._loop import bounded

FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"


class DoneAndNotDone(NamedTuple):
    done: set[Future]
    not_done: set[Future]


def wait(futures: Iterable[Future] | Future, timeout: float | None = None,
         return_when: str = ALL_COMPLETED) -> Any:
    """Block until the futures are done (or as ``return_when`` says)."""
    futures = [futures] if isinstance(futures, Future) else list(futures)
    if return_when not in (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED):
        raise ValueError(f"unknown return_when {return_when!r}")
    if not futures:
        return DoneAndNotDone(set(), set())
    client = futures[0].client

    async def run() -> DoneAndNotDone:
        await bounded(_wait(futures, return_when), timeout,
                      lambda: f"{sum(not f.done() for f in futures)} of {len(futures)} futures "
                      f"not {return_when.lower().replace('_', ' ')}")
        done = {f for f in futures if f.done()}
        return DoneAndNotDone(done, set(futures) - done)

    return client.sync(run)


async def _wait(futures: list[Future], return_when: str) -> None:
    if return_when == ALL_COMPLETED:  # one after the other: linear in the number of futures
        for f in futures:
            if not f.done():
                await f._state.wait()
        return
    pending = {asyncio.ensure_future(f._state.wait()) for f in futures if not f.done()}
    try:
        while pending:
            _finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if return_when == FIRST_COMPLETED:
                return
            if return_when == FIRST_EXCEPTION and any(
                f.status in ("error", "cancelled") for f in futures
            ):
                return
    finally:
        for task in pending:
            task.cancel()


class as_completed:
    """Iterate over futures in the order they finish (sync or ``async for``).

    ``with_results=True`` yields ``(future, result)`` pairs (``(future,
    exception)`` for a failed one when ``raise_errors=False``); more futures
    can be added while iterating with :meth:`add` or :meth:`update`;
    :meth:`batches` yields lists of all that finished meanwhile.
    """

    def __init__(self, futures: Iterable[Future] = (), with_results: bool = False,
                 raise_errors: bool = True) -> None:
        self.with_results = with_results
        self.raise_errors = raise_errors
        self._queue: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self._aqueue: asyncio.Queue[Future] | None = None
        self._outstanding = 0
        self._client: Any = None
        for future in futures:
            self.add(future)

    def add(self, future: Future) -> None:
        self._outstanding += 1
        self._client = future.client
        future.add_done_callback(self._on_done)

    def update(self, futures: Iterable[Future]) -> None:
        for future in futures:
            self.add(future)

    def batches(self) -> Iterator[list[Any]]:
        """Lists of everything done since the last one (at least one each)."""
        while self._outstanding:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._outstanding -= len(batch)
            yield [self._item(f) for f in batch]

    def _on_done(self, future: Future) -> None:
        if self._aqueue is not None:
            self._aqueue.put_nowait(future)
        else:
            self._queue.put(future)

    def count(self) -> int:
        return self._outstanding

    def is_empty(self) -> bool:
        return self._outstanding == 0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if not self._outstanding:
            raise StopIteration
        future = self._queue.get()
        self._outstanding -= 1
        return self._item(future)

    def _item(self, future: Future) -> Any:
        if not self.with_results:
            return future
        if future.status != "finished":
            if self.raise_errors:
                raise future._state.make_exception()
            return future, future._state.make_exception()
        return future, future.result()

    def __aiter__(self) -> AsyncIterator[Any]:
        if self._aqueue is None:
            self._aqueue = asyncio.Queue()
            while not self._queue.empty():
                self._aqueue.put_nowait(self._queue.get())
        return self

    async def __anext__(self) -> Any:
        if not self._outstanding:
            raise StopAsyncIteration
        assert self._aqueue is not None
        future = await self._aqueue.get()
        self._outstanding -= 1
        if not self.with_results:
            return future
        if future.status != "finished":
            if self.raise_errors:
                raise future._state.make_exception()
            return future, future._state.make_exception()
        return future, await future.result()


__all__ = [
    "ALL_COMPLETED",
    "FINAL",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "as_completed",
    "wait",
]
