"""Coalescing writes per event-loop turn.

``send()`` only appends to a buffer and wakes a writer task.  The writer runs
after every callback already scheduled in this loop turn, so everything sent
in the same turn leaves as one message; while a write is in flight, further
messages pile up and go out together in the next.  No timer is involved: a
lone message leaves at once, a flood batches itself.

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


class BatchedSend:
    """A stream of small messages over one comm, written in batches."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm
        self._buffer: list[Any] = []
        self._cuts: list[int] = []  # where the buffer is cut into writes
        self._weight = 0  # of the buffer since the last cut
        self._wake = asyncio.Event()
        self._closing = False
        self.messages_sent = 0
        self.batches_sent = 0
        self._task = spawn(self._run(), f"batched stream to {comm.peer_address}")

    def send(self, *msgs: Any, weight: int | None = None) -> None:
        """Queue ``msgs``; ``weight`` (default: one per message) says how much
        handling they cost the peer, e.g. the number of tasks in a graph."""
        if self._closing or self.comm.closed():
            raise CommClosedError(f"stream to {self.comm.peer_address} is closed")
        self._buffer.extend(msgs)
        self._weight += len(msgs) if weight is None else weight
        if self._weight >= MAX_BATCH_WEIGHT:
            self._cuts.append(len(self._buffer))
            self._weight = 0
        self._wake.set()

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
