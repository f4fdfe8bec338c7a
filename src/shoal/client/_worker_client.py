"""Clients inside tasks: tasks that submit tasks.

``get_client()`` inside a task returns a Client of the task's worker,
connected to the same scheduler (one per worker, made on first use, closed
with the worker).  ``worker_client()`` is the same inside ``secede()`` ...
``rejoin()``, for a task that waits on what it submitted: its thread slot is
free meanwhile, so the subtasks can run even on a worker whose every thread
is such a waiting task.  Outside a task, ``get_client()`` is the default
client of this process.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from ..worker._context import rejoin, secede, task_worker
from ._client import DEFAULT_TIMEOUT, Client, default_client

_clients: weakref.WeakKeyDictionary[Any, Client] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def get_client(timeout: float | None = None) -> Client:
    """The client a task uses to submit tasks (or this process's default client)."""
    worker = task_worker()
    if worker is None:
        return default_client()
    with _lock:
        client = _clients.get(worker)
        if client is None or client.status != "running":
            client = Client(worker.scheduler_address, name=f"worker-{worker.name}",
                            set_as_default=False, security=worker.security.as_client("worker"),
                            timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
            _clients[worker] = client
            worker.on_close.append(client.close)
    return client


@contextlib.contextmanager
def worker_client(timeout: float | None = None, separate_thread: bool = True) -> Iterator[Client]:
    """``with worker_client() as client:`` submit tasks and wait on them from a task."""
    if separate_thread:
        secede()
    try:
        yield get_client(timeout)
    finally:
        if separate_thread:
            rejoin()
