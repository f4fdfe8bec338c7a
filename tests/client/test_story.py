"""``client.story(key)`` and ``GET /api/v1/story/<key>``: what happened to a key."""

from __future__ import annotations

import json
import urllib.request

from shoal import Client, LocalCluster

FIELDS = {"key", "start", "finish", "stimulus_id", "timestamp", "where"}


def inc(x: int) -> int:
    return x + 1


def test_story_follows_a_key_on_the_scheduler_and_its_worker(client):
    a = client.submit(inc, 1)
    b = client.submit(inc, a)
    assert b.result(timeout=30) == 3
    story = client.story(a)
    assert story and all(set(e) == FIELDS and e["key"] == a.key for e in story)
    assert [e["timestamp"] for e in story] == sorted(e["timestamp"] for e in story)
    on_scheduler = [(e["start"], e["finish"]) for e in story if e["where"] == "scheduler"]
    assert on_scheduler[:3] == [("released", "waiting"), ("waiting", "processing"),
                                ("processing", "memory")]
    on_workers = [(e["start"], e["finish"]) for e in story if e["where"] != "scheduler"]
    assert ("ready", "executing") in on_workers and ("executing", "memory") in on_workers
    ids = [e["stimulus_id"] for e in story if e["where"] == "scheduler"]
    assert ids[0].startswith("update-graph-") and ids[2].startswith("task-finished-")
    assert client.story("never-submitted") == []


def test_story_over_http():
    with LocalCluster(n_workers=1, processes=False, dashboard_address=0) as cluster, \
            Client(cluster) as client:
        future = client.submit(inc, 41)
        assert future.result(timeout=30) == 42
        url = f"{cluster.dashboard_link.rstrip('/')}/api/v1/story/{future.key}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            body = json.loads(answer.read())
        assert body["key"] == future.key
        finishes = [e["finish"] for e in body["story"] if e["where"] == "scheduler"]
        assert finishes[:3] == ["waiting", "processing", "memory"]
