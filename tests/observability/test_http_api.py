"""Every route of the scheduler's HTTP API, with good and bad input.

The scheduler and workers run in this process (``processes=False``) but
everything is asked over real HTTP, as the operator and Prometheus do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from shoal import Client, LocalCluster

from ..polling import wait_for
from .observability_support import Response, http

WORKER_FIELDS = {"address", "name", "nthreads", "memory_limit", "memory", "executing", "ready",
                 "in_memory", "status", "last_seen"}


def _cluster() -> Iterator[tuple[str, LocalCluster, Client]]:
    with LocalCluster(n_workers=3, threads_per_worker=1, processes=False,
                      dashboard_address=0) as cluster, Client(cluster) as client:
        cluster.wait_for_workers(3)
        assert cluster.dashboard_link is not None
        yield cluster.dashboard_link.rstrip("/"), cluster, client


#: shared by the tests that leave the cluster as they found it
cluster = pytest.fixture(scope="module")(_cluster)
#: a cluster of its own, for a test that retires a worker
own_cluster = pytest.fixture(_cluster)


def assert_error(answer: Response, status: int, *words: str) -> None:
    assert answer.status == status, (answer.status, answer.text)
    assert answer.content_type.startswith("application/json")
    message = answer.json()["error"]
    for word in words:
        assert word in message, message


def test_health(cluster) -> None:
    base, _, _ = cluster
    answer = http(base + "/health")
    assert (answer.status, answer.text) == (200, "ok")
    assert answer.content_type.startswith("text/plain")


def test_workers_lists_every_worker_with_the_documented_fields(cluster) -> None:
    base, local, _ = cluster
    workers = http(base + "/api/v1/workers").json()["workers"]
    assert {w["name"] for w in workers} == set(local.workers)
    for worker in workers:
        assert WORKER_FIELDS <= set(worker), WORKER_FIELDS - set(worker)
        assert worker["ready"] is True and worker["nthreads"] == 1


def test_adaptive_target_follows_the_queue(cluster) -> None:
    base, _, client = cluster
    idle = http(base + "/api/v1/adaptive_target").json()
    assert isinstance(idle["workers"], int) and idle["workers"] >= 0
    futures = client.map(time.sleep, [0.3] * 60, pure=False)
    busy = wait_for(lambda: http(base + "/api/v1/adaptive_target").json()["workers"] >= 3,
                    timeout=10, what="a target of at least 3 workers")
    assert busy
    client.cancel(futures)


def test_idle_reports_since_when(cluster) -> None:
    base, _, client = cluster
    futures = client.map(time.sleep, [0.2] * 6, pure=False)

    def busy() -> dict | None:
        answer = http(base + "/api/v1/idle").json()
        return None if answer["idle"] else answer

    assert wait_for(busy, timeout=10, what="the work to arrive") == {"idle": False,
                                                                     "idle_since": None}
    client.gather(futures)
    del futures

    def idle() -> dict | None:
        answer = http(base + "/api/v1/idle").json()
        return answer if answer["idle"] else None

    answer = wait_for(idle, timeout=10, what="the scheduler to be idle")
    assert answer["idle_since"] <= time.time() + 1


def test_dashboard_data_and_page(cluster) -> None:
    base, local, client = cluster
    futures = client.map(time.sleep, [0.01] * 20, pure=False)
    client.gather(futures)
    data = http(base + "/api/v1/dashboard").json()
    assert {w["name"] for w in data["workers"]} == set(local.workers)
    assert set(data["tasks"]) >= {"memory", "processing", "queued", "waiting", "erred"}
    sleep_rows = [p for p in data["progress"] if p["prefix"] == "sleep"]
    assert sleep_rows and sleep_rows[0]["states"]["memory"] >= 20
    assert len([e for e in data["task_stream"] if e["prefix"] == "sleep"]) >= 20
    later = http(base + f"/api/v1/dashboard?since={data['now'] + 3600}").json()
    assert later["task_stream"] == []
    page = http(base + "/")
    assert page.status == 200 and page.content_type.startswith("text/html")
    assert "/static/dashboard.js" in page.text and "http" not in page.text.split("<body>")[1]
    script = http(base + "/static/dashboard.js")
    assert script.status == 200 and "/api/v1/dashboard" in script.text
    assert http(base + "/static/dashboard.css").status == 200
    del futures


def test_retire_workers_moves_data_first(own_cluster) -> None:
    base, local, client = own_cluster
    names = sorted(local.workers)
    victim = names[-1]
    held = client.submit(bytes, 100_000, workers=[victim], pure=False)
    assert len(held.result()) == 100_000
    answer = http(base + "/api/v1/retire_workers", "POST", json.dumps({"workers": [victim]})
                  .encode())
    assert answer.status == 200, answer.text
    assert [w["name"] for w in answer.json()["retired"]] == [victim]
    wait_for(lambda: len(http(base + "/api/v1/workers").json()["workers"]) == 2, timeout=10,
             what="the retired worker to leave")
    assert len(held.result(timeout=10)) == 100_000  # moved, not lost
    by_count = http(base + "/api/v1/retire_workers", "POST", b'{"n": 0}')
    assert by_count.status == 200 and by_count.json() == {"retired": []}
    unknown = http(base + "/api/v1/retire_workers", "POST", b'{"workers": ["no-such-worker"]}')
    assert unknown.status == 200 and unknown.json() == {"retired": []}
    everyone = http(base + "/api/v1/retire_workers", "POST", b'{"n": 2}')
    assert_error(everyone, 409, "every worker")
    del held


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", ("not JSON",)),
        (b"[1, 2]", ("JSON object",)),
        (b"{}", ('"n"', '"workers"')),
        (b'{"n": -1}', ("non-negative",)),
        (b'{"n": "two"}', ("non-negative",)),
        (b'{"n": true}', ("non-negative",)),
        (b'{"workers": "local-0"}', ("list",)),
        (b'{"workers": [1, 2]}', ("list",)),
    ],
)
def test_retire_workers_refuses_bad_bodies(cluster, body: bytes, words: tuple[str, ...]) -> None:
    base, _, _ = cluster
    assert_error(http(base + "/api/v1/retire_workers", "POST", body), 400, *words)


@pytest.mark.parametrize("since", ["abc", "nan", "inf", ""])
def test_dashboard_refuses_a_bad_since(cluster, since: str) -> None:
    base, _, _ = cluster
    assert_error(http(base + f"/api/v1/dashboard?since={since}"), 400, "since")


def test_unknown_paths_and_methods_get_json_errors(cluster) -> None:
    base, _, _ = cluster
    assert_error(http(base + "/api/v1/nope"), 404, "/api/v1/nope")
    assert_error(http(base + "/static/missing.js"), 404, "missing.js")
    assert_error(http(base + "/static/../_http.py"), 403, "")
    assert_error(http(base + "/health", "POST", b"{}"), 405)
    assert_error(http(base + "/metrics", "POST", b"{}"), 405)
    assert_error(http(base + "/api/v1/workers", "DELETE"), 405)
    assert_error(http(base + "/api/v1/retire_workers"), 405)
    assert http(base + "/health").status == 200  # and it keeps serving


def test_status_redirects_to_the_dashboard(cluster) -> None:
    base, _, _ = cluster
    answer = http(base + "/status")  # urllib follows the redirect
    assert answer.status == 200 and "shoal dashboard" in answer.text
