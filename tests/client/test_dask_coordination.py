"""``fire_and_forget`` and published datasets on a multi-process cluster:
results that outlive the futures and the client that made them."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal import Client, fire_and_forget, futures_of
from tests.polling import wait_for


def write_file(path: str, text: str, *_after: object) -> str:
    Path(path).write_text(text)
    return text


def tasks_on(client: Client) -> int:
    return client.scheduler_info()["tasks"]


def test_fire_and_forget_runs_after_its_future_and_client_are_gone(proc_cluster, tmp_path):
    target = tmp_path / "side-effect.txt"
    with Client(proc_cluster, timeout=20) as client:
        gate = client.submit(write_file, str(tmp_path / "gate"), "x", pure=False)
        fire_and_forget(client.submit(write_file, str(target), "written", gate, pure=False))
        fire_and_forget(client.submit(write_file, pure=False))  # fails: released all the same
        del gate
    with Client(proc_cluster, timeout=20) as observer:
        wait_for(target.exists, timeout=30, what="the fire-and-forget task's file")
        assert target.read_text() == "written"
        wait_for(lambda: tasks_on(observer) == 0, timeout=20,
                 what="the finished fire-and-forget tasks to be released")


def test_published_datasets_outlive_their_publisher_until_unpublished(proc_cluster):
    da = pytest.importorskip("dask.array")
    with Client(proc_cluster, timeout=20) as publisher:
        array = publisher.persist(da.arange(10, chunks=5))
        publisher.publish_dataset(array=array, total=publisher.submit(sum, [1, 2, 3]))
        publisher.datasets["mixed"] = [1, publisher.submit(len, "abcd")]
        with pytest.raises(ValueError, match="already published"):
            publisher.publish_dataset(7, name="total")
        del array
    with Client(proc_cluster, timeout=20) as reader:
        assert reader.list_datasets() == ["array", "mixed", "total"]
        assert sorted(reader.datasets) == ["array", "mixed", "total"]
        array = reader.get_dataset("array")
        assert len(futures_of(array)) == 2
        assert array.sum().compute() == 45
        assert reader.datasets["total"].result() == 6
        assert reader.gather(reader.get_dataset("mixed")) == [1, 4]
        del array
        for name in ("array", "total"):
            reader.unpublish_dataset(name)
        del reader.datasets["mixed"]
        assert reader.list_datasets() == []
        assert reader.get_dataset("array", default=None) is None
        with pytest.raises(KeyError, match="no dataset named 'array'"):
            reader.get_dataset("array")
        wait_for(lambda: tasks_on(reader) == 0, timeout=20,
                 what="the unpublished results to be released")
