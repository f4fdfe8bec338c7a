"""Running task functions on a pool of threads.

Threads pull tasks from a queue and hand results back to the event loop in
batches: a completion only wakes the loop when none is pending already, so a
burst of tiny tasks costs one wake-up, not one per task.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from .._exceptions import TaskFailed
from ..protocol import SerializationError, Serialized, deserialize, serialize
from ..protocol._task import substitute


class Outcome:
    """What came of running one task (built in the pool thread)."""

    __slots__ = (
        "exception",
        "exception_text",
        "key",
        "nbytes",
        "ok",
        "start",
        "stop",
        "traceback",
        "value",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.ok = False
        self.value: Any = None
        self.nbytes = 0
        self.start = self.stop = 0.0
        self.exception: Serialized | None = None
        self.traceback = ""
        self.exception_text = ""


def run_task(
    key: str,
    func: Callable[..., Any],
    args: Serialized | None,
    inputs: Mapping[str, Any],
    sizeof: Callable[[Any], int],
) -> Outcome:
    """Call ``func`` with the task's arguments; never raises."""
    outcome = Outcome(key)
    outcome.start = time.time()
    try:
        call_args, call_kwargs = deserialize(args) if args is not None else ((), {})
        if inputs:
            call_args = substitute(call_args, inputs)
            call_kwargs = substitute(call_kwargs, inputs)
        outcome.value = func(*call_args, **call_kwargs)
        outcome.ok = True
        outcome.nbytes = sizeof(outcome.value)
    except BaseException as exc:
        if (
            isinstance(exc, (KeyboardInterrupt, SystemExit))
            and threading.current_thread() is threading.main_thread()
        ):
            raise
        _describe_failure(outcome, exc)
    outcome.stop = time.time()
    return outcome


def _describe_failure(outcome: Outcome, exc: BaseException) -> None:
    frames = traceback.extract_tb(exc.__traceback__)[1:]  # drop run_task's own frame
    outcome.traceback = "".join(
        traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
    )
    outcome.exception_text = f"{type(exc).__name__}: {exc}"
    try:
        exc.__traceback__ = None
        outcome.exception = serialize(exc)
        deserialize(outcome.exception)
    except SerializationError:  # not picklable, or not unpicklable elsewhere
        outcome.exception = serialize(TaskFailed(outcome.exception_text))


class Executor:
    """``nthreads`` threads running tasks; results come back on the loop."""

    def __init__(
        self, nthreads: int, on_done: Callable[[list[Outcome]], None], name: str = "shoal"
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.on_done = on_done
        self._queue: queue.SimpleQueue[list | None] = queue.SimpleQueue()
        self._done: deque[Outcome] = deque()
        self._wake_pending = False
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._work, name=f"{name}-executor-{i}", daemon=True)
            for i in range(nthreads)
        ]
        for thread in self.threads:
            thread.start()

    def submit_many(self, runs: list[Callable[[], Outcome]]) -> None:
        """Queue tasks, split over at most one queue item per thread.

        A thread runs its share back to back, so a burst of tiny tasks costs
        one wake-up per thread rather than one per task.
        """
        chunks = min(len(runs), len(self.threads))
        for i in range(chunks):
            self._queue.put(runs[i::chunks])

    def _work(self) -> None:
        while True:
            runs = self._queue.get()
            if runs is None:
                return
            outcomes = [run() for run in runs]
            with self._lock:
                self._done.extend(outcomes)
                wake = not self._wake_pending
                self._wake_pending = True
            if wake:
                try:
                    self.loop.call_soon_threadsafe(self._drain)
                except RuntimeError:  # the loop is closed: we are shutting down
                    return

    def _drain(self) -> None:
        with self._lock:
            outcomes = list(self._done)
            self._done.clear()
            self._wake_pending = False
        if outcomes:
            self.on_done(outcomes)

    def shutdown(self) -> None:
        for _ in self.threads:
            self._queue.put(None)
