"""Coordination on a multi-process cluster: ``fire_and_forget`` and published
datasets (results that outlive the futures and the client that made them),
``Event``, ``Lock``, ``Semaphore``, ``MultiLock``, ``Variable``, ``Queue``, and
``shoal.print``/``shoal.warn``."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import shoal
from shoal import (
    Client,
    Event,
    Lock,
    MultiLock,
    Queue,
    Semaphore,
    Variable,
    fire_and_forget,
    futures_of,
    wait,
)
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


def wait_for_event(event: Event) -> bool:
    return event.wait(timeout=30)


def under_lock(lock: Lock, value: int) -> int:
    with lock:
        return value


def speak(value: int) -> int:
    shoal.print("printed through the scheduler", value)
    shoal.warn("warned through the scheduler")
    return value


def test_event_set_in_the_client_releases_a_waiting_task(proc_client):
    event = Event("go", client=proc_client)
    assert not event.is_set() and event.wait(timeout=0.1) is False
    waiting = proc_client.submit(wait_for_event, event)
    event.set()
    assert waiting.result() is True and event.is_set()
    event.clear()
    assert not event.is_set()


def test_lock_and_semaphore_bound_their_holders_cluster_wide(proc_client):
    lock = Lock("the-lock", client=proc_client)
    assert lock.acquire() and lock.locked()
    assert Lock("the-lock", client=proc_client).acquire(timeout=0.1) is False
    blocked = proc_client.submit(under_lock, lock, 7)
    with pytest.raises(TimeoutError):
        wait([blocked], timeout=0.3)  # it cannot take the lock while we hold it
    lock.release()
    assert blocked.result() == 7 and not lock.locked()
    assert proc_client.gather(proc_client.map(under_lock, [lock] * 4, range(4))) == [0, 1, 2, 3]
    sem = Semaphore(2, "two", client=proc_client)
    assert sem.acquire() and sem.acquire() and sem.get_value() == 2
    assert sem.acquire(timeout=0.1) is False
    sem.release()
    sem.release()
    assert sem.get_value() == 0
    with pytest.raises(RuntimeError, match="no lease"):
        sem.release()


def test_shoal_print_and_warn_in_a_task_reach_the_client(proc_client, capsys):
    seen: list[str] = []

    def printed() -> bool:
        seen.append(capsys.readouterr().out)
        return "printed through the scheduler 3" in "".join(seen)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert proc_client.submit(speak, 3).result() == 3
        wait_for(printed, timeout=20, what="the task's print on the client")
        wait_for(lambda: any("warned through" in str(w.message) for w in caught), timeout=20,
                 what="the task's warning on the client")


def put_results(queue: Queue, n: int) -> int:
    client = shoal.get_client()
    for i in range(n):
        queue.put(client.submit(inc, i, pure=False))
    return n


def inc(x: int) -> int:
    return x + 1


def test_variable_holds_a_value_or_a_future_for_every_client(proc_cluster):
    with Client(proc_cluster, timeout=20) as writer:
        plain = Variable("plain", client=writer)
        with pytest.raises(TimeoutError, match=r"no value was set within timeout=0\.1s"):
            plain.get(timeout=0.1)
        plain.set({"a": 1})
        Variable("result", client=writer).set(writer.submit(sum, [1, 2, 3]))
    with Client(proc_cluster, timeout=20) as reader:  # the writer and its future are gone
        assert Variable("plain", client=reader).get() == {"a": 1}
        result = Variable("result", client=reader)
        assert result.get().result() == 6
        result.delete()
        Variable("plain", client=reader).delete()
        wait_for(lambda: tasks_on(reader) == 0, timeout=20,
                 what="the deleted variable's result to be released")


def test_queue_passes_futures_from_tasks_to_the_client_in_order(proc_client):
    queue = Queue("results", client=proc_client)
    assert proc_client.submit(put_results, queue, 4).result() == 4
    assert queue.qsize() == 4
    first = queue.get()
    assert first.result() == 1
    assert [f.result() for f in queue.get(batch=True)] == [2, 3, 4]
    with pytest.raises(TimeoutError, match="no item arrived"):
        queue.get(timeout=0.1)
    del first
    wait_for(lambda: tasks_on(proc_client) == 0, timeout=20,
             what="the queued results to be released once their futures are gone")


def test_multilock_takes_all_its_names_or_none(proc_client):
    both = MultiLock(["left", "right"], client=proc_client)
    assert both.acquire() and both.locked()
    right = MultiLock(["right", "other"], client=proc_client)
    assert right.acquire(timeout=0.1) is False  # "right" is taken
    assert right.acquire(num_locks=1, timeout=5)  # "other" alone is free
    right.release()
    both.release()
    assert not both.locked()
    with MultiLock(["right", "other"], client=proc_client) as taken:
        assert taken.locked()
    with pytest.raises(RuntimeError, match="holds no locks"):
        both.release()


def hold_lease_until_killed(name: str, lease_timeout: float) -> None:
    assert Semaphore(1, name, lease_timeout=lease_timeout).acquire(timeout=20)
    Event(f"{name}-held").set()
    Event(f"{name}-never").wait(timeout=60)


def test_a_lease_held_by_a_dead_worker_is_released_after_its_timeout():
    import os
    import signal

    from shoal import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster, timeout=20) as client:
        victim = min(client.scheduler_info()["workers"])
        pid = client.run(os.getpid, workers=[victim])[victim]
        holder = client.submit(hold_lease_until_killed, "leased", 1.0, workers=[victim],
                               pure=False)
        assert Event("leased-held", client=client).wait(timeout=30)
        mine = Semaphore(1, "leased", client=client, lease_timeout=1.0)
        assert mine.acquire(timeout=0.5) is False  # its live holder keeps refreshing it
        os.kill(pid, signal.SIGKILL)
        assert mine.acquire(timeout=20) is True  # taken back once not refreshed for 1 s
        mine.release()
        client.cancel(holder)


def test_a_live_holder_keeps_its_lease_past_the_timeout(proc_client):
    first = Lock("refreshed", client=proc_client, lease_timeout=1.0)
    assert first.acquire()
    second = Lock("refreshed", client=proc_client, lease_timeout=1.0)
    assert second.acquire(timeout=3.0) is False  # three lease timeouts: refreshed meanwhile
    first.release()
    assert second.acquire(timeout=10) is True
    second.release()


def test_a_bounded_queue_makes_put_wait_for_room(proc_client):
    import threading

    queue = Queue("bounded", client=proc_client, maxsize=2)
    queue.put(1)
    queue.put(2)
    with pytest.raises(TimeoutError, match="no room within timeout=0.2s"):
        queue.put("never", timeout=0.2)
    waiting = threading.Thread(target=queue.put, args=(3,), kwargs={"timeout": 30})
    waiting.start()
    wait_for(lambda: proc_client.run_on_scheduler(
        lambda dask_scheduler: len(dask_scheduler.shared.waiting_puts.get("bounded", ()))),
        timeout=20, what="the put to wait for room")
    assert queue.get(timeout=10) == 1  # makes room: the waiting put goes in
    waiting.join(timeout=30)
    assert not waiting.is_alive()
    assert [queue.get(timeout=10) for _ in range(2)] == [2, 3]
    assert queue.qsize() == 0
