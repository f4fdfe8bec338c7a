"""Scrape ``/metrics`` over HTTP from a real multi-process LocalCluster.

The scheduler and both workers are separate processes; every figure is read
the way Prometheus reads it, during and after real computations.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal import Client, LocalCluster

from ..polling import wait_for
from .observability_support import http, sample, scrape

N_TASKS = 200
TASK_SECONDS = 0.02


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[LocalCluster, Client]]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=0) as cluster, Client(cluster) as client:
        cluster.wait_for_workers(2)
        yield cluster, client


def metrics_url(cluster: LocalCluster) -> str:
    assert cluster.dashboard_link is not None
    return cluster.dashboard_link + "metrics"


def worker_http(client: Client) -> dict[str, str]:
    workers = client.scheduler_info()["workers"]
    return {address: info["http_address"] for address, info in workers.items()}


def test_scheduler_figures_move_during_a_computation(cluster) -> None:
    cluster, client = cluster
    url = metrics_url(cluster)
    before = scrape(url)
    assert sample(before, "shoal_scheduler_workers", state="running") == 2
    assert sample(before, "shoal_scheduler_threads") == 2
    assert sample(before, "shoal_scheduler_clients") >= 1
    start = sample(before, "shoal_scheduler_tasks_finished_total")

    futures = client.map(time.sleep, [TASK_SECONDS] * N_TASKS, pure=False)
    seen: list[float] = []

    def progressed() -> bool:
        now = scrape(url)
        seen.append(sample(now, "shoal_scheduler_tasks_finished_total") - start)
        return seen[-1] >= N_TASKS

    wait_for(progressed, timeout=30, what="tasks finished to reach the number submitted")
    assert seen == sorted(seen), f"the finished counter went down: {seen}"
    assert any(0 < s < N_TASKS for s in seen), f"never saw the computation midway: {seen}"
    client.gather(futures)

    after = scrape(url)
    assert sample(after, "shoal_scheduler_tasks_finished_total") - start == N_TASKS
    assert sample(after, "shoal_scheduler_tasks", state="memory") >= N_TASKS
    assert sample(after, "shoal_scheduler_tasks", state="processing") == 0
    durations = sample(after, "shoal_scheduler_task_duration_seconds_count", prefix="sleep")
    assert durations >= N_TASKS
    total = sample(after, "shoal_scheduler_task_duration_seconds_sum", prefix="sleep")
    assert total >= N_TASKS * TASK_SECONDS * 0.9
    estimate = sample(after, "shoal_scheduler_task_duration_estimate_seconds", prefix="sleep")
    assert TASK_SECONDS * 0.5 < estimate < 1.0
    assert sample(after, "shoal_scheduler_tasks_erred_total") == 0
    assert sample(after, "shoal_scheduler_workers", state="running") == 2
    del futures


def test_adaptive_target_and_loop_lag_are_exposed(cluster) -> None:
    cluster, client = cluster
    futures = client.map(time.sleep, [0.5] * 40, pure=False)

    def wanting_more() -> dict | None:
        now = scrape(metrics_url(cluster))
        return now if sample(now, "shoal_scheduler_adaptive_target_workers") >= 2 else None

    busy = wait_for(wanting_more, timeout=10, what="an adaptive target above the idle figure")
    assert sample(busy, "shoal_scheduler_tasks", state="queued") + sample(
        busy, "shoal_scheduler_tasks", state="processing") > 0
    lag = sample(busy, "shoal_scheduler_event_loop_lag_seconds")
    assert 0 <= lag < 5
    assert sample(busy, "shoal_scheduler_start_time_seconds") <= time.time()
    client.cancel(futures)
    del futures
    wait_until_workers_are_quiet(client)


def wait_until_workers_are_quiet(client: Client) -> None:
    """Cancelled tasks already running finish in their own time: wait for them."""

    def quiet() -> bool:
        for base in worker_http(client).values():
            samples = scrape(base + "/metrics")
            if sample(samples, "shoal_worker_tasks", state="executing") or sample(
                    samples, "shoal_worker_tasks", state="cancelled"):
                return False
        return True

    wait_for(quiet, timeout=10, what="the workers to finish their cancelled tasks")


def test_memory_and_transfer_between_workers(cluster) -> None:
    cluster, client = cluster
    url = metrics_url(cluster)
    a, b = sorted(worker_http(client))
    start = sample(scrape(url), "shoal_scheduler_transfer_bytes_total")
    size = 3_000_000
    block = client.submit(bytes, size, workers=[a], pure=False)
    length = client.submit(len, block, workers=[b], pure=False)
    assert length.result(timeout=30) == size

    def moved() -> dict | None:
        now = scrape(url)
        return now if sample(now, "shoal_scheduler_transfer_bytes_total") - start >= size else None

    now = wait_for(moved, timeout=10, what="the transfer to show in the heartbeats")
    assert sample(now, "shoal_scheduler_memory_bytes", kind="managed") >= size
    assert sample(now, "shoal_scheduler_memory_bytes", kind="process") > size
    assert sample(now, "shoal_scheduler_memory_limit_bytes") > 0

    served = scrape(worker_http(client)[a] + "/metrics")
    fetched = scrape(worker_http(client)[b] + "/metrics")
    assert sample(served, "shoal_worker_served_bytes_total") >= size
    assert sample(fetched, "shoal_worker_fetched_bytes_total") >= size
    assert sample(fetched, "shoal_worker_keys_fetched_total") >= 1
    assert sample(served, "shoal_worker_memory_bytes", kind="managed") >= size
    del block, length


def test_worker_metrics_and_health(cluster) -> None:
    cluster, client = cluster
    addresses = worker_http(client)
    assert len(addresses) == 2 and all(addresses.values())
    for base in addresses.values():
        health = http(base + "/health")
        assert (health.status, health.text) == (200, "ok")
        samples = scrape(base + "/metrics")
        assert sample(samples, "shoal_worker_threads") == 1
        assert sample(samples, "shoal_worker_memory_limit_bytes") > 0
        assert sample(samples, "shoal_worker_memory_bytes", kind="process") > 0
        assert sample(samples, "shoal_worker_paused") == 0

    first = next(iter(addresses))
    base = addresses[first]
    # one task first: a worker that has run none yet (the earlier tests of this
    # module may have run theirs on the other) exposes no execution histogram
    client.submit(time.sleep, 0, pure=False, workers=[first]).result()
    executed = sample(scrape(base + "/metrics"), "shoal_worker_tasks_executed_total")
    timed = sample(scrape(base + "/metrics"), "shoal_worker_task_execution_seconds_count")
    futures = client.map(time.sleep, [0.01] * 10, pure=False, workers=[first])
    client.gather(futures)
    samples = scrape(base + "/metrics")
    assert sample(samples, "shoal_worker_tasks_executed_total") == executed + 10
    assert sample(samples, "shoal_worker_tasks_failed_total") == 0
    assert sample(samples, "shoal_worker_task_execution_seconds_count") == timed + 10
    assert sample(samples, "shoal_worker_tasks", state="memory") >= 10
    assert sample(samples, "shoal_worker_tasks", state="executing") == 0
    del futures


def test_worker_http_refuses_bad_requests(cluster) -> None:
    _, client = cluster
    base = next(iter(worker_http(client).values()))
    missing = http(base + "/nope")
    assert missing.status == 404 and "/nope" in missing.json()["error"]
    wrong = http(base + "/metrics", method="POST", body=b"{}")
    assert wrong.status == 405 and wrong.json()["error"]
    assert http(base + "/health").status == 200  # still serving


def documented_metrics() -> set[str]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    return set(re.findall(r"^\| `(shoal_\w+)` \|", text, flags=re.MULTILINE))


def exposed_metrics(url: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(http(url).text):
        if family.name.endswith("_created"):
            continue
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_docs_list_exactly_what_is_exposed(cluster) -> None:
    cluster, client = cluster
    documented = documented_metrics()
    worker = next(iter(worker_http(client).values()))
    exposed = exposed_metrics(metrics_url(cluster)) | exposed_metrics(worker + "/metrics")
    assert exposed == documented, {"undocumented": exposed - documented,
                                   "not exposed": documented - exposed}
