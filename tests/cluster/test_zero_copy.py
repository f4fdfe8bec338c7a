"""Results put into shared memory once and passed between workers of one host
without a copy: what the counters say, copy-on-write between producer and
consumer, lifetimes across release and SIGKILL, and the fallbacks."""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Iterator

import numpy as np
import pytest

from shoal import Client, LocalCluster
from shoal.comm import _inplace, _pool, _shared

from ..polling import wait_for
from .test_transfer import cluster_with, describe, identity, make, memfds_of

pytestmark = pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="needs Linux memfds")

MiB = 1024 * 1024


def counters() -> dict[str, int]:
    own = _shared.channel()
    assert own is not None
    return {"sent": own.sent, "in_place": own.in_place,
            "received_in_place": own.received_in_place, "put": _inplace.put_count,
            "mappings": _inplace.mappings()}


def forget_evidence() -> None:
    """Each test starts with puts on (the evidence of earlier tests says nothing)."""
    _inplace.demand = _inplace._Demand()


def scribble(value: np.ndarray) -> int:
    """A consumer that writes into its input."""
    value[:] = 0
    return int(value.sum())


def bump(value: np.ndarray) -> np.ndarray:
    value += 1
    return value


def block(nbytes: int) -> np.ndarray:
    return np.arange(nbytes // 8, dtype="u8")


def total(value: np.ndarray) -> int:
    return int(value.sum())


def delta(before: dict, after: dict, worker: str, name: str) -> int:
    return after[worker][name] - before[worker][name]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit="2GiB") as cluster:
        yield cluster


@pytest.fixture
def client(cluster) -> Iterator[Client]:
    with Client(cluster) as client:
        client.run(forget_evidence)
        yield client


def test_a_result_made_on_a_reaches_b_without_a_copy(client):
    a, b, _ = sorted(client.scheduler_info()["workers"])
    before = client.run(counters)
    made = client.submit(make, "numpy", 4 * MiB, workers=[a], pure=False)
    assert client.submit(describe, made, workers=[b]).result(timeout=60) == describe(
        make("numpy", 4 * MiB))
    after = client.run(counters)
    assert delta(before, after, a, "put") == 1  # copied once, when the task finished
    assert delta(before, after, a, "in_place") == delta(before, after, a, "sent") == 1
    assert delta(before, after, b, "received_in_place") == 1


def test_a_consumer_writing_into_its_input_leaves_the_producers_value_alone(client):
    a, b, _ = sorted(client.scheduler_info()["workers"])
    made = client.submit(block, 4 * MiB, workers=[a], pure=False)
    expected = total(block(4 * MiB))
    assert client.submit(scribble, made, workers=[b], pure=False).result(timeout=60) == 0
    assert client.submit(total, made, workers=[a], pure=False).result(timeout=60) == expected
    assert total(made.result(timeout=60)) == expected


def test_a_result_written_into_its_input_is_put_anew(client):
    a, b, c = sorted(client.scheduler_info()["workers"])
    made = client.submit(block, 4 * MiB, workers=[a], pure=False)
    made.result(timeout=60)
    before = client.run(counters)
    bumped = client.submit(bump, made, workers=[b], pure=False)  # the input's array, written
    expected = total(block(4 * MiB)) + 4 * MiB // 8
    assert client.submit(total, bumped, workers=[c], pure=False).result(timeout=60) == expected
    after = client.run(counters)
    # its pages are b's own now, not the file's: the result is put as a new value
    assert delta(before, after, b, "put") == 1
    assert delta(before, after, b, "in_place") == 1
    assert client.submit(total, made, workers=[a], pure=False).result(timeout=60) == total(
        block(4 * MiB))


def test_the_value_outlives_its_producer_letting_go(client):
    a, b, _ = sorted(client.scheduler_info()["workers"])
    mappings = client.run(counters)[a]["mappings"]
    made = client.submit(make, "numpy", 4 * MiB, workers=[a], pure=False)
    kept = client.submit(identity, made, workers=[b], pure=False)  # lives in a's memfd
    kept.result(timeout=60)
    del made
    wait_for(lambda: client.run(counters)[a]["mappings"] <= mappings, 30,
             "the producer releasing its value")
    assert client.submit(describe, kept, workers=[b]).result(timeout=60) == describe(
        make("numpy", 4 * MiB))


def test_data_a_worker_received_is_passed_on_without_a_copy(client):
    a, b, c = sorted(client.scheduler_info()["workers"])
    made = client.submit(make, "numpy", 4 * MiB, workers=[a], pure=False)
    kept = client.submit(identity, made, workers=[b], pure=False)
    kept.result(timeout=60)
    before = client.run(counters)
    assert client.submit(describe, kept, workers=[c]).result(timeout=60) == describe(
        make("numpy", 4 * MiB))
    after = client.run(counters)
    assert delta(before, after, b, "put") == 0  # in shared memory already
    assert delta(before, after, b, "in_place") == delta(before, after, b, "sent") == 1
    assert delta(before, after, c, "received_in_place") == 1


def test_without_shared_memory_nothing_is_put_and_values_still_move():
    with cluster_with(shared=False) as cluster, Client(cluster) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        made = client.submit(make, "numpy", 4 * MiB, workers=[a], pure=False)
        assert client.submit(describe, made, workers=[b]).result(timeout=60) == describe(
            make("numpy", 4 * MiB))
        puts = client.run(lambda: (_inplace.put_count, _shared.channel()))
        assert set(puts.values()) == {(0, None)}


# ------------------------------------------------------------ SIGKILL


def _memfds_beyond_pool() -> int:
    """Memory files this worker holds, other than its idle pool (emptied first)."""
    _pool.release()
    gc.collect()
    return memfds_of(os.getpid())


@pytest.mark.parametrize("victim", ["producer", "consumer"])
def test_a_killed_peer_leaves_no_memfd_behind_in_the_survivor(victim):
    with cluster_with(shared=True) as cluster, Client(cluster) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        pids = client.run(os.getpid)
        survivor = b if victim == "producer" else a
        baseline = client.run(_memfds_beyond_pool, workers=[survivor])[survivor]
        made = client.submit(make, "numpy", 8 * MiB, workers=[a], pure=False)
        kept = client.submit(identity, made, workers=[b], pure=False)
        assert client.submit(describe, kept, workers=[b]).result(timeout=60)[0] == "ndarray"
        assert client.run(counters, workers=[a])[a]["in_place"] >= 1
        assert client.run(_memfds_beyond_pool, workers=[survivor])[survivor] > baseline
        os.kill(pids[a if victim == "producer" else b], signal.SIGKILL)
        if victim == "producer":  # the consumer's value outlives the process that made it
            assert client.submit(describe, kept, workers=[b]).result(timeout=60) == describe(
                make("numpy", 8 * MiB))
        del made, kept
        wait_for(lambda: client.run(_memfds_beyond_pool, workers=[survivor])[survivor]
                 <= baseline, 60, "the survivor closing every memfd of the value")
