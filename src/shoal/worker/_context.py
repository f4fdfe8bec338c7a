"""What a running task knows about where it runs, and how it waits on others.

Each executor thread records the worker and the key of the task it runs, so
``get_worker()`` inside a task is that task's worker (several workers may
share a process).  A task that submits tasks and waits for them calls
``secede()`` first: its thread leaves the worker's slots (another thread takes
the next task) and the scheduler is told (``long-running``), so it counts the
slot as free too and sends the subtasks there or anywhere.  ``rejoin()``
waits until the worker has a free slot again and takes it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..comm._inplace import put
from ._execute import Outcome, run_task
from ._sizeof import sizeof
from ._state import Rejoin, Secede

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..protocol import Serialized
    from ._server import Worker

_local = threading.local()


def run_in_context(worker: Worker, key: str, func: Callable[..., Any], args: Serialized | None,
                   inputs: Mapping[str, Any]) -> Outcome:
    """In an executor thread: run one task with its worker and key on record."""
    _local.worker, _local.key, _local.seceded = worker, key, False
    ident = threading.get_ident()
    worker.running_threads[ident] = key  # seen by the profiler
    try:
        return run_task(key, func, args, inputs, sizeof, share=put)
    finally:
        _local.worker = _local.key = None
        worker.running_threads.pop(ident, None)


def as_actor_call(worker: Worker, key: str, func: Callable[..., Any], args: tuple,
                  kwargs: dict[str, Any]) -> Any:
    """In an actor's thread: one method call, with ``get_worker()`` its worker."""
    _local.worker, _local.key, _local.seceded = worker, key, True  # holds no task slot
    ident = threading.get_ident()
    worker.running_threads[ident] = key  # seen by the profiler
    try:
        return func(*args, **kwargs)
    finally:
        _local.worker = _local.key = None
        worker.running_threads.pop(ident, None)


def task_worker() -> Worker | None:
    """The worker running the calling task, or None outside a task."""
    return getattr(_local, "worker", None)


def current_key() -> str | None:
    """The key of the calling task, or None outside a task."""
    return getattr(_local, "key", None)


def _running_task() -> tuple[Worker, str]:
    worker, key = task_worker(), current_key()
    if worker is None or key is None:
        raise ValueError("secede() and rejoin() can only be called from inside a task")
    return worker, key


def secede() -> None:
    """Leave this task's thread slot while it waits on tasks it submitted."""
    worker, key = _running_task()
    if _local.seceded:
        return
    _local.seceded = True
    worker.executor.secede_current_thread()
    event = Secede(key, worker._stimulus("secede"))
    worker.executor.loop.call_soon_threadsafe(worker._handle, event)


def rejoin() -> None:
    """Take a thread slot again after :func:`secede`; waits until one is free."""
    worker, key = _running_task()
    if not _local.seceded:
        return
    granted = threading.Event()
    worker.rejoin_waiters[key] = granted
    event = Rejoin(key, worker._stimulus("rejoin"))
    worker.executor.loop.call_soon_threadsafe(worker._handle, event)
    granted.wait()
    _local.seceded = False


def wake_rejoins(worker: Worker, keys: list[str] | None = None) -> None:
    """Let tasks waiting in :func:`rejoin` go on (all of them if ``keys`` is None)."""
    for key in list(worker.rejoin_waiters) if keys is None else keys:
        event = worker.rejoin_waiters.pop(key, None)
        if event is not None:
            event.set()
