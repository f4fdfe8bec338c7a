"""Running task functions on a pool of threads.

Threads pull tasks from a queue and hand results back to the event loop in
batches: a completion only wakes the loop when none is pending already, so a
burst of tiny tasks costs one wake-up, not one per task (a batch of slow
ones hands its results over as they come, see DELIVER_AFTER_SECONDS).  A task that waits
on others (``secede``) gives its thread up: a new thread takes its place and
the rest of its batch, and the old one ends with that task.

A worker also imports, once it starts and off its event loop, the modules
nearly every data task unpickles first (:data:`WARM_IMPORTS`, those of them
installed), so that the first graph it runs does not wait for them.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import itertools
import logging
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .._exceptions import TaskFailed
from ..protocol import SerializationError, Serialized, deserialize, serialize
from ..protocol._task import substitute

logger = logging.getLogger(__name__)

#: A batch's outcomes go to the loop together, unless it has been running
#: longer than this: then those done so far go at once, so that the scheduler
#: hears of finished work (and hands out what depends on it) without waiting
#: for the rest of a batch of heavy tasks.
DELIVER_AFTER_SECONDS = 0.005

#: What a worker imports in the background when it starts, if installed: numpy,
#: which most data tasks use, and the module every dask graph node unpickles
#: into.  Together some 0.2-0.4 s of CPU that the first dask graph otherwise
#: waits for on every worker (a dask.distributed worker has both loaded when it
#: starts, since distributed imports them).  pandas and the like stay lazy:
#: many workers never need them, and they cost far more memory.
WARM_IMPORTS = ("numpy", "dask._task_spec")


def warm_imports(names: Iterable[str]) -> list[str]:
    """Import the modules of ``names`` that are installed; those imported.

    Never raises: a module that is missing or fails to import is left to the
    task that needs it, which then reports the error itself.
    """
    done = []
    for name in names:
        try:
            if importlib.util.find_spec(name.partition(".")[0]) is None:
                continue
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a broken package must not stop a worker
            logger.debug("warm import of %s failed: %r", name, exc)
            continue
        done.append(name)
    return done


def start_warm_imports(names: Iterable[str]) -> threading.Thread | None:
    """:func:`warm_imports` in a daemon thread (None when there is nothing to import).

    Daemon, so a worker that stops at once does not wait for it; an import
    racing a task's import of the same module is serialised by the module's
    import lock."""
    names = list(names)
    if not names:
        return None
    thread = threading.Thread(target=warm_imports, args=(names,), daemon=True,
                              name="shoal-warm-imports")
    thread.start()
    return thread


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
    share: Callable[[Any, int], Any] | None = None,
) -> Outcome:
    """Call ``func`` with the task's arguments; never raises.

    ``share`` may replace the result by an equal value over shared memory
    (``comm/_inplace.put``), before the task is reported done."""
    outcome = Outcome(key)
    outcome.start = time.time()
    try:
        call_args, call_kwargs = deserialize(args) if args is not None else ((), {})
        if inputs:
            call_args = substitute(call_args, inputs)
            call_kwargs = substitute(call_kwargs, inputs)
        # the duration is the call's: unpickling the arguments may import a
        # library (a dask graph node: pandas, dask.dataframe) once per process,
        # and that second must not be taken for the task's cost, which the
        # scheduler places and steals work by
        outcome.start = time.time()
        outcome.value = func(*call_args, **call_kwargs)
        outcome.ok = True
        outcome.nbytes = sizeof(outcome.value)
        if share is not None:
            outcome.value = share(outcome.value, outcome.nbytes)
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
        self.name = name
        self._local = threading.local()
        self._numbers = itertools.count()
        self.threads: list[threading.Thread] = []
        for _ in range(nthreads):
            self._add_thread()

    def _add_thread(self) -> None:
        thread = threading.Thread(target=self._work, daemon=True,
                                  name=f"{self.name}-executor-{next(self._numbers)}")
        with self._lock:
            self.threads.append(thread)
        thread.start()

    def secede_current_thread(self) -> None:
        """From a task: hand the rest of this thread's batch to a new thread."""
        pending: deque | None = getattr(self._local, "pending", None)
        if pending is None or getattr(self._local, "seceded", False):
            return
        self._local.seceded = True
        with self._lock:
            self.threads.remove(threading.current_thread())
        self._deliver(self._local.outcomes)  # what this batch finished is not held back
        if pending:
            self._queue.put(list(pending))
            pending.clear()
        self._add_thread()

    def submit_many(self, runs: list[Callable[[], Outcome]]) -> None:
        """Queue tasks, split over at most one queue item per thread.

        A thread runs its share back to back, so a burst of tiny tasks costs
        one wake-up per thread rather than one per task.
        """
        chunks = min(len(runs), len(self.threads))
        for i in range(chunks):
            self._queue.put(runs[i::chunks])

    def _work(self) -> None:
        pending: deque[Callable[[], Outcome]] = deque()
        outcomes: list[Outcome] = []
        self._local.pending, self._local.outcomes = pending, outcomes
        while not getattr(self._local, "seceded", False):
            runs = self._queue.get()
            if runs is None:
                return
            pending.extend(runs)
            # while waiting for the next tasks, hold on to none of these (their
            # inputs and results): spilled or released, they must be freed
            del runs
            handed = time.time()
            while pending:
                outcomes.append(pending.popleft()())
                if pending and outcomes[-1].stop - handed > DELIVER_AFTER_SECONDS:
                    handed = outcomes[-1].stop
                    if not self._deliver(outcomes):
                        return
            if not self._deliver(outcomes):
                return

    def _deliver(self, outcomes: list[Outcome]) -> bool:
        """Hand outcomes to the loop (and empty the list); False once the loop is closed."""
        if not outcomes:
            return True
        with self._lock:
            self._done.extend(outcomes)
            wake = not self._wake_pending
            self._wake_pending = True
        outcomes.clear()
        if wake:
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: we are shutting down
                return False
        return True

    def _drain(self) -> None:
        with self._lock:
            outcomes = list(self._done)
            self._done.clear()
            self._wake_pending = False
        if outcomes:
            self.on_done(outcomes)

    def shutdown(self) -> None:
        with self._lock:
            count = len(self.threads)
        for _ in range(count):
            self._queue.put(None)
