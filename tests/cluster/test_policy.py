"""Scheduling policy on real processes: resources, priorities, adaptive scaling."""

from __future__ import annotations

import time

import pytest

from shoal import Client, LocalCluster
from shoal.cluster._adapt import Adaptive, decide
from shoal.cluster._process import ChildProcess
from shoal.worker import get_worker

from ..polling import wait_for


def where_and_when(delay: float) -> tuple[str, float, float]:
    start = time.time()
    time.sleep(delay)
    return get_worker().name, start, time.time()


def test_resources_route_and_limit_concurrency():
    scheduler = ChildProcess(["scheduler", "--host", "127.0.0.1", "--port", "0",
                              "--http-port", "-1"])
    workers = []
    try:
        address = scheduler.wait_announced(30)["address"]
        for name, extra in (("cpu", []), ("gpu", ["--resources", "GPU=2"])):
            workers.append(ChildProcess(["worker", address, "--name", name, "--nthreads", "4",
                                         "--no-nanny", *extra]))
            workers[-1].wait_announced(30)
        with Client(address) as client:
            runs = client.gather(client.map(where_and_when, [0.2] * 6, pure=False,
                                            resources={"GPU": 1}))
            assert {name for name, _, _ in runs} == {"gpu"}
            events = sorted([(s, 1) for _, s, _ in runs] + [(e, -1) for _, _, e in runs])
            running = peak = 0
            for _, step in events:
                running += step
                peak = max(peak, running)
            assert peak <= 2  # GPU=2, one GPU per task
            free = client.gather(client.map(where_and_when, [0.0] * 8, pure=False))
            assert {name for name, _, _ in free} <= {"cpu", "gpu"}
    finally:
        for w in workers:
            w.terminate()
        scheduler.terminate()


def test_priority_orders_queued_work(proc_cluster):
    order: list[int] = []
    with Client(proc_cluster) as client:
        gate = client.submit(time.sleep, 0.5, pure=False, workers=[
            min(client.scheduler_info()["workers"])])
        low = client.map(lambda i: (i, time.time()), range(30), pure=False)
        high = client.submit(lambda: ("high", time.time()), pure=False, priority=10)
        client.gather([gate])
        stamps = [t for _, t in client.gather(low)]
        _, high_time = high.result(timeout=30)
        order.append(sum(1 for t in stamps if t < high_time))
    assert order[0] < 30  # the high-priority task did not wait behind every low one


def test_adaptive_decisions_scale_up_at_once_and_down_after_a_streak():
    assert decide(2, 5, 1, 10, 0, 3) == (5, 0)
    assert decide(5, 1, 1, 10, 0, 3) == (5, 1)
    assert decide(5, 1, 1, 10, 1, 3) == (5, 2)
    assert decide(5, 1, 1, 10, 2, 3) == (1, 0)
    assert decide(5, 50, 1, 8, 0, 3) == (8, 0)
    assert decide(0, 0, 2, 8, 0, 3) == (2, 0)
    with pytest.raises(ValueError):
        Adaptive(object(), minimum=3, maximum=1)


def test_local_cluster_adapts_to_queued_work():
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                      nanny=False) as cluster, Client(cluster) as client:
        adaptive = cluster.adapt(minimum=1, maximum=3, interval=0.2, wait_count=2)
        busy = client.map(time.sleep, [1.0] * 40, pure=False)  # 40 s of work for 1 thread
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 3, 60, "scale up to 3")
        client.cancel(busy)
        del busy
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, 60, "scale down to 1")
        assert any(target >= 3 for target, _ in adaptive.history)
