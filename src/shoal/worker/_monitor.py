"""The worker's memory monitor: spill, give memory back, pause, and say why.

Once per heartbeat the worker asks :meth:`MemoryMonitor.check` where it
stands.  The free memory its allocator keeps for reuse goes back to the OS
every few seconds (:class:`~._allocator.Retained`), and at once when the
worker reaches its spill fraction.  Still over it, the worker spills results
until its resident memory is back under target; when what it spilled did
not lower resident memory, it hands freed memory back (:mod:`._allocator`)
and looks again.  Over the pause fraction it starts no new tasks until it is
under again; every check looks afresh, so a worker resumes as soon as it can.

A pause the worker cannot get out of by itself is never silent: when it is
paused and nothing is left to spill (the memory is not results: a leak in
task code, buffers of a library) or the spill directory has no room, it
logs why, with the numbers, once per such stretch, and :attr:`stuck` says
it in the heartbeat the scheduler shows.  A result that arrives while the
worker is over the pause fraction and cannot be spilled fits nowhere: the
worker fails that task with :class:`WorkerMemoryError` (see
:meth:`MemoryMonitor.refusal`) instead of growing until its nanny kills it.
Nor do the tasks waiting to start wait for ever: once a pause with a full
spill disk has lasted ``stuck_timeout`` seconds, :meth:`MemoryMonitor.stuck_failure`
gives the error the worker fails them with, so their clients hear why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .._exceptions import WorkerMemoryError
from ._allocator import Reclaimer, Retained
from ._memory import MemoryState, MemoryThresholds, format_bytes, memory_state, spill_until_below
from ._store import DataStore

__all__ = ["DEFAULT_STUCK_TIMEOUT", "MemoryCheck", "MemoryMonitor", "WorkerMemoryError"]

#: Seconds a worker stays paused with a full spill disk before it fails the
#: tasks it cannot start.
DEFAULT_STUCK_TIMEOUT = 30.0

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MemoryCheck:
    """What one check found."""

    rss: int
    state: MemoryState
    paused: bool
    #: resident bytes that are not results held in memory
    unmanaged: int
    #: why the worker cannot get under the pause fraction by itself, if it cannot
    stuck: str | None


class MemoryMonitor:
    """Memory policy of one worker whose results live in ``store``.

    ``rss`` measures the process's resident memory, ``reclaim`` gives freed
    memory back (throttled), ``retained`` what the allocator keeps; they are
    parameters for the tests, as is ``clock``.
    """

    def __init__(self, name: str, limit: int, thresholds: MemoryThresholds, store: DataStore,
                 rss: Callable[[], int], reclaim: Callable[[], bool] | None = None,
                 stuck_timeout: float = DEFAULT_STUCK_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic,
                 retained: Retained | None = None) -> None:
        if not stuck_timeout >= 0:
            raise ValueError(f"the memory stuck timeout must be seconds >= 0, got {stuck_timeout!r}")
        self.name = name
        self.limit = limit
        self.thresholds = thresholds
        self.store = store
        self._rss = rss
        self._reclaim = reclaim if reclaim is not None else Reclaimer()
        self._retained = retained if retained is not None else Retained()
        self.paused = False
        self.stuck: str | None = None
        self.stuck_timeout = stuck_timeout
        self._clock = clock
        #: when the current stretch of being stuck with a full spill disk began
        self._disk_stuck_since: float | None = None

    def check(self) -> MemoryCheck:
        """Spill and reclaim as needed; decide whether the worker is paused."""
        limit, thresholds = self.limit, self.thresholds
        rss = self._rss()
        if limit <= 0:
            return MemoryCheck(rss, "ok", False, 0, None)
        spill_at = thresholds.bytes_for("spill", limit)
        over = spill_at is not None and rss >= spill_at
        # memory kept for reuse goes back every few seconds, and before any result
        if self._retained.give_back() if over else self._retained.expire():
            rss = self._rss()
        released = False
        if spill_at is not None and rss >= spill_at:
            spill_until_below(self.store.evict, self._rss, limit, thresholds,
                              reclaim=self._reclaim)
            rss = self._rss()
            if rss >= spill_at and self._reclaim():  # nothing (more) to spill: give back
                released = True
                rss = self._rss()
        pause_at = thresholds.bytes_for("pause", limit)
        paused = pause_at is not None and rss > pause_at
        if paused and not self.paused and not released:
            # Pausing stops all work: first give back what is free, throttle or not
            # (the last release may have been while a task still used the memory).
            self._wake_reclaim()
            if self._reclaim():
                rss = self._rss()
                paused = pause_at is not None and rss > pause_at
        managed = self.store.memory_bytes
        unmanaged = max(rss - managed, 0)
        if paused != self.paused:
            self.paused = paused
            logger.warning("worker %s %s (%s)", self.name, "pauses" if paused else "resumes",
                           self._numbers(rss, unmanaged))
        stuck = self._why_stuck(unmanaged) if paused else None
        if stuck is not None and self.stuck is None:
            logger.warning("worker %s stays paused until memory is freed: %s (%s)", self.name,
                           stuck, self._numbers(rss, unmanaged))
        self.stuck = stuck
        disk_full = stuck is not None and self.store.spill_error is not None
        if not disk_full:
            self._disk_stuck_since = None
        elif self._disk_stuck_since is None:
            self._disk_stuck_since = self._clock()
        state = memory_state(rss, managed, limit, thresholds)
        return MemoryCheck(rss, state, paused, unmanaged, stuck)

    def task_ended(self) -> None:
        """A task's code ended, perhaps freeing what it held.  A paused worker looks at
        once, not when the throttle next allows: a release during the task (when the
        memory was still in use) must not keep it paused for twenty times as long as
        that release took.  Paused, it starts no tasks, so this stays rare."""
        if self.paused:
            self._wake_reclaim()

    def _wake_reclaim(self) -> None:
        wake = getattr(self._reclaim, "wake", None)  # a plain function (tests) has none
        if wake is not None:
            wake()

    def _numbers(self, rss: int, unmanaged: int) -> str:
        store = self.store
        return (f"process memory {format_bytes(rss)} of {format_bytes(self.limit)}: "
                f"{format_bytes(store.memory_bytes)} of results in memory, "
                f"{format_bytes(unmanaged)} unmanaged, {format_bytes(store.spilled_bytes)} "
                "spilled to disk")

    def _why_stuck(self, unmanaged: int) -> str | None:
        store = self.store
        if store.spill_error is not None and store.spillable_bytes > 0:
            return f"{store.spill_error}, so results stay in memory"
        if store.spillable_bytes == 0:
            return (f"nothing left to spill; {format_bytes(unmanaged)} of its memory is not "
                    "results (unmanaged: e.g. kept by task code or libraries) and cannot be "
                    "spilled")
        return None

    def refusal(self, key: str, nbytes: int) -> WorkerMemoryError | None:
        """Why the result ``key`` just stored cannot be kept, or None if it can.

        It cannot when the store failed to spill (no room on disk) and the
        process is over the pause fraction: keeping it would only bring the
        worker closer to being killed for memory.
        """
        store = self.store
        if store.spill_error is None:  # the common answer, asked of every result
            return None
        pause_at = self.thresholds.bytes_for("pause", self.limit)
        if pause_at is None or store.is_spilled(key):
            return None
        rss = self._rss()
        if rss <= pause_at:
            return None
        return WorkerMemoryError(
            f"the result of {key!r} ({format_bytes(nbytes)}) does not fit on worker "
            f"{self.name}: {store.spill_error}, and its process memory "
            f"({format_bytes(rss)}) is over the pause threshold ({format_bytes(pause_at)} of "
            f"its {format_bytes(self.limit)} limit)")

    def stuck_failure(self) -> WorkerMemoryError | None:
        """Why the tasks waiting to start here fail, or None while they may still wait.

        They fail once the worker has been paused with a full spill disk for
        ``stuck_timeout`` seconds (as of the last :meth:`check`).
        """
        since = self._disk_stuck_since
        if since is None:
            return None
        stuck_for = self._clock() - since
        if stuck_for < self.stuck_timeout:
            return None
        rss = self._rss()
        return WorkerMemoryError(
            f"worker {self.name} cannot start this task: it has been paused for "
            f"{stuck_for:.1f} s ({self._numbers(rss, max(rss - self.store.memory_bytes, 0))}; "
            f"pause threshold {format_bytes(self.thresholds.bytes_for('pause', self.limit) or 0)})"
            f" and cannot spill: {self.store.spill_error}")
