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

A flood is cut into writes of at most :data:`MAX_BATCH_WEIGHT` messages (or
of messages weighing that much: a graph of 2,000 tasks weighs 2,000), so the
peer decodes and handles it in slices and stays responsive meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ._core import Comm, CommClosedError
from ._supervise import spawn

logger = logging.getLogger(__name__)

#: The most messages (or message weight, see ``send``) one write carries.
MAX_BATCH_WEIGHT = 2_000
#: Batches this close together make a flood (see above).
FLOOD_SECONDS = 0.005


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
        self.messages_sent = 0
        self.batches_sent = 0
        self._task = spawn(self._run(), f"batched stream to {comm.peer_address}")

    def send(self, *msgs: Any, weight: int | None = None) -> None:
        """Queue ``msgs``; ``weight`` (default: one per message) says how much
        handling they cost the peer, e.g. the number of tasks in a graph."""
        if self._closing or self.comm.closed():
            raise CommClosedError(f"stream to {self.comm.peer_address} is closed")
        if (not (self._buffer or self._writing or self._wrote_now)
                and self._loop.time() >= self._flood_until and self._write_now(list(msgs))):
            return
        self._buffer.extend(msgs)
        self._weight += len(msgs) if weight is None else weight
        if self._weight >= MAX_BATCH_WEIGHT:
            self._cuts.append(len(self._buffer))
            self._weight = 0
        self._wake.set()

    def _write_now(self, batch: list[Any]) -> bool:
        try:
            written = self.comm.write_nowait(batch)
        except Exception:  # noqa: BLE001 - e.g. unencodable: the writer task meets it again
            return False
        if written:
            self.messages_sent += len(batch)
            self.batches_sent += 1
            self._wrote_now = True
            self._loop.call_soon(self._turn_over)
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
            batch, cuts = self._buffer, self._cuts
            self._buffer, self._cuts, self._weight = [], [], 0
            slices = [batch] if not cuts else [
                batch[start:end] for start, end in zip((0, *cuts), (*cuts, len(batch)), strict=True)
                if end > start]
            # each slice is let go once written (and the whole batch at once): a flood of
            # graph messages is not all kept alive until the last of it has left
            del batch
            slices.reverse()
            self._writing = True
            try:
                while slices:
                    await self.comm.write(slices[-1])
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
