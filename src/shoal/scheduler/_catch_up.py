"""Catching up with what workers told clients directly.

A worker pushes a small result to the client that waits for it *before* it
reports the task to the scheduler (see ``worker/_reports.py``), so a client
can hold a result the scheduler has not heard of yet: a ``who_has`` or a
task stream asked for right after ``result()`` would not show it.  Before
such a question, the client names the workers that pushed to it since it
last asked (``catch_up``); the scheduler sends each a ``catch-up`` on its
stream and answers once every one has come back (``caught-up``) on the same
ordered stream as its reports, so everything the worker sent before it has
been handled.  A worker that leaves meanwhile ends its wait (its reports are
moot), and no wait outlasts :data:`CATCH_UP_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING

from ..comm import CommClosedError

if TYPE_CHECKING:
    from ._server import Scheduler

logger = logging.getLogger(__name__)

#: The longest a question waits for the workers it names (then it is answered anyway).
CATCH_UP_TIMEOUT = 10.0


class CatchUp:
    """The ``catch_up`` request and the tokens it waits for, on the scheduler's loop."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._waiting: dict[int, tuple[str, asyncio.Future[None]]] = {}
        self._tokens = itertools.count()

    async def catch_up(self, workers: list[str]) -> dict[str, int]:
        """Answer once the scheduler has handled what ``workers`` sent before
        now: how many it waited for, and how many of those it gave up on."""
        loop = asyncio.get_running_loop()
        tokens = []
        for address in dict.fromkeys(workers):
            stream = self.scheduler.worker_streams.get(address)
            if stream is None:
                continue  # gone, or never here: nothing of it is still to come
            token = next(self._tokens)
            try:
                stream.send({"op": "catch-up", "token": token})
            except CommClosedError:
                continue
            self._waiting[token] = (address, loop.create_future())
            tokens.append(token)
        if not tokens:
            return {"waited": 0, "late": 0}
        try:
            _, late = await asyncio.wait([self._waiting[t][1] for t in tokens],
                                         timeout=CATCH_UP_TIMEOUT)
        finally:
            for token in tokens:
                self._waiting.pop(token, None)
        if late:
            logger.warning("%d of %d workers did not catch up within %.0fs; answering anyway",
                           len(late), len(tokens), CATCH_UP_TIMEOUT)
        return {"waited": len(tokens), "late": len(late)}

    def caught_up(self, address: str, token: int) -> None:
        """``address`` came back with ``token``: what it sent before is handled."""
        entry = self._waiting.get(token)
        if entry is not None and entry[0] == address and not entry[1].done():
            entry[1].set_result(None)

    def worker_gone(self, address: str) -> None:
        for worker, waiter in self._waiting.values():
            if worker == address and not waiter.done():
                waiter.set_result(None)
