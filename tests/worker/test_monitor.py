"""The memory monitor: spill, give memory back, pause, resume, and say why."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.worker._allocator import Reclaimer, Retained
from shoal.worker._memory import MemoryThresholds
from shoal.worker._monitor import MemoryMonitor, WorkerMemoryError
from shoal.worker._store import DataStore

from ..small_disk import small_filesystem

LIMIT = 1000


def length(value: object) -> int:
    return len(value)  # type: ignore[arg-type]


class Process:
    """Resident memory: the store's values in memory plus ``unmanaged`` plus ``freed``.

    ``freed`` is what was spilled but stays resident until reclaimed, as
    with glibc's dynamic thresholds.
    """

    def __init__(self, store: DataStore, unmanaged: int = 0, hoard: bool = False) -> None:
        self.store = store
        self.unmanaged = unmanaged
        self.hoard = hoard
        self.freed = 0
        self.reclaims = 0
        self._last_memory = 0

    def rss(self) -> int:
        memory = self.store.memory_bytes
        if self.hoard and memory < self._last_memory:
            self.freed += self._last_memory - memory
        self._last_memory = memory
        return memory + self.unmanaged + self.freed

    def reclaim(self) -> bool:
        self.rss()
        self.reclaims += 1
        self.freed = 0
        return True


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DataStore]:
    s = DataStore(600, spill_directory=str(tmp_path), sizeof=length)
    yield s
    s.close()


def monitor_for(store: DataStore, proc: Process, reclaim: bool = True) -> MemoryMonitor:
    return MemoryMonitor("w", LIMIT, MemoryThresholds(), store, proc.rss,
                         proc.reclaim if reclaim else (lambda: False),
                         retained=Retained(lambda: False))


def fill(store: DataStore, n: int, size: int = 100) -> None:
    for i in range(n):
        store[f"x{i}"] = b"x" * size


def test_a_worker_over_pause_spills_and_resumes(store: DataStore) -> None:
    fill(store, 6)
    proc = Process(store, unmanaged=300)  # 900 of 1000: paused
    check = monitor_for(store, proc).check()
    assert not check.paused and check.stuck is None and check.state == "ok"
    assert store.spilled_count == 4 and proc.rss() < 600


def test_memory_the_allocator_keeps_goes_back_before_any_result_is_spilled(
        store: DataStore) -> None:
    fill(store, 5)
    proc = Process(store, unmanaged=300)  # 800 of 1000: 300 of it kept for reuse
    given: list[int] = []

    def give_back() -> bool:
        given.append(proc.unmanaged)
        proc.unmanaged = 0
        return True

    now = [0.0]
    monitor = MemoryMonitor("w", LIMIT, MemoryThresholds(), store, proc.rss, proc.reclaim,
                            retained=Retained(give_back, seconds=10, clock=lambda: now[0]))
    check = monitor.check()
    assert given == [300] and store.spilled_count == 0 and proc.reclaims == 0
    assert check.state == "ok" and not check.paused
    proc.unmanaged = 100  # freed since, under the spill fraction: kept...
    monitor.check()
    assert given == [300]
    now[0] = 10.0  # ...for the retention time
    monitor.check()
    assert given == [300, 100] and store.spilled_count == 0


def test_freed_memory_that_stays_resident_is_given_back(store: DataStore) -> None:
    """The hang of the spilling test: everything spilled, RSS unchanged, paused for ever."""
    fill(store, 6)
    proc = Process(store, unmanaged=300, hoard=True)
    stuck = monitor_for(store, proc, reclaim=False).check()
    assert stuck.paused and store.memory_bytes == 0  # what happened without reclaiming
    fill(store, 6)
    proc.freed = 0
    check = monitor_for(store, proc).check()
    assert not check.paused and proc.reclaims >= 1
    assert store.memory_bytes > 0  # it did not need to spill everything either


def test_a_pause_with_nothing_to_spill_says_why_once(store: DataStore,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    proc = Process(store, unmanaged=900)  # a leak in task code: nothing of ours to spill
    monitor = monitor_for(store, proc)
    with caplog.at_level(logging.WARNING, "shoal.worker._monitor"):
        first = monitor.check()
        again = monitor.check()
    assert first.paused and again.paused
    assert first.stuck is not None and "nothing left to spill" in first.stuck
    assert first.unmanaged == 900
    stays = [r for r in caplog.records if "stays paused" in r.getMessage()]
    assert len(stays) == 1 and "900 B unmanaged" in stays[0].getMessage()
    assert proc.reclaims == 2  # each check tries to give memory back (the real one is throttled)
    proc.unmanaged = 100
    check = monitor.check()
    assert not check.paused and check.stuck is None and monitor.stuck is None
    assert any("resumes" in r.getMessage() for r in caplog.records)


def throttled(store: DataStore, proc: Process) -> tuple[MemoryMonitor, list[float]]:
    """A monitor whose releases take 1 s each: the next is allowed 20 s later."""
    now = [0.0]

    def release() -> None:
        now[0] += 1.0
        proc.reclaim()

    monitor = MemoryMonitor("w", LIMIT, MemoryThresholds(), store, proc.rss,
                            Reclaimer(release, clock=lambda: now[0]), clock=lambda: now[0])
    return monitor, now


def test_a_paused_worker_gives_back_what_a_task_freed_without_waiting_for_the_throttle(
        store: DataStore) -> None:
    """The flaky resume: a release while the task still held its memory throttled the
    next one for twenty times as long; the task's end must not wait that out."""
    proc = Process(store, unmanaged=900)  # a task holding memory: paused, nothing to spill
    monitor, _ = throttled(store, proc)
    assert monitor.check().paused and proc.reclaims == 1
    proc.unmanaged, proc.freed = 100, 800  # the task ended: freed, still resident
    assert monitor.check().paused and proc.reclaims == 1  # throttled
    monitor.task_ended()
    check = monitor.check()
    assert not check.paused and proc.reclaims == 2


def test_a_worker_gives_back_what_is_free_before_it_pauses(store: DataStore) -> None:
    """The other order: released while still under the pause threshold (the task was
    growing), throttled, and over it by the time the task ended."""
    proc = Process(store, unmanaged=750)  # over spill (700), under pause (800)
    monitor, _ = throttled(store, proc)
    assert not monitor.check().paused and proc.reclaims == 1
    proc.unmanaged, proc.freed = 100, 800  # the task grew, then ended: freed, resident
    monitor.task_ended()  # not paused: no reason to hurry
    check = monitor.check()
    assert not check.paused and proc.reclaims == 2  # released before pausing, throttle or not
    proc.unmanaged = 900  # really in use: it pauses, after one release
    assert monitor.check().paused and proc.reclaims == 3
    assert monitor.check().paused and proc.reclaims == 3  # paused: the throttle holds


def test_no_limit_means_no_policy(store: DataStore) -> None:
    fill(store, 6)
    proc = Process(store, unmanaged=10**9)
    check = MemoryMonitor("w", 0, MemoryThresholds(), store, proc.rss, proc.reclaim).check()
    assert check.state == "ok" and not check.paused and store.spilled_count == 0


def test_a_full_spill_disk_is_reported_and_refuses_what_fits_nowhere() -> None:
    with small_filesystem("1m") as disk:
        store = DataStore(600_000, spill_directory=disk, sizeof=length)
        try:
            proc = Process(store)
            monitor = MemoryMonitor("w", 2_000_000, MemoryThresholds(), store, proc.rss,
                                    proc.reclaim)
            for i in range(5):  # 500 kB each: 1 MiB holds one spilled value, not two
                store[f"x{i}"] = b"x" * 500_000
            assert store.spill_error is not None and "No space left" in store.spill_error
            assert store.spilled_count == 1 and store.memory_bytes == 2_000_000
            check = monitor.check()
            assert check.paused and check.stuck is not None
            assert store.spill_error in check.stuck
            refusal = monitor.refusal("x4", 500_000)
            assert isinstance(refusal, WorkerMemoryError)
            assert "'x4'" in str(refusal) and "No space left on device" in str(refusal)
            del store["x0"], store["x1"], store["x2"]
            assert monitor.refusal("x4", 500_000) is None  # under the pause threshold again
        finally:
            store.close()


def test_a_pause_stuck_on_a_full_disk_fails_waiting_tasks_after_the_timeout() -> None:
    with small_filesystem("1m") as disk:
        store = DataStore(600_000, spill_directory=disk, sizeof=length)
        try:
            proc = Process(store)
            now = [100.0]
            monitor = MemoryMonitor("w", 2_000_000, MemoryThresholds(), store, proc.rss,
                                    proc.reclaim, stuck_timeout=5.0, clock=lambda: now[0])
            assert monitor.stuck_failure() is None
            for i in range(5):  # 1 MiB holds one spilled value of 500 kB, not two
                store[f"x{i}"] = b"x" * 500_000
            assert monitor.check().stuck is not None
            now[0] += 4.9
            assert monitor.check().paused and monitor.stuck_failure() is None  # not yet
            now[0] += 0.2
            failure = monitor.stuck_failure()
            assert isinstance(failure, WorkerMemoryError)
            text = str(failure)
            assert f"cannot spill to {disk}" in text and "No space left on device" in text
            assert "paused for 5.1 s" in text and "1.91 MiB of results in memory" in text
            assert "pause threshold 1.53 MiB" in text
            del store["x0"], store["x1"], store["x2"]
            assert not monitor.check().paused and monitor.stuck_failure() is None
        finally:
            store.close()


def test_the_stuck_timeout_must_be_seconds(store: DataStore) -> None:
    with pytest.raises(ValueError, match="stuck timeout"):
        MemoryMonitor("w", LIMIT, MemoryThresholds(), store, lambda: 0, stuck_timeout=-1)
