"""Memory sizes, limits, thresholds and the memory state of a worker."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from shoal.worker._memory import (
    MemoryThresholds,
    cgroup_memory_limit,
    format_bytes,
    memory_limit_for,
    memory_state,
    parse_bytes,
    process_memory,
    spill_until_below,
    system_memory_limit,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4GiB", 4 * 2**30),
        ("4Gi", 4 * 2**30),
        ("4G", 4 * 10**9),
        ("4gb", 4 * 10**9),
        ("500MB", 500 * 10**6),
        ("1.5 GB", 1_500_000_000),
        ("  2 KiB ", 2048),
        ("100", 100),
        ("100B", 100),
        ("1e3", 1000),
        ("1T", 10**12),
        (".5MiB", 2**19),
        (123, 123),
        (1.9, 1),
    ],
)
def test_parse_bytes(text: str | float, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    "bad",
    ["", "GB", "4 XB", "4GBB", "-1GB", "1 iB", "four", -5, float("nan"), float("inf"), True, None],
)
def test_parse_bytes_refuses_garbage_clearly(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_bytes(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.50 KiB"),
        (5 * 2**30, "5.00 GiB"),
        (-2048, "-2.00 KiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


def test_format_then_parse_round_trips_approximately() -> None:
    for n in (1, 999, 10**6, 3 * 2**30, 7 * 2**40):
        assert parse_bytes(format_bytes(n)) == pytest.approx(n, rel=0.01)


def _fake_cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return tmp_path


def test_cgroup_v2_limit(tmp_path: Path) -> None:
    root = _fake_cgroup(tmp_path, {"memory.max": "1073741824\n"})
    assert cgroup_memory_limit(root, tmp_path / "absent") == 2**30


def test_cgroup_v2_unlimited_and_garbage(tmp_path: Path) -> None:
    assert cgroup_memory_limit(_fake_cgroup(tmp_path, {"memory.max": "max\n"})) is None
    assert cgroup_memory_limit(_fake_cgroup(tmp_path, {"memory.max": "\xff??"})) is None
    assert cgroup_memory_limit(tmp_path / "nothing-here", tmp_path / "absent") is None


def test_cgroup_v1_limit_and_unlimited(tmp_path: Path) -> None:
    root = _fake_cgroup(tmp_path, {"memory/memory.limit_in_bytes": "536870912"})
    assert cgroup_memory_limit(root, tmp_path / "absent") == 2**29
    (root / "memory/memory.limit_in_bytes").write_text("9223372036854771712")
    assert cgroup_memory_limit(root, tmp_path / "absent") is None


def test_cgroup_of_this_process_is_found(tmp_path: Path) -> None:
    root = _fake_cgroup(
        tmp_path / "fs",
        {"memory.max": "max", "kubepods/pod1/memory.max": "3000000000"},
    )
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1\n")
    assert cgroup_memory_limit(root, proc) == 3_000_000_000


def test_system_memory_limit_is_at_most_physical_memory(tmp_path: Path) -> None:
    total = psutil.virtual_memory().total
    assert 0 < system_memory_limit() <= total
    root = _fake_cgroup(tmp_path, {"memory.max": "12345678"})
    assert system_memory_limit(root) == 12345678


def test_memory_limit_for() -> None:
    system = system_memory_limit()
    assert memory_limit_for(None, 4) == system // 4
    assert memory_limit_for("auto", 2) == system // 2
    assert memory_limit_for(0.5, 3) == int(system * 0.5)
    assert memory_limit_for("0.25", 1) == int(system * 0.25)
    assert memory_limit_for("2GiB", 8) == min(2 * 2**30, system)
    assert memory_limit_for(10**6) == 10**6
    assert memory_limit_for(10**20) == system
    assert memory_limit_for("none") == 0
    assert memory_limit_for(0) == 0
    with pytest.raises(ValueError, match="nworkers"):
        memory_limit_for(None, 0)
    with pytest.raises(ValueError, match="size"):
        memory_limit_for("lots")


def test_process_memory() -> None:
    rss = process_memory()
    assert 1_000_000 < rss == pytest.approx(psutil.Process().memory_info().rss, rel=0.5)
    assert process_memory(os.getpid()) > 0


def test_thresholds_defaults_and_validation() -> None:
    t = MemoryThresholds()
    assert (t.target, t.spill, t.pause, t.terminate) == (0.6, 0.7, 0.8, 0.95)
    MemoryThresholds(target=False, spill=0.9, pause=False, terminate=0.9)
    with pytest.raises(ValueError, match="out of order"):
        MemoryThresholds(spill=0.9, pause=0.8)
    with pytest.raises(ValueError, match="out of order"):
        MemoryThresholds(target=0.9, spill=False, pause=0.85)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        MemoryThresholds(terminate=1.5)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        MemoryThresholds(target=0)
    with pytest.raises(ValueError, match="fraction or False"):
        MemoryThresholds(pause=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fraction or False"):
        MemoryThresholds(pause="0.5")  # type: ignore[arg-type]


def test_threshold_bytes() -> None:
    t = MemoryThresholds(target=0.5, terminate=False)
    assert t.bytes_for("target", 1000) == 500
    assert t.bytes_for("terminate", 1000) is None
    assert t.bytes_for("target", 0) is None


def test_memory_state() -> None:
    t = MemoryThresholds()
    limit = 1000
    assert memory_state(100, 100, limit, t) == "ok"
    assert memory_state(100, 601, limit, t) == "spill"
    assert memory_state(700, 0, limit, t) == "spill"
    assert memory_state(800, 0, limit, t) == "paused"
    assert memory_state(950, 0, limit, t) == "terminate"
    assert memory_state(10**9, 10**9, 0, t) == "ok"


def test_memory_state_with_disabled_thresholds() -> None:
    t = MemoryThresholds(target=False, spill=False, pause=False, terminate=False)
    assert memory_state(10**6, 10**6, 1000, t) == "ok"
    only_pause = MemoryThresholds(target=False, spill=False, terminate=False)
    assert memory_state(999, 999, 1000, only_pause) == "paused"


class FakeProcess:
    """Resident memory that drops by what is evicted, from a list of values."""

    def __init__(self, unmanaged: int, values: list[int]) -> None:
        self.unmanaged = unmanaged
        self.values = values
        self.evictions = 0

    def evict(self) -> int:
        if not self.values:
            return 0
        self.evictions += 1
        return self.values.pop(0)

    def rss(self) -> int:
        return self.unmanaged + sum(self.values)


def test_spill_until_below_stops_at_target() -> None:
    proc = FakeProcess(100, [100] * 9)  # rss 1000 of a 1000-byte limit
    assert spill_until_below(proc.evict, proc.rss, 1000, MemoryThresholds()) == 500
    assert proc.rss() == 500 and proc.evictions == 5


def test_spill_until_below_does_nothing_under_the_spill_fraction() -> None:
    proc = FakeProcess(0, [100] * 6)  # 600 < 0.7 * 1000
    assert spill_until_below(proc.evict, proc.rss, 1000, MemoryThresholds()) == 0
    assert proc.evictions == 0
    disabled = MemoryThresholds(spill=False)
    full = FakeProcess(0, [100] * 10)
    assert spill_until_below(full.evict, full.rss, 1000, disabled) == 0


def test_spill_until_below_is_bounded() -> None:
    leak = FakeProcess(990, [1] * 10)  # evicting cannot help: memory is not ours
    assert spill_until_below(leak.evict, leak.rss, 1000, MemoryThresholds()) == 10
    assert leak.evictions == 10
    many = FakeProcess(990, [1] * 100)
    assert spill_until_below(many.evict, many.rss, 1000, MemoryThresholds(), 7) == 7
    no_target = FakeProcess(0, [100] * 10)
    assert (
        spill_until_below(no_target.evict, no_target.rss, 1000, MemoryThresholds(target=False))
        == 400
    )


class HoardingProcess(FakeProcess):
    """Like the allocator without tuning: what is evicted stays resident until reclaimed."""

    def __init__(self, unmanaged: int, values: list[int]) -> None:
        super().__init__(unmanaged, values)
        self.held = 0
        self.reclaims = 0

    def evict(self) -> int:
        freed = super().evict()
        self.held += freed
        return freed

    def rss(self) -> int:
        return super().rss() + self.held

    def reclaim(self) -> bool:
        self.reclaims += 1
        self.held = 0
        return True


def test_spill_until_below_reclaims_once_it_spilled_what_it_owed() -> None:
    proc = HoardingProcess(100, [100] * 9)  # rss 1000, 500 over the target
    spilled = spill_until_below(proc.evict, proc.rss, 1000, MemoryThresholds(),
                                reclaim=proc.reclaim)
    # 400 spilled (what it owed), reclaimed: at 600, still not under; one more and it is
    assert spilled == 500 and proc.evictions == 5 and proc.reclaims == 2
    assert proc.rss() == 500


def test_without_reclaiming_a_hoarding_process_spills_everything_in_vain() -> None:
    """The worker's hang: everything spilled, resident memory unchanged."""
    proc = HoardingProcess(100, [100] * 9)
    assert spill_until_below(proc.evict, proc.rss, 1000, MemoryThresholds()) == 900
    assert proc.rss() == 1000


def test_spill_until_below_goes_on_when_reclaiming_is_refused() -> None:
    proc = HoardingProcess(100, [100] * 9)
    refused = spill_until_below(proc.evict, proc.rss, 1000, MemoryThresholds(),
                                reclaim=lambda: False)
    assert refused == 900  # the reclaimer was throttled: spilling is all there is
