"""Frames passed from the shared memory they lie in, values put there, in one process:
the registry of mappings, the written-page check, the put, and hostile datagrams."""

from __future__ import annotations

import array
import gc
import mmap
import os
import random
import socket
import struct

import numpy as np
import pandas as pd
import psutil
import pytest

from shoal.comm import _inplace, _pool, _shared
from shoal.worker._store import DataStore
from tests.polling import wait_for

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs Linux memfds")

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def empty_pool():
    """Each test counts memfds, mappings and resident memory from an empty pool,
    whatever the tests before it left there."""
    gc.collect()
    _pool.release()


@pytest.fixture
def putting(monkeypatch):
    """This process behaves as a worker with a peer on its host, evidence wiped."""
    monkeypatch.setattr(_inplace, "_peer_on_this_host", True)
    monkeypatch.setattr(_inplace, "demand", _inplace._Demand())
    assert _shared.channel() is not None


def own_memfds() -> int:
    """Memory files this process holds a descriptor of."""
    return len(set(_memfd_inodes()))


def descriptors_of(inode: int) -> int:
    return _memfd_inodes().count(inode)


def _memfd_inodes() -> list[int]:
    inodes = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "memfd:" in os.readlink(f"/proc/self/fd/{fd}"):
                inodes.append(os.stat(f"/proc/self/fd/{fd}").st_ino)
        except OSError:
            pass
    return inodes


def private_mapping(size: int) -> mmap.mmap:
    fd = _pool.new_memfd()
    os.pwrite(fd, bytes(range(256)) * (size // 256), 0)
    return _pool.map_memfd(fd, size, populate=False, on_release=os.close, private=True)


# ------------------------------------------------------------ where buffers are


def test_buffer_addresses_of_read_only_and_sliced_buffers():
    data = b"x" * 100
    start, size = _inplace.buffer_address(data)
    assert size == 100 and start
    assert _inplace.buffer_address(memoryview(data)[10:20]) == (start + 10, 10)
    assert _inplace.buffer_address(object()) is None
    strided = np.arange(10)[::2]
    assert _inplace.buffer_address(strided) is None  # not contiguous: no one address


def test_a_frame_inside_a_private_mapping_is_located_with_its_offset():
    mapped = private_mapping(4 * MiB)
    view = memoryview(mapped)
    spot, offset = _inplace.locate(view[MiB + 5:2 * MiB])
    assert offset == MiB + 5 and spot.private
    assert _inplace.locate(bytes(view[:100])) is None  # a copy lies elsewhere
    assert _inplace.locate(np.zeros(MiB, dtype="u1")) is None


def test_a_shared_mapping_is_never_passed_in_place():
    buf = _pool.map_buffer(2 * MiB)  # a receive buffer: writable through its memfd
    assert _inplace.locate(memoryview(buf)) is None


def test_pages_this_process_wrote_make_a_frame_be_copied_instead():
    mapped = private_mapping(4 * MiB)
    view = memoryview(mapped)
    assert _inplace.locate(view) is not None
    view[3 * MiB] = 7  # copy-on-write: this page is ours alone now
    assert _inplace.locate(view) is None
    assert _inplace.locate(view[:3 * MiB]) is not None  # the pages before it are untouched


def test_a_released_mapping_is_forgotten():
    before = _inplace.mappings()
    mapped = private_mapping(2 * MiB)
    assert _inplace.mappings() == before + 1
    del mapped
    gc.collect()
    assert _inplace.mappings() == before


# ------------------------------------------------------------ the put


def test_a_large_array_is_put_once_and_lives_over_the_mapping(putting):
    value = np.arange(MiB, dtype="f8")
    put = _inplace.put(value, value.nbytes)
    assert put is not value and np.array_equal(put, value) and put.flags.writeable
    assert _inplace.locate(put) is not None
    assert _inplace.put(put, put.nbytes) is put  # in shared memory already: no second copy


def test_what_a_put_cannot_share_is_kept_as_it_is(putting):
    small = np.zeros(1000)
    assert _inplace.put(small, small.nbytes) is small
    data = b"b" * (4 * MiB)
    assert _inplace.put(data, len(data)) is data  # bytes own their memory
    listed = [b"b" * (2 * MiB)]
    assert _inplace.put(listed, 2 * MiB) is listed
    objects = np.array([str(i) for i in range(300_000)], dtype=object)
    assert _inplace.put(objects, 4 * MiB) is objects  # pickled in band


def test_a_pandas_frame_is_put_with_its_columns(putting):
    frame = pd.DataFrame({"x": np.arange(MiB), "y": np.ones(MiB)})
    put = _inplace.put(frame, int(frame.memory_usage().sum()))
    pd.testing.assert_frame_equal(put, frame)
    assert _inplace.locate(put["x"].to_numpy()) is not None


def test_a_put_is_not_paid_for_when_its_values_are_not_shared(putting):
    value = np.ones(MiB)
    for _ in range(_inplace.DEMAND_MEMORY // 4):  # optimistic until the first evidence
        put = _inplace.put(value, value.nbytes)
        assert put is not value
        del put  # released without being passed to anyone
        gc.collect()
    kept = [_inplace.put(value, value.nbytes) for _ in range(2 * _inplace.PUT_SAMPLE)]
    assert sum(v is not value for v in kept) == 2  # only a sample


def test_a_value_passed_in_place_is_copy_on_write_and_never_reused(putting):
    own = _shared.channel()
    value = np.full(2 * MiB, 9, dtype="u1")
    put = _inplace.put(value, value.nbytes)
    frame = memoryview(put)[MiB:]
    in_place = own.in_place
    tokens = own.send(own.name, [frame])  # to this process's own channel
    assert tokens is not None and own.in_place == in_place + 1
    received = own.claim(tokens[0], frame.nbytes)
    assert bytes(received[:4]) == b"\t" * 4 and received.nbytes == MiB
    received[:4] = b"\0" * 4  # the consumer writes into its input...
    assert put[MiB] == 9  # ...the producer's value does not change
    assert _inplace.locate(received[:4]) is None  # a written page is copied if sent on...
    assert _inplace.locate(received[mmap.PAGESIZE:]) is not None  # ...the others in place
    inode = os.fstat(_inplace.locate(put)[0].fd).st_ino
    held = _pool.pool().held()
    assert descriptors_of(inode) == 4  # a mapping each (ours and mmap's own descriptor)
    del put, frame
    gc.collect()
    assert _pool.pool().held() == held  # lent: closed, not pooled
    assert descriptors_of(inode) == 2
    assert bytes(received[4:8]) == b"\t" * 4  # the receiver's mapping keeps the memory
    del received
    gc.collect()
    assert descriptors_of(inode) == 0


def test_spilling_a_put_value_frees_its_shared_memory(putting, tmp_path):
    value = np.arange(2 * MiB, dtype="u1")
    put = _inplace.put(value, value.nbytes)
    assert _inplace.locate(put) is not None
    store = DataStore(target_bytes=3 * MiB, spill_directory=str(tmp_path))
    store.set_with_size("x", put, put.nbytes)
    mappings = _inplace.mappings()
    del put
    store.set_with_size("y", np.zeros(2 * MiB, dtype="u1"), 2 * MiB)  # pushes x out
    assert store.is_spilled("x")
    gc.collect()
    assert _inplace.mappings() == mappings - 1
    assert np.array_equal(store["x"], value)
    store.close()


# ------------------------------------------------------------ hostile datagrams


def _send(kind: bytes, payload: list[bytes], fds: list[int], name: str) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0shoal-shm-test-" + os.urandom(4).hex())
    try:
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sock.sendmsg([kind, *payload], rights, 0, "\0" + name)
    finally:
        sock.close()


def _place(token: bytes, offset: int) -> bytes:
    return token + struct.pack("<Q", offset)


def test_an_offset_or_size_beyond_the_memory_file_is_refused():
    own = _shared.channel()
    fd = _pool.new_memfd()
    try:
        _send(b"P", [_place(b"o" * 16, _pool.CAPACITY - 10)], [fd], own.name)
        _send(b"P", [_place(b"p" * 16, 0)], [fd], own.name)
    finally:
        os.close(fd)
    with pytest.raises(ValueError, match="announced size"):
        own.claim(b"o" * 16, 100, timeout=10)
    with pytest.raises(ValueError, match="announced size"):
        own.claim(b"p" * 16, _pool.CAPACITY + 1, timeout=10)


def test_unsealed_memory_passed_in_place_is_refused():
    own = _shared.channel()
    fd = os.memfd_create("unsealed")
    os.ftruncate(fd, 4 * MiB)
    try:
        _send(b"P", [_place(b"u" * 16, 0)], [fd], own.name)
    finally:
        os.close(fd)
    with pytest.raises(ValueError, match="not sealed"):
        own.claim(b"u" * 16, MiB, timeout=10)


def test_fuzzed_datagrams_are_refused_and_the_channel_goes_on():
    own = _shared.channel()
    pending = own.pending()  # left by a test before, to be claimed or to expire
    rng = random.Random(11)
    memfds = own_memfds()
    tokens = []
    for _ in range(200):
        kind = rng.choice([b"F", b"P", b"R", b"X", b""])
        count = rng.randrange(3)
        fds = [_pool.new_memfd() for _ in range(count)]
        token = rng.randbytes(16)
        payload = [token + rng.randbytes(rng.choice([0, 8, 3]))] + [
            rng.randbytes(rng.randrange(40)) for _ in range(rng.randrange(2))]
        try:
            _send(kind, payload, fds, own.name)
        finally:
            for fd in fds:
                os.close(fd)
        tokens.append(token)
    # datagrams are taken in order: once a good one arrived, every fuzzed one did
    frame = np.arange(2 * MiB, dtype="u1")
    returned = own.returned
    good = own.send(own.name, [memoryview(frame)])
    assert bytes(own.claim(good[0], frame.nbytes, timeout=10)[:3]) == b"\0\1\2"
    # its memfd comes back to the pool through the channel, in its own time
    wait_for(lambda: own.returned > returned, timeout=10, what="the good frame's memfd back")
    for token in tokens:  # each is refused, maps something valid, or was dropped
        try:
            view = own.claim(token, rng.randrange(1, 2 * MiB), timeout=0)
        except ValueError:
            continue
        view.release()
    gc.collect()
    assert own.pending() <= pending
    _pool.release()  # the good frame's memfd came back to the pool: held, not leaked
    assert own_memfds() <= memfds


def test_shared_memory_a_process_holds_counts_in_its_memory_untouched(putting):
    from shoal.worker._memory import process_memory

    value = np.ones(16 * MiB, dtype="u1")
    put = _inplace.put(value, value.nbytes)  # written with pwrite: no page of it mapped yet
    assert _inplace.locate(put) is not None
    resident = psutil.Process().memory_info().rss
    assert process_memory() - resident >= 15 * MiB
    del put
    gc.collect()
    assert process_memory() - psutil.Process().memory_info().rss < 15 * MiB
