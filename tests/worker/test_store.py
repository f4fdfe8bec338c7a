"""DataStore: results in memory, least recently used ones spilled to disk."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.protocol._serialize import serialize
from shoal.worker._store import DataStore, read_spill_file, write_spill_file

from ..small_disk import small_filesystem


def length(value: object) -> int:
    """A size function whose answers the tests can predict."""
    return len(value)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DataStore]:
    s = DataStore(250, spill_directory=str(tmp_path), sizeof=length)
    yield s
    s.close()


def spill_files(s: DataStore) -> list[str]:
    return sorted(os.listdir(s.directory)) if s.directory else []


def test_values_stay_in_memory_below_target(store: DataStore) -> None:
    store["a"] = b"a" * 100
    store["b"] = b"b" * 100
    assert store.memory_bytes == 200
    assert store.spilled_count == 0
    assert store.directory is None  # nothing spilled, nothing made on disk


def test_least_recently_used_values_are_spilled(store: DataStore) -> None:
    for key in "abc":
        store[key] = key.encode() * 100
    assert store.is_spilled("a")
    assert not store.is_spilled("b") and not store.is_spilled("c")
    assert store.memory_bytes == 200
    assert store["b"] == b"b" * 100  # b is now more recent than c
    store["d"] = b"d" * 100
    assert store.is_spilled("c") and not store.is_spilled("b")
    assert (store.spilled_count, len(spill_files(store))) == (2, 2)


def test_reading_a_spilled_value_brings_it_back(store: DataStore) -> None:
    for key in "abc":
        store[key] = key.encode() * 100
    assert store["a"] == b"a" * 100
    assert not store.is_spilled("a")
    assert store.is_spilled("b")  # the least recently used one made room
    assert store.memory_bytes == 200
    assert store.spilled_count == 1
    assert len(spill_files(store)) == 1


def test_numpy_arrays_and_nested_values_round_trip(tmp_path: Path) -> None:
    s = DataStore(1_000_000, spill_directory=str(tmp_path))
    try:
        big = np.arange(200_000, dtype="float64").reshape(400, 500)
        s["big"] = big
        s["mixed"] = {"x": [1, 2.5, "three"], "arr": np.ones(10, dtype="int8")}
        s["filler"] = np.zeros(120_000)
        assert s.is_spilled("big")
        back = s["big"]
        assert isinstance(back, np.ndarray)
        assert back.dtype == big.dtype and back.shape == big.shape
        np.testing.assert_array_equal(back, big)
        back[0, 0] = -1  # writable again
        assert s.nbytes("big") >= big.nbytes
        mixed = s["mixed"]
        assert isinstance(mixed, dict) and mixed["x"] == [1, 2.5, "three"]
    finally:
        s.close()


def test_a_value_larger_than_the_target_goes_straight_to_disk(store: DataStore) -> None:
    store["small"] = b"s" * 100
    store["huge"] = b"h" * 1000
    assert store.is_spilled("huge") and not store.is_spilled("small")
    assert store.memory_bytes == 100
    assert store["huge"] == b"h" * 1000
    assert store.is_spilled("huge")  # read for the caller, still lives on disk
    assert store.memory_bytes == 100


def test_unpicklable_values_stay_in_memory(
    store: DataStore, caplog: pytest.LogCaptureFixture
) -> None:
    class Unpicklable(bytes):
        def __reduce__(self) -> None:  # type: ignore[override]
            raise TypeError("nope")

    with caplog.at_level(logging.WARNING, logger="shoal.worker._store"):
        store["lock1"] = Unpicklable(b"l" * 200)
        store["lock2"] = Unpicklable(b"m" * 200)
        store["c"] = b"c" * 100
    assert not store.is_spilled("lock1") and not store.is_spilled("lock2")
    assert store.unspillable_count == 2
    assert store.memory_bytes == 400  # over target, but nothing is lost
    assert store.is_spilled("c")
    assert store["lock1"] == b"l" * 200
    assert len([r for r in caplog.records if "cannot be spilled" in r.message]) == 1
    assert store.evict() == 0
    del store["lock1"]
    assert store.memory_bytes == 200


def test_deleting_removes_the_file(store: DataStore) -> None:
    for key in "abc":
        store[key] = key.encode() * 100
    assert len(spill_files(store)) == 1
    del store["a"]
    assert spill_files(store) == []
    assert "a" not in store and len(store) == 2
    assert store.spilled_bytes == 0
    with pytest.raises(KeyError):
        del store["a"]
    with pytest.raises(KeyError):
        store["a"]


def test_clear_forgets_everything_without_reading_it_back(store: DataStore) -> None:
    for key in "abcdef":
        store[key] = key.encode() * 100
    directory = store.directory
    store.clear()
    assert len(store) == 0 and store.memory_bytes == 0 and store.spilled_bytes == 0
    assert directory is not None and os.listdir(directory) == []
    store["g"] = b"g"
    assert store["g"] == b"g"


def test_overwriting_a_spilled_value(store: DataStore) -> None:
    for key in "abc":
        store[key] = key.encode() * 100
    store["a"] = b"new"
    assert store["a"] == b"new"
    assert store.nbytes("a") == 3
    assert spill_files(store) == []
    assert store.memory_bytes == 203


def test_evict_spills_the_least_recently_used_value(tmp_path: Path) -> None:
    s = DataStore(None, spill_directory=str(tmp_path), sizeof=length)
    try:
        for key in "abcd":
            s[key] = key.encode() * 1000
        assert s.spilled_count == 0  # no target: no spilling by itself
        assert s["a"] == b"a" * 1000
        assert s.evict() == 1000
        assert s.is_spilled("b")
        assert s.memory_bytes == 3000
        for _ in range(3):
            s.evict()
        assert s.evict() == 0
        assert s.memory_bytes == 0 and s.spilled_count == 4
        assert s["c"] == b"c" * 1000
    finally:
        s.close()


def test_close_deletes_the_spill_directory(tmp_path: Path) -> None:
    s = DataStore(10, spill_directory=str(tmp_path / "spill"), sizeof=length)
    s["a"] = b"a" * 100
    directory = s.directory
    assert directory is not None and os.path.isdir(directory)
    assert os.path.dirname(directory) == str(tmp_path / "spill")
    s.close()
    assert not os.path.exists(directory)
    assert os.path.isdir(tmp_path / "spill")  # only our own sub-directory goes
    assert len(s) == 0
    with pytest.raises(RuntimeError, match="closed"):
        s["b"] = b"b"
    s.close()  # idempotent


def test_default_directory_is_a_temporary_one_removed_on_close() -> None:
    s = DataStore(10, sizeof=length)
    s["a"] = b"a" * 100
    directory = s.directory
    assert directory is not None and os.path.isdir(directory)
    s.close()
    assert not os.path.exists(directory)


def test_spill_file_format_round_trips_and_detects_truncation(tmp_path: Path) -> None:
    path = str(tmp_path / "x.spill")
    ser = serialize([b"q" * 100_000, np.arange(50_000)])
    written = write_spill_file(path, ser)
    assert written == os.path.getsize(path)
    assert read_spill_file(path) == ser
    with open(path, "r+b") as f:
        f.truncate(written - 10)
    with pytest.raises(OSError, match="truncated"):
        read_spill_file(path)


def test_threads_store_and_read_concurrently(tmp_path: Path) -> None:
    s = DataStore(5_000, spill_directory=str(tmp_path), sizeof=length)
    errors: list[Exception] = []

    def work(thread: int) -> None:
        try:
            for i in range(200):
                key = f"{thread}-{i}"
                s[key] = key.encode() * 50
                older = f"{thread}-{i // 2}"
                if (i // 2) % 3:  # keys with i % 3 == 0 are deleted below
                    assert s[older] == older.encode() * 50
                if i % 3 == 0:
                    del s[key]
        except (AssertionError, KeyError, OSError) as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert not errors
        assert s.memory_bytes <= 5_000
        assert s.memory_bytes + sum(s.nbytes(k) for k in s if s.is_spilled(k)) == sum(
            s.nbytes(k) for k in s
        )
        assert s.spilled_count == len(spill_files(s))
    finally:
        s.close()


operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from("abcdefgh"), st.integers(0, 120)),
        st.tuples(st.just("get"), st.sampled_from("abcdefgh"), st.just(0)),
        st.tuples(
            st.sampled_from(["del", "pop", "discard"]), st.sampled_from("abcdefgh"), st.just(0)
        ),
        st.tuples(st.just("evict"), st.just(""), st.just(0)),
    ),
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations)
def test_accounting_stays_exact(tmp_path: Path, ops: list[tuple[str, str, int]]) -> None:
    s = DataStore(200, spill_directory=str(tmp_path), sizeof=length)
    model: dict[str, bytes] = {}
    try:
        for op, key, size in ops:
            if op == "set":
                model[key] = key.encode() * size
                s[key] = model[key]
            elif op == "get" and key in model:
                assert s[key] == model[key]
            elif op == "del" and key in model:
                del model[key]
                del s[key]
            elif op == "pop":
                assert s.pop(key, None) == model.pop(key, None)
            elif op == "discard":
                assert s.discard(key) == (model.pop(key, None) is not None)
            elif op == "evict":
                s.evict()
            check_invariants(s, model)
    finally:
        s.close()


def check_invariants(s: DataStore, model: dict[str, bytes]) -> None:
    assert set(s) == set(model) and len(s) == len(model)
    in_memory = [k for k in model if not s.is_spilled(k)]
    assert s.memory_bytes == sum(len(model[k]) for k in in_memory)
    assert s.memory_bytes <= 200
    files = spill_files(s)
    assert s.spilled_count == len(files) == len(model) - len(in_memory)
    assert s.spilled_bytes == sum(
        os.path.getsize(os.path.join(s.directory or "", f)) for f in files
    )
    for key, value in model.items():
        assert s.nbytes(key) == len(value)


def test_pop_reads_a_spilled_value_without_storing_it_again(store: DataStore) -> None:
    for key in "abc":
        store[key] = key.encode() * 100
    assert store.is_spilled("a")
    assert store.pop("a") == b"a" * 100
    assert "a" not in store and spill_files(store) == []
    assert not store.is_spilled("b")  # nothing was pushed out to make room for "a"
    assert store.pop("a", None) is None
    with pytest.raises(KeyError):
        store.pop("a")
    assert store.pop("b") == b"b" * 100
    assert store.memory_bytes == 100


def test_discard_never_reads_from_disk(store: DataStore) -> None:
    for key in "abc":
        store[key] = key.encode() * 100
    os.truncate(os.path.join(store.directory or "", spill_files(store)[0]), 0)
    assert store.discard("a")  # the broken file is not read, only removed
    assert not store.discard("a")
    assert store.discard("b")
    assert spill_files(store) == [] and store.memory_bytes == 100 and len(store) == 1


def test_get_serialized_serves_spilled_frames_from_disk(store: DataStore) -> None:
    for key in "abc":
        store[key] = key.encode() * 100
    assert store.get_serialized("a") == serialize(b"a" * 100)
    assert store.is_spilled("a")  # still on disk, nothing else was moved
    assert store.get_serialized("c") == serialize(b"c" * 100)
    store["d"] = b"d" * 100  # "c" was just used, so "b" goes
    assert store.is_spilled("b") and not store.is_spilled("c")
    with pytest.raises(KeyError):
        store.get_serialized("zzz")


def test_a_full_disk_keeps_values_in_memory_and_says_why_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with small_filesystem("1m") as disk:
        s = DataStore(300_000, spill_directory=disk, sizeof=length)
        try:
            with caplog.at_level(logging.WARNING, "shoal.worker._store"):
                for i in range(6):  # 400 kB each: room on disk for two
                    s[f"x{i}"] = b"x" * 400_000
            assert s.spilled_count == 2 and len(spill_files(s)) == 2  # no partial file
            assert s.memory_bytes == 4 * 400_000 and s.spillable_bytes == 4 * 400_000
            assert s.spill_error is not None and "No space left on device" in s.spill_error
            warnings = [r for r in caplog.records if "cannot spill" in r.getMessage()]
            assert len(warnings) == 1
            assert all(s[f"x{i}"] == b"x" * 400_000 for i in range(6))  # nothing lost
            s.clear()
            s["y"] = b"y" * 400_000
            s["z"] = b"z" * 100
            assert s.is_spilled("y") and s.spill_error is None  # room again: spilling works
        finally:
            s.close()


def test_a_disk_another_writer_filled_is_not_written_to(tmp_path: Path) -> None:
    with small_filesystem("1m") as disk:
        s = DataStore(None, spill_directory=disk, sizeof=length)
        try:
            s["x"] = b"x" * 100
            s.evict()
            directory = s.directory
            assert directory is not None
            filler = os.path.join(disk, "filler")
            s["big"] = b"b" * 600_000
            with open(filler, "wb") as f:
                f.write(b"f" * 500_000)
            assert s.evict() == 0 and s.spill_error is not None
            assert sorted(os.listdir(directory)) == ["0.spill"]
            assert s["big"] == b"b" * 600_000
        finally:
            s.close()
