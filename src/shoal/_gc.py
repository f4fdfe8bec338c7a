"""Garbage collection for server processes that hold millions of objects.

CPython's full (oldest-generation) collection scans every tracked object.  A
scheduler holding a million tasks tracks a few million objects, so each full
collection stalls its event loop for most of a second, and the automatic
trigger (the old generation grew by a quarter) fires again and again while a
large graph arrives: ``/health`` and the dashboard stop answering, heartbeats
wait, workers idle.

The state machines free what they forget by reference counting (a forgotten
task holds no reference cycle; the tests check it), so a cyclic collection
of old objects finds next to nothing.  :func:`freeze_old_objects` therefore
moves whatever survives a middle-generation collection into the permanent
generation (``gc.freeze``), which no automatic collection scans: collections
only ever look at young objects, and their pauses stay bounded by the young
thresholds whatever the size of the heap.  Frozen objects are still freed
the moment their last reference goes.

What this gives up: a reference cycle whose objects grew old before it became
garbage is not collected automatically.  :func:`collect_if_small` makes up for
it: the servers call it periodically with the number of tasks they hold, and
when that is small (a full collection then costs a few milliseconds) and
something was frozen since the last time, everything is unfrozen, collected
in full, and frozen again.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

#: Allocations between young collections (Python's default is 700).  A server
#: allocates a few dozen objects per task, nearly all freed by reference
#: counting; collecting every 700 spent some 10 % of its time scanning young
#: objects that were about to go anyway.
YOUNG_THRESHOLD = 20_000
#: Young collections per middle-generation collection (whose survivors are frozen).
MIDDLE_THRESHOLD = 5
#: A full collection is made up for only while a server holds at most this many
#: tasks (it is all but idle: a few milliseconds of scanning, that no busy
#: stretch of work pays for)...
SMALL_STATE_TASKS = 1_000
#: ...and at most this often (seconds).
CLEANUP_INTERVAL = 30.0


class _OldObjectsFrozen:
    """The installed policy: freezes after middle collections, full cleanups when small."""

    def __init__(self) -> None:
        self.freezes = 0  # since the last full cleanup
        self.cleanups = 0
        self.last_cleanup = time.monotonic()

    def after_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] >= 1:
            gc.freeze()  # the survivors are old now: no automatic collection scans them again
            self.freezes += 1

    def cleanup(self) -> None:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.freezes = 0
        self.cleanups += 1
        self.last_cleanup = time.monotonic()


_policy: _OldObjectsFrozen | None = None


def freeze_old_objects() -> None:
    """Install the policy in this process (a server's; idempotent).

    What exists now (modules, classes, the server's own objects) is frozen
    at once: it lives for ever.
    """
    global _policy
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, gc.get_threshold()[2])
    gc.freeze()
    if _policy is None:
        _policy = _OldObjectsFrozen()
        gc.callbacks.append(_policy.after_collection)


def thaw() -> None:
    """Remove the policy: unfreeze everything and go back to Python's defaults."""
    global _policy
    if _policy is not None:
        gc.callbacks.remove(_policy.after_collection)
        _policy = None
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)


def collect_if_small(tasks_held: int) -> bool:
    """Collect in full now if the policy is on, ``tasks_held`` is small and something
    was frozen since the last time (at most every :data:`CLEANUP_INTERVAL`)."""
    policy = _policy
    if (policy is None or not policy.freezes or tasks_held > SMALL_STATE_TASKS
            or time.monotonic() - policy.last_cleanup < CLEANUP_INTERVAL):
        return False
    policy.cleanup()
    return True


def collect_all() -> int:
    """A full collection that also scans what the policy froze (when memory is short
    and a pause is the lesser evil); what it collected."""
    policy = _policy
    if policy is None:
        return gc.collect()
    gc.unfreeze()
    collected = gc.collect()
    gc.freeze()
    policy.freezes = 0
    return collected


def cleanups() -> int:
    """How many full cleanups :func:`collect_if_small` made (for tests and metrics)."""
    return _policy.cleanups if _policy is not None else 0


_paused = [0]  # callers inside collection_paused
_paused_lock = threading.Lock()
_resume = [False]  # whether the last one out enables collection again


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No automatic collection while the block builds objects that all survive.

    A client's ``map`` of a million calls, or a large dask graph it turns
    into tasks, makes a few million objects, none of them garbage; the
    collector, triggered every 700 allocations, kept scanning them
    (measured: over a tenth of the client's CPU time for 300k calls).  It
    is the caller's process, not a server's, so nothing is frozen
    (``freeze_old_objects`` would change what the user's own program
    collects): collection is off only while the block runs, and on again
    after it if it was on before (nested and concurrent blocks included).
    """
    with _paused_lock:
        if _paused[0] == 0:
            _resume[0] = gc.isenabled()
            gc.disable()
        _paused[0] += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused[0] -= 1
            if _paused[0] == 0 and _resume[0]:
                gc.enable()
