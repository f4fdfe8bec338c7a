"""``dask.annotate(workers=, retries=, priority=, resources=)`` reaches the
scheduler with each task of the graph, on a multi-process cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoal import Client

dask = pytest.importorskip("dask")


@pytest.fixture
def client(proc_client: Client) -> Client:
    return proc_client


def where(_: object = None) -> int:
    return os.getpid()


def fails_once(marker: str) -> str:
    path = Path(marker)
    if not path.exists():
        path.write_text("tried")
        raise RuntimeError("first attempt fails")
    return "second attempt"


def test_annotated_workers_place_the_tasks(client):
    pids = client.run(os.getpid)
    for address, pid in pids.items():
        with dask.annotate(workers=[address]):
            placed = [dask.delayed(where, pure=False)(i) for i in range(4)]
        assert set(dask.compute(*placed)) == {pid}


def test_annotated_retries_rerun_a_failing_task(client, tmp_path):
    with dask.annotate(retries=1):
        retried = dask.delayed(fails_once, pure=False)(str(tmp_path / "a"))
    assert retried.compute() == "second attempt"
    plain = dask.delayed(fails_once, pure=False)(str(tmp_path / "b"))
    with pytest.raises(RuntimeError, match="first attempt"):
        plain.compute()


def test_annotated_priority_and_resources_travel_with_their_tasks(client):
    sent: list[dict] = []
    real_send = client._send

    def record(msg, **kwargs):  # the real send runs; this only keeps what went out
        sent.append(msg)
        real_send(msg, **kwargs)

    client._send = record
    try:
        with dask.annotate(priority=5, resources={"slots": 1}):
            first = dask.delayed(where, pure=False)()
        second = dask.delayed(where, pure=False)(first)
        with pytest.raises(TimeoutError):  # no worker has "slots": it cannot run
            client.compute(second).result(timeout=0.5)
    finally:
        client._send = real_send
    (graph,) = [m for m in sent if m["op"] == "update-graph"]
    annotated = [t for t in graph["tasks"] if t.get("priority") == 5]
    assert len(annotated) == 1 and annotated[0]["resources"] == {"slots": 1}
    assert all("priority" not in t for t in graph["tasks"] if t is not annotated[0])
