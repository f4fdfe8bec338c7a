"""dask collections on a multi-process cluster: the Client is dask's default
scheduler, ``compute``/``persist`` return futures, graphs travel whole and
leave nothing behind."""

from __future__ import annotations

import contextlib
import gc
import os
import time

import pytest

from shoal import Client, LocalCluster, futures_of, wait
from tests.polling import wait_for

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")


@pytest.fixture
def cluster(proc_cluster: LocalCluster) -> LocalCluster:
    return proc_cluster


@pytest.fixture
def client(proc_client: Client) -> Client:
    return proc_client


def where() -> int:
    return os.getpid()


def worker_pids(client: Client) -> set[int]:
    return set(client.run(os.getpid).values())


def test_a_client_is_dasks_default_scheduler_until_it_closes(cluster):
    before = dask.config.get("scheduler", None)
    with Client(cluster, timeout=20) as client:
        pids = worker_pids(client)
        assert dask.delayed(where)().compute() in pids
        assert dask.compute(dask.delayed(where)())[0] in pids
        (persisted,) = dask.persist(da.ones(10, chunks=5) + 1)
        assert len(futures_of(persisted)) == 2
        assert persisted.sum().compute() == 20
    assert dask.config.get("scheduler", None) == before
    assert dask.delayed(where)().compute() == os.getpid()


def test_set_as_default_false_leaves_dask_alone(cluster):
    with Client(cluster, timeout=20, set_as_default=False):
        assert dask.delayed(where)().compute() == os.getpid()


def test_the_newest_client_is_the_default_and_closing_it_restores_the_older(cluster):
    with Client(cluster, timeout=20) as older:
        newer = Client(cluster, timeout=20)
        newer.close()
        assert dask.delayed(where)().compute() in worker_pids(older)
        assert dask.config.get("dataframe.shuffle.method") == "tasks"


def test_compute_returns_futures_and_persist_a_collection_over_futures(client):
    x = da.arange(100, chunks=10)
    future = client.compute(x.sum())
    assert type(future).__name__ == "Future"
    assert future.result() == sum(range(100))
    f1, f2, plain = client.compute([x.max(), dask.delayed(sum)([1, 2]), 7])
    assert (f1.result(), f2.result(), plain) == (99, 3, 7)
    assert client.compute(x.min(), sync=True) == 0
    y = client.persist(x * 2)
    pieces = futures_of(y)
    assert len(pieces) == 10
    client.gather(pieces)
    assert all(f.done() for f in pieces)
    assert (y + 1).sum().compute() == 2 * sum(range(100)) + 100
    with pytest.raises(TypeError, match="unexpected keyword"):
        client.compute(x.sum(), wrokers=["a"])


def test_a_graph_is_one_message_and_leaves_nothing_held_without_the_cyclic_gc(client):
    sent: list[str] = []
    real_send = client._send

    def record(msg, **kwargs):  # the real send runs; this only notes what went out
        sent.append(msg["op"])
        real_send(msg, **kwargs)

    client._send = record
    x = da.random.default_rng(0).random((400, 400), chunks=50)
    gc.disable()
    try:
        (mean,) = dask.compute((x + x.T).mean(axis=0), scheduler=client.get)
        assert mean.shape == (400,)
        assert sent.count("update-graph") == 1
        wait_for(lambda: client.scheduler_info()["tasks"] == 0, timeout=20,
                 what="every task of the graph to be released")
    finally:
        gc.enable()
        client._send = real_send



def boom(x: int) -> int:
    raise ValueError(x)


NEVER = {"resources": {"no-such-resource": 1}}  # no worker can run these

#: Each of these once left its futures in a reference cycle: held on the
#: cluster until the cyclic GC ran.
CASES = {
    "a failed result": (lambda c: c.submit(boom, 1).result(), ValueError),
    "a failed gather": (lambda c: c.gather([c.submit(boom, 2)]), ValueError),
    "a failed compute": (lambda c: dask.delayed(boom)(3).compute(), ValueError),
    "a result timeout": (lambda c: c.submit(sum, [1], **NEVER).result(timeout=0.1),
                         TimeoutError),
    "a wait timeout": (lambda c: wait([c.submit(sum, [2], **NEVER)], timeout=0.1),
                       TimeoutError),
    "an exception timeout": (lambda c: c.submit(sum, [3], **NEVER).exception(timeout=0.1),
                             TimeoutError),
    "an executor future": (lambda c: c.get_executor().submit(sum, [4]).result(), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_errors_timeouts_and_executors_leave_nothing_held_without_the_cyclic_gc(client, case):
    call, error = CASES[case]
    gc.collect()
    gc.disable()
    try:
        with pytest.raises(error) if error else contextlib.nullcontext():
            call(client)
        wait_for(lambda: client.scheduler_info()["tasks"] == 0, timeout=20,
                 what=f"the futures of {case} to be released")
    finally:
        gc.enable()


def test_a_dataframe_shuffle_runs_on_the_cluster_as_tasks_not_through_local_disk(client):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    dd = pytest.importorskip("dask.dataframe")
    from dask.utils import get_default_shuffle_method

    assert get_default_shuffle_method() == "tasks"
    frame = dd.from_pandas(pd.DataFrame({"k": [i % 7 for i in range(700)],
                                         "v": range(700)}), npartitions=6)
    start = time.time()
    shuffled = frame.shuffle("k")
    keys_per_partition = shuffled.map_partitions(
        lambda part: pd.Series([sorted(set(part.k))])).compute().tolist()
    assert sorted(k for keys in keys_per_partition for k in keys) == list(range(7))
    assert sorted(shuffled.compute().v) == list(range(700))
    ran = {r["prefix"] for r in client.get_task_stream(start=start)}
    assert any("shuffle" in prefix for prefix in ran), ran
