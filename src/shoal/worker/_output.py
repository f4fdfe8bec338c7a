"""``shoal.print`` and ``shoal.warn``: output of a task shown by the clients.

Inside a task they send the text to the scheduler, which passes it to every
connected client, where it is printed (or warned) as if it happened there;
this works wherever the worker runs (a pod, another machine).  Outside a
task they are the built-in ``print`` and ``warnings.warn``.
"""

from __future__ import annotations

import builtins
import io
import warnings
from typing import Any

from ._context import task_worker


def print(*args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None,
          flush: bool = False) -> None:
    """The built-in ``print``; inside a task, printed by the clients instead."""
    worker = task_worker()
    if worker is None or file is not None:  # an explicit file is the task's own business
        builtins.print(*args, sep=sep, end=end, file=file, flush=flush)
        return
    buffer = io.StringIO()
    builtins.print(*args, sep=sep, end=end, file=buffer)
    _send(worker, {"op": "task-output", "kind": "print", "text": buffer.getvalue()})


def warn(message: Any, category: type[Warning] | None = None, stacklevel: int = 1) -> None:
    """``warnings.warn``; inside a task, warned by the clients instead."""
    worker = task_worker()
    if worker is None:
        warnings.warn(message, category, stacklevel=stacklevel + 1)
        return
    kind = (category or (type(message) if isinstance(message, Warning) else UserWarning))
    _send(worker, {"op": "task-output", "kind": "warn", "text": str(message),
                   "category": kind.__name__})


def _send(worker: Any, msg: dict[str, Any]) -> None:
    worker.executor.loop.call_soon_threadsafe(worker._send, msg)
