"""Large values between worker processes and to the client: every buffer type,
through shared memory on one host or over the socket, and nothing left behind
when a worker is killed."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import zlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from shoal import Client, LocalCluster
from shoal._exceptions import RemoteError
from shoal.comm import _pool, _shared

from ..polling import wait_for

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs Linux memfds")

MiB = 1024 * 1024


def make(kind: str, n: int = 2 * MiB) -> object:
    data = np.arange(n, dtype="u1")
    if kind == "bytes":
        return data.tobytes()
    if kind == "bytearray":
        return bytearray(data.tobytes())
    if kind == "memoryview":
        return memoryview(data.view("u4").reshape(-1, 1024))
    if kind == "numpy":
        return data.view("f8")
    if kind == "pandas":
        return pd.DataFrame({"x": data.view("i8"), "y": data.view("f8")})
    return pa.table({"x": data.view("i8")})


def describe(value: object) -> tuple:
    """What the consuming worker sees: type, a content digest, whether writable."""
    if isinstance(value, pd.DataFrame):
        return "DataFrame", int(value["x"].sum()), zlib.crc32(value["y"].to_numpy().view("u1"))
    if isinstance(value, pa.Table):
        return "Table", int(pa.compute.sum(value["x"]).as_py())
    view = memoryview(value)  # type: ignore[arg-type]
    return type(value).__name__, view.format, view.shape, zlib.crc32(view.cast("B")), view.readonly


def identity(value: object) -> object:
    return value


def shared_counts() -> dict[str, int] | None:
    own = _shared.channel()
    return None if own is None else {"sent": own.sent, "received": own.received}


def memfds_of(pid: int) -> int:
    """Descriptors and mappings of our memfds held by one process."""
    held = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                held += "memfd:shoal" in os.readlink(f"/proc/{pid}/fd/{fd}")
        with open(f"/proc/{pid}/maps") as maps:
            held += sum("memfd:shoal" in line for line in maps)
    return held


@contextlib.contextmanager
def cluster_with(shared: bool) -> Iterator[LocalCluster]:
    previous = os.environ.get(_shared.ENV)
    os.environ[_shared.ENV] = "1" if shared else "0"
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None, memory_limit="2GiB") as cluster:
            yield cluster
    finally:
        if previous is None:
            os.environ.pop(_shared.ENV)
        else:
            os.environ[_shared.ENV] = previous


@pytest.fixture(scope="module", params=["shared", "socket"])
def mode_cluster(request) -> Iterator[tuple[str, LocalCluster]]:
    with cluster_with(request.param == "shared") as cluster:
        yield request.param, cluster


KINDS = ["bytes", "bytearray", "memoryview", "numpy", "pandas", "pyarrow"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_buffer_type_moves_between_workers_and_to_the_client(mode_cluster, kind):
    _, cluster = mode_cluster
    with Client(cluster) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        made = client.submit(make, kind, workers=[a], pure=False)
        seen_on_b = client.submit(describe, made, workers=[b]).result(timeout=60)
        assert seen_on_b == describe(make(kind))
        got = made.result(timeout=60)
        assert describe(got) == describe(make(kind))
        assert type(got) is type(make(kind))


def test_between_workers_of_one_host_large_values_go_through_shared_memory(mode_cluster):
    mode, cluster = mode_cluster
    with Client(cluster) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        before = client.run(shared_counts)
        made = client.submit(make, "numpy", 4 * MiB, workers=[a], pure=False)
        assert client.submit(describe, made, workers=[b]).result(timeout=60)[0] == "ndarray"
        after = client.run(shared_counts)
        if mode == "socket":
            assert before == after == {a: None, b: None}
        else:
            assert after[a]["sent"] - before[a]["sent"] == 1
            assert after[b]["received"] - before[b]["received"] == 1


def test_a_same_host_client_gathers_through_shared_memory(mode_cluster):
    mode, cluster = mode_cluster
    with Client(cluster) as client:
        own = _shared.channel()  # this process offers shared memory in either mode
        before = own.received if own is not None else 0
        value = client.submit(make, "numpy", 4 * MiB, pure=False).result(timeout=60)
        assert value.flags.writeable and value.nbytes == 4 * MiB
        received = (own.received if own is not None else 0) - before
        assert received == (1 if mode == "shared" else 0)


def test_arrays_fetched_from_a_peer_are_writable_and_not_copied(mode_cluster):
    _, cluster = mode_cluster

    def zero_copy(value: np.ndarray) -> tuple[bool, str]:
        base = value.base
        while base is not None and not isinstance(base, memoryview):
            base = getattr(base, "base", None)
        owner = base.obj if isinstance(base, memoryview) else None
        if isinstance(owner, ctypes.Array):  # a pooled buffer's lease of its mapping
            owner = next(iter(owner._objects.values())).obj  # ctypes keeps the mapping's view
        return bool(value.flags.writeable), type(owner).__name__

    with Client(cluster) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        made = client.submit(make, "numpy", 4 * MiB, workers=[a], pure=False)
        # the array's memory is the mapping the bytes arrived in, not a copy
        assert client.submit(zero_copy, made, workers=[b]).result(timeout=60) == (True, "mmap")


def _cluster_memfds(client: Client) -> int:
    return sum(memfds_of(pid) for pid in client.run(os.getpid).values())


def _restarted(client: Client, old: set[int]) -> bool:
    """Two workers again, one of them new (the nanny replaced the one killed)."""
    try:
        pids = set(client.run(os.getpid).values())
    except RemoteError:  # the dead worker is still listed
        return False
    return len(pids) == 2 and pids != old


@pytest.mark.parametrize("victim", ["receiver", "sender"])
def test_a_killed_worker_leaves_no_shared_memory_behind(victim):
    shm_before = set(os.listdir("/dev/shm"))
    with cluster_with(shared=True) as cluster, Client(cluster) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        pids = client.run(os.getpid)
        made = client.submit(make, "numpy", 8 * MiB, workers=[a], pure=False)
        kept = client.submit(identity, made, workers=[b], pure=False)  # lives in shared memory
        assert client.submit(describe, kept, workers=[b]).result(timeout=60)[0] == "ndarray"
        assert memfds_of(pids[b]) >= 1
        os.kill(pids[b if victim == "receiver" else a], signal.SIGKILL)
        if victim == "sender":
            # the receiver's value outlives the process that sent it
            assert client.submit(describe, kept, workers=[b]).result(timeout=60)[0] == "ndarray"
        del made, kept
        wait_for(lambda: _restarted(client, set(pids.values())), 60,
                 "the nanny restarting the killed worker")
        client.run(_pool.release)
        wait_for(lambda: client.run(_pool.release) is not None and _cluster_memfds(client) == 0,
                 30, "every memfd closed and unmapped")
    assert set(os.listdir("/dev/shm")) <= shm_before
