"""Background tasks that cannot fail silently.

asyncio keeps only a weak reference to a task nobody awaits, and an error
in it surfaces, if ever, as "Task exception was never retrieved" when it is
collected.  Every task a server or a client starts goes through
:func:`spawn`: it is held until it ends, and its failure is logged at once
with its name, so one failed task is visible and stops nothing else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["spawn"]

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
