"""Coalescing writes per event-loop turn.

``send()`` only appends to a buffer and wakes a writer task.  The writer runs
after every callback already scheduled in this loop turn, so everything sent
in the same turn leaves as one message; while a write is in flight, further
messages pile up and go out together in the next.  No timer is involved: a
lone message leaves at once, a flood batches itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ._core import Comm, CommClosedError
from ._supervise import spawn

logger = logging.getLogger(__name__)


class BatchedSend:
    """A stream of small messages over one comm, written in batches."""

    def __init__(self, comm: Comm) -> None:
        self.comm = comm
        self._buffer: list[Any] = []
        self._wake = asyncio.Event()
        self._closing = False
        self.messages_sent = 0
        self.batches_sent = 0
        self._task = spawn(self._run(), f"batched stream to {comm.peer_address}")

    def send(self, *msgs: Any) -> None:
        if self._closing or self.comm.closed():
            raise CommClosedError(f"stream to {self.comm.peer_address} is closed")
        self._buffer.extend(msgs)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._buffer:
                if self._closing:
                    return
                continue
            batch, self._buffer = self._buffer, []
            try:
                await self.comm.write(batch)
            except CommClosedError:
                logger.debug("stream to %s closed with %d unsent", self.comm.peer_address, len(batch))
                self._closing = True
                return
            self.messages_sent += len(batch)
            self.batches_sent += 1
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
