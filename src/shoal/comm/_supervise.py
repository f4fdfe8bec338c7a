"""Background tasks that cannot fail silently, and waits that cannot lose a
cancellation.

asyncio keeps only a weak reference to a task nobody awaits, and an error
in it surfaces, if ever, as "Task exception was never retrieved" when it is
collected.  Every task a server or a client starts goes through
:func:`spawn`: it is held until it ends, and its failure is logged at once
with its name, so one failed task is visible and stops nothing else.

A task waiting for an event with a timeout waits through
:func:`wait_event`, not ``asyncio.wait_for(event.wait(), timeout)``: on
Python 3.11 ``wait_for`` returns normally when the task is cancelled just
as the event is set, and the cancellation is lost.  A loop that waits that
way between rounds then goes on after whoever stopped it, and whoever
awaits its end waits for ever (the operator's stop did, once in a few CI
runs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["spawn", "wait_event"]

logger = logging.getLogger(__name__)

_unowned: set[asyncio.Task] = set()


def spawn(coro: Coroutine[Any, Any, Any], name: str,
          tasks: set[asyncio.Task] | None = None) -> asyncio.Task:
    """Run ``coro`` as a supervised task on the running loop.

    ``tasks`` is the owner's set (cancelled when the owner closes); the task
    removes itself when it ends.  An exception it ends with is logged.
    """
    task = asyncio.get_running_loop().create_task(coro, name=name)
    owner = _unowned if tasks is None else tasks
    owner.add(task)

    def done(task: asyncio.Task) -> None:
        owner.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("task %s failed", task.get_name(), exc_info=exc)

    task.add_done_callback(done)
    return task


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Until ``event`` is set, or ``timeout`` seconds (None: no limit); whether it
    is set.  Cancelling the caller always raises ``CancelledError`` in it."""
    if event.is_set():
        return True
    waiting = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiting}, timeout=timeout)
    finally:
        waiting.cancel()
    return event.is_set()
