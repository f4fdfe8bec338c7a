"""The futures API against a real scheduler and workers (one process, TCP)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import operator
import threading
import traceback

import pytest

from shoal import Client, as_completed, wait
from shoal.protocol import SerializationError


def inc(x: int) -> int:
    return x + 1


def fail(x: int) -> int:
    raise ZeroDivisionError(f"no good: {x}")


def scheduler_tasks(client: Client) -> int:
    return client.scheduler_info()["tasks"]


def test_submit_result(client):
    assert client.submit(inc, 1).result(timeout=10) == 2


def test_kwargs_and_lambda(client):
    assert client.submit(lambda a, b=0: a * b, 6, b=7).result(timeout=10) == 42


def test_map_and_dependent_sum(client):
    futures = client.map(inc, range(100))
    total = client.submit(sum, futures)
    assert total.result(timeout=10) == sum(range(1, 101))


def test_nested_futures_in_arguments_arrive_as_values(client):
    a, b = client.submit(inc, 1), client.submit(inc, 2)
    nested = client.submit(lambda d: d["x"][0] + d["y"][1]["z"], {"x": [a], "y": (0, {"z": b})})
    assert nested.result(timeout=10) == 5


def test_pure_calls_share_a_key_and_impure_do_not(client):
    assert client.submit(inc, 5).key == client.submit(inc, 5).key
    assert client.submit(inc, 5, pure=False).key != client.submit(inc, 5, pure=False).key
    assert client.submit(inc, 5, key="mine").key == "mine"


def test_gather_keeps_structure(client):
    fs = client.map(inc, range(3))
    out = client.gather({"a": fs, "b": (fs[0], 10)})
    assert out == {"a": [1, 2, 3], "b": (1, 10)}


def test_exception_is_reraised_with_remote_traceback(client):
    future = client.submit(fail, 3)
    with pytest.raises(ZeroDivisionError, match="no good: 3") as info:
        future.result(timeout=10)
    assert "fail" in "".join(info.value.__notes__)
    assert future.status == "error"
    assert isinstance(future.exception(), ZeroDivisionError)
    assert "raise ZeroDivisionError" in "".join(traceback.format_tb(future.traceback()))


def test_error_propagates_to_dependents(client):
    bad = client.submit(fail, 1)
    downstream = client.submit(inc, bad)
    with pytest.raises(ZeroDivisionError):
        downstream.result(timeout=10)


def test_unpicklable_function_is_refused_at_submit(client):
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="lock"):
        client.submit(lambda: lock.locked())
    assert client.submit(inc, 1).result(timeout=10) == 2


def test_unpicklable_argument_is_refused(client):
    with pytest.raises(SerializationError):
        client.submit(inc, threading.Lock())


def test_unpicklable_result_gives_a_clear_error(client):
    future = client.submit(threading.Lock, pure=False)
    with pytest.raises(SerializationError, match="cannot be sent"):
        future.result(timeout=10)
    # the worker keeps serving
    assert client.submit(inc, 10).result(timeout=10) == 11


def test_retries(client, tmp_path):
    marker = tmp_path / "count"
    marker.write_text("0")

    def flaky() -> str:
        n = int(marker.read_text()) + 1
        marker.write_text(str(n))
        if n < 3:
            raise RuntimeError("not yet")
        return "ok"

    assert client.submit(flaky, retries=2, pure=False).result(timeout=10) == "ok"


def test_scatter_and_use(client):
    data = client.scatter([1, 2, 3])
    assert [f.status for f in data] == ["finished"] * 3
    assert client.submit(sum, data).result(timeout=10) == 6
    one = client.scatter({"k": 41})
    assert client.submit(inc, one["k"]).result(timeout=10) == 42


def test_scatter_broadcast_puts_data_everywhere(client):
    future = client.scatter(99, broadcast=True)
    who = client.who_has([future])
    assert len(who[future.key]) == len(client.scheduler_info()["workers"])


def test_worker_restrictions(client):
    workers = sorted(client.scheduler_info()["workers"])
    fs = client.map(inc, range(10), workers=[workers[0]])
    client.gather(fs)
    holders = client.who_has(fs)
    assert all(holders[f.key] == [workers[0]] for f in fs)


def test_run_calls_every_worker(client):
    result = client.run(lambda: threading.current_thread().name)
    assert set(result) == set(client.scheduler_info()["workers"])


def test_scheduler_info_shape(client):
    info = client.scheduler_info()
    assert info["address"].startswith("tcp://")
    for worker in info["workers"].values():
        assert worker["nthreads"] == 2 and worker["memory_limit"] > 0


def test_cancel(client):
    event_future = client.submit(lambda: threading.Event().wait(5), pure=False)
    client.cancel([event_future])
    with pytest.raises(concurrent.futures.CancelledError):
        event_future.result(timeout=10)


def test_as_completed_and_wait(client):
    fs = client.map(inc, range(20))
    seen = {f.key for f in as_completed(fs)}
    assert seen == {f.key for f in fs}
    done, not_done = wait(fs, timeout=10)
    assert len(done) == 20 and not not_done
    pairs = list(as_completed(client.map(inc, range(3)), with_results=True))
    assert sorted(r for _, r in pairs) == [1, 2, 3]


def test_add_done_callback(client):
    called = threading.Event()
    client.submit(inc, 100).add_done_callback(lambda f: called.set())
    assert called.wait(10)


def test_result_timeout(client):
    slow = client.submit(lambda: threading.Event().wait(2), pure=False)
    with pytest.raises(TimeoutError):
        slow.result(timeout=0.05)


def test_released_futures_are_forgotten(client):
    fs = client.map(inc, range(50), pure=False)
    client.gather(fs)
    assert scheduler_tasks(client) >= 50
    del fs
    gc.collect()
    deadline = 100
    while scheduler_tasks(client) and deadline:
        deadline -= 1
        client.sync(lambda: asyncio.sleep(0.02))  # polling a remote count, bounded
    assert scheduler_tasks(client) == 0
    memory = client.run(lambda: None)
    assert memory  # workers still fine


def test_futures_dropped_one_by_one_are_released_in_ticks_without_waking_the_loop(client):
    """A loop of ``submit(...).result()`` drops a Future per turn: while releases
    keep coming they wait for the loop's next tick (no wake-up each), and every
    key is still forgotten; once they stop, the ticks stop."""
    for i in range(30):
        assert client.submit(inc, i, pure=False).result(timeout=10) == i + 1
        if client._release_ticking:  # dropped while a tick is due: nothing was woken
            assert not client._release_scheduled
    deadline = 100
    while (scheduler_tasks(client) or client._release_ticking) and deadline:
        deadline -= 1
        client.sync(lambda: asyncio.sleep(0.02))  # polling a remote count, bounded
    assert scheduler_tasks(client) == 0 and not client._release_ticking
    assert client.submit(inc, 1).result(timeout=10) == 2  # a new drop starts ticking again


def test_key_shared_between_two_clients(inproc_cluster):
    with Client(inproc_cluster) as a, Client(inproc_cluster) as b:
        fa, fb = a.submit(operator.mul, 6, 7), b.submit(operator.mul, 6, 7)
        assert fa.key == fb.key
        assert fa.result(timeout=10) == fb.result(timeout=10) == 42


def test_future_cannot_be_pickled(client):
    import pickle

    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(client.submit(inc, 1))


def test_async_client(inproc_cluster):
    async def main() -> None:
        async with Client(inproc_cluster, asynchronous=True) as c:
            f = c.submit(inc, 1)
            assert await f == 2
            assert await c.gather(c.map(inc, [1, 2])) == [2, 3]
            results = [r async for _, r in as_completed(c.map(inc, [5, 6]), with_results=True)]
            assert sorted(results) == [6, 7]

    asyncio.run(main())


def test_concurrent_futures_executor(client):
    with client.get_executor() as executor:
        futures = [executor.submit(inc, i) for i in range(10)]
        assert [f.result(timeout=10) for f in futures] == list(range(1, 11))
        assert list(executor.map(inc, range(5), timeout=10)) == [1, 2, 3, 4, 5]
        bad = executor.submit(fail, 1)
        with pytest.raises(ZeroDivisionError):
            bad.result(timeout=10)
    with pytest.raises(RuntimeError, match="shut down"):
        executor.submit(inc, 1)


def test_dask_collections_compute_on_the_cluster(client):
    dask = pytest.importorskip("dask")
    da = pytest.importorskip("dask.array")
    x = da.arange(1000, chunks=100)
    total = (x * 2).sum()
    assert dask.compute(total, scheduler=client.get)[0] == 2 * sum(range(1000))
    bag = pytest.importorskip("dask.bag")
    b = bag.from_sequence(range(20), npartitions=4).map(inc).filter(lambda v: v % 2 == 0)
    assert sorted(b.compute(scheduler=client.get)) == list(range(2, 21, 2))


# ---------------------------------------------------------------- result() from threads
# A synchronous client's result() waits in the calling thread for the report
# itself; these hold that path to the loop path's answers.


def test_result_times_out_with_a_clear_error_and_still_arrives_later(client):
    from shoal import ShoalTimeoutError

    gate = client.submit(lambda: __import__("time").sleep(0.5) or "late", pure=False)
    with pytest.raises(ShoalTimeoutError, match="within timeout=0.01s"):
        gate.result(timeout=0.01)
    assert gate.result(timeout=10) == "late"


def test_many_threads_wait_on_one_future_and_all_get_it(client):
    future = client.submit(lambda: __import__("time").sleep(0.3) or "value", pure=False)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        waiting = [pool.submit(future.result, 10) for _ in range(8)]
        assert [w.result(timeout=15) for w in waiting] == ["value"] * 8


def test_result_from_a_thread_raises_the_task_error_and_fetches_large_values(client):
    with pytest.raises(ZeroDivisionError, match="no good: 3"):
        client.submit(fail, 3).result(timeout=10)
    big = client.submit(lambda n: b"x" * n, 4 * 1024 * 1024)  # not sent along with the report
    out: list = []
    thread = threading.Thread(target=lambda: out.append(big.result(timeout=10)))
    thread.start()
    thread.join(15)
    assert out == [b"x" * 4 * 1024 * 1024]


def test_done_callbacks_and_threaded_waiters_share_one_future(client):
    future = client.submit(lambda: __import__("time").sleep(0.2) or 7, pure=False)
    called = threading.Event()
    future.add_done_callback(lambda f: called.set())
    assert future.result(timeout=10) == 7
    assert called.wait(10)
    assert future.exception(timeout=1) is None
