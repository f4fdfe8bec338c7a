"""Coalescing writes per event-loop turn.

A message sent while the stream is idle (nothing buffered, no write in
flight, none written yet in this loop turn, no flood) leaves at once, from
``send()`` itself, when the comm can write it without waiting
(``Comm.write_nowait``): a lone message costs no turn of the loop.
Otherwise ``send()`` appends to a buffer and wakes a writer task.  The
writer runs after every callback already scheduled in this loop turn, so
everything sent in the same turn leaves as one message; while a write is in
flight, further messages pile up and go out together in the next.  No timer
is involved: a lone message leaves at once, a flood batches itself.

A flood is two batches within :data:`FLOOD_SECONDS`; it lasts until a
spell that long without one.  Meanwhile every message goes through the
buffer: cutting each turn's sends into a lone message and the rest would
double the writes, the peer's reads and its wake-ups (a tenth more CPU per
task in a map of tiny tasks).  A burst now and then (a round of releases)
is no flood, and leaves the next lone message its fast path.

Another thread (a client's caller, submitting) may write a message itself
with ``send_threadsafe`` when the stream is idle, sparing the loop a
wake-up (the message would wait for it tens of microseconds, more on a
busy machine); a lock keeps the buffer and the writes in order.  Two such
messages within :data:`THREAD_GAP_SECONDS` (a caller in a loop) start a
flood: the rest go through the loop and leave in batches.

A flood is cut into writes of at most :data:`MAX_BATCH_WEIGHT` messages (or
of messages weighing that much: a graph of 2,000 tasks weighs 2,000), so the
peer decodes and handles it in slices and stays responsive meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from ._core import Comm, CommClosedError
from ._supervise import spawn

logger = logging.getLogger(__name__)

#: The most messages (or message weight, see ``send``) one write carries.
MAX_BATCH_WEIGHT = 2_000
#: Batches this close together make a flood (see above).
FLOOD_SECONDS = 0.005
#: Messages from another thread this close together make a flood too: a
#: caller submitting in a loop (tens of microseconds apart), not one waiting
#: for each result (a round trip, hundreds of microseconds, apart).
THREAD_GAP_SECONDS = 0.0002


class BatchedSend:
    """A stream of small messages over one comm, written in batches."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm
        self._buffer: list[Any] = []
        self._cuts: list[int] = []  # where the buffer is cut into writes
        self._weight = 0  # of the buffer since the last cut
        self._wake = asyncio.Event()
        self._closing = False
        self._writing = False  # the writer task is inside a write
        self._wrote_now = False  # send() wrote in this loop turn: the rest batches
        self._loop = asyncio.get_running_loop()
        self._batched_at = -FLOOD_SECONDS  # loop time the writer task last wrote
        self._flood_until = 0.0
        self._threaded_at = -THREAD_GAP_SECONDS  # loop time of the last send_threadsafe
        #: guards the buffer and the writes against send_threadsafe (re-entrant: a
        #: value pickled as a message is written may send on this stream itself)
        self._lock = threading.RLock()
        self.messages_sent = 0
        self.batches_sent = 0
        self._task = spawn(self._run(), f"batched stream to {comm.peer_address}")

    def send(self, *msgs: Any, weight: int | None = None) -> None:
        """Queue ``msgs``; ``weight`` (default: one per message) says how much
        handling they cost the peer, e.g. the number of tasks in a graph."""
        if self._closing or self.comm.closed():
            raise CommClosedError(f"stream to {self.comm.peer_address} is closed")
        with self._lock:
            if (not (self._buffer or self._writing or self._wrote_now)
                    and self._loop.time() >= self._flood_until
                    and self._write_now(list(msgs), self.comm.write_nowait)):
                self._wrote_now = True
                self._loop.call_soon(self._turn_over)
                return
            self._buffer.extend(msgs)
            self._weight += len(msgs) if weight is None else weight
            if self._weight >= MAX_BATCH_WEIGHT:
                self._cuts.append(len(self._buffer))
                self._weight = 0
        self._wake.set()

    def send_threadsafe(self, *msgs: Any) -> bool:
        """From a thread other than the loop's: write ``msgs`` now if the stream is
        idle and no flood is on; False, with nothing sent, otherwise (the
        caller then sends them on the loop, in order after what is queued)."""
        with self._lock:
            now = self._loop.time()
            if self._buffer or self._writing or self._closing or now < self._flood_until:
                return False
            if now - self._threaded_at < THREAD_GAP_SECONDS:
                self._flood_until = now + FLOOD_SECONDS
                return False
            if not self._write_now(list(msgs), self.comm.write_threadsafe):
                return False
            self._threaded_at = now
            return True

    def _write_now(self, batch: list[Any], write: Callable[[Any], bool]) -> bool:
        """Under the lock: ``batch`` written by ``write`` without waiting, or not at all."""
        try:
            written = write(batch)
        except Exception:  # noqa: BLE001 - e.g. unencodable: the writer task meets it again
            return False
        if written:
            self.messages_sent += len(batch)
            self.batches_sent += 1
        return written

    def _turn_over(self) -> None:
        self._wrote_now = False

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._buffer:
                if self._closing:
                    return
                continue
            with self._lock:  # taken and marked in flight at once: nothing overtakes it
                batch, cuts = self._buffer, self._cuts
                self._buffer, self._cuts, self._weight = [], [], 0
                self._writing = True
            slices = [batch] if not cuts else [
                batch[start:end] for start, end in zip((0, *cuts), (*cuts, len(batch)), strict=True)
                if end > start]
            # each slice is let go once written (and the whole batch at once): a flood of
            # graph messages is not all kept alive until the last of it has left
            del batch
            slices.reverse()
            try:
                while slices:
                    await self.comm.write(slices[-1])
                    with self._lock:
                        self.messages_sent += len(slices.pop())
                        self.batches_sent += 1
            except CommClosedError:
                logger.debug("stream to %s closed with %d unsent", self.comm.peer_address,
                             sum(map(len, slices)))
                self._closing = True
                return
            finally:
                self._writing = False
                now = self._loop.time()
                if now - self._batched_at < FLOOD_SECONDS:
                    self._flood_until = now + FLOOD_SECONDS
                self._batched_at = now
            if self._closing and not self._buffer:
                return

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what is buffered, then close the comm."""
        self._closing = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            pass
        await self.comm.close()

    def abort(self) -> None:
        self._closing = True
        self._task.cancel()
        self.comm.abort()
