"""Large copies and prefaults shared out over helper threads, and their fallbacks."""

from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import threading

import numpy as np
import pytest

from shoal.protocol import _copy
from shoal.protocol._memory import buffer_address, bytes_buffer

MiB = 1024 * 1024


def _address(array: np.ndarray) -> int:
    return int(array.ctypes.data)


@pytest.mark.parametrize("size", [1, 4 * MiB - 1, 4 * MiB, 9 * MiB + 4097, 33 * MiB + 3])
def test_a_copy_of_any_size_is_exact_and_writes_nothing_past_its_end(size):
    source = np.random.default_rng(size).integers(0, 256, size, dtype="u1")
    dest = np.full(size + 64, 0xEE, dtype="u1")
    _copy.copy(_address(dest) + 32, _address(source), size)
    assert np.array_equal(dest[32:32 + size], source)
    assert (dest[:32] == 0xEE).all() and (dest[32 + size:] == 0xEE).all()


def test_large_copies_are_split_into_page_aligned_parts_that_cover_the_range(monkeypatch):
    monkeypatch.setattr(_copy, "_usable_cpus", lambda: 8)
    parts = _copy._parts(33 * MiB + 3)
    assert len(parts) == _copy._MOST_PARTS
    assert parts[0][0] == 0 and all(at % 4096 == 0 for at, _ in parts)
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(parts))
    assert parts[-1][0] + parts[-1][1] == 33 * MiB + 3
    assert _copy._parts(_copy.PARALLEL_MIN_BYTES - 1) == [(0, _copy.PARALLEL_MIN_BYTES - 1)]
    monkeypatch.setattr(_copy, "_usable_cpus", lambda: 1)
    assert _copy._parts(64 * MiB) == [(0, 64 * MiB)]


def test_with_one_usable_core_a_copy_runs_in_the_calling_thread_alone(monkeypatch):
    monkeypatch.setattr(_copy, "_usable_cpus", lambda: 1)
    monkeypatch.setattr(_copy, "_pool", lambda: pytest.fail("a helper was asked for"))
    source = np.arange(16 * MiB, dtype="u1")
    dest = np.empty_like(source)
    _copy.copy(_address(dest), _address(source), source.nbytes)
    assert np.array_equal(dest, source)


def test_helpers_share_a_copy_when_there_are_cores_to_spare(monkeypatch):
    monkeypatch.setattr(_copy, "_usable_cpus", lambda: 2)
    monkeypatch.setattr(_copy, "_helpers", None)
    seen: set[str] = set()
    memmove = ctypes.memmove

    def recording(dest, source, size):
        seen.add(threading.current_thread().name)
        return memmove(dest, source, size)

    monkeypatch.setattr(_copy.ctypes, "memmove", recording)
    source = np.arange(16 * MiB, dtype="u1")
    dest = np.empty_like(source)
    _copy.copy(_address(dest), _address(source), source.nbytes)
    assert np.array_equal(dest, source)
    assert threading.current_thread().name in seen
    assert any(name.startswith("shoal-copy") for name in seen), seen


@pytest.mark.skipif(_copy._madvise is None, reason="prefaulting is Linux's")
def test_a_prefault_keeps_what_is_already_written_and_holds_its_owner(monkeypatch):
    monkeypatch.setattr(_copy, "_usable_cpus", lambda: 2)
    monkeypatch.setattr(_copy, "_helpers", None)  # a pool of one helper, run in order
    value, view = bytes_buffer(12 * MiB)
    view[:] = b"\x07" * len(view)  # written while the helper may still be prefaulting
    start = buffer_address(value)[0]
    held: list[object] = []
    populate = _copy._populate

    def recording(owner, first, size):
        held.append(owner)
        populate(owner, first, size)

    monkeypatch.setattr(_copy, "_populate", recording)
    _copy.prefault(value, start, len(value))  # on memory already filled: changes nothing
    _copy._pool().submit(lambda: None).result()  # the pool's one helper is done with it
    assert held and all(owner is value for owner in held)
    assert value == b"\x07" * (12 * MiB)


def _copy_in_child(queue):
    source = np.arange(8 * MiB, dtype="u1")
    dest = np.empty_like(source)
    _copy.copy(_address(dest), _address(source), source.nbytes)
    queue.put(bool(np.array_equal(dest, source)))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_a_forked_child_starts_its_own_helpers(monkeypatch):
    monkeypatch.setattr(_copy, "_usable_cpus", lambda: 2)
    source = np.arange(8 * MiB, dtype="u1")
    dest = np.empty_like(source)  # held: the copy writes into it
    _copy.copy(_address(dest), _address(source), source.nbytes)
    assert np.array_equal(dest, source)
    assert _copy._helpers is not None  # the parent's pool, whose threads a child lacks
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_copy_in_child, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=60) is True
    finally:
        child.join(60)
        if child.is_alive():
            child.kill()
            child.join(10)
    assert child.exitcode == 0
