"""The smaller dask.distributed behaviours, on a multi-process cluster:
Future.cancelled/release/traceback/_repr_html_, as_completed.batches/update and
raise_errors=False, Client.current, client.futures, executor cancellation,
and timeout messages that name the timeout."""

from __future__ import annotations

import concurrent.futures
import traceback
import types

import pytest

from shoal import Client, as_completed, wait
from tests.polling import wait_for

NEVER = {"resources": {"no-such-resource": 1}}  # no worker can run these


@pytest.fixture
def client(proc_client: Client) -> Client:
    return proc_client


def inc(x: int) -> int:
    return x + 1


def divide_by_zero(x: int) -> float:
    return x / 0


def test_cancelled_and_release(client):
    stuck = client.submit(inc, 1, **NEVER)
    assert not stuck.cancelled()
    stuck.cancel()
    wait_for(stuck.cancelled, timeout=10, what="the cancellation")
    first = client.submit(inc, 10)
    second = client.submit(inc, 10)  # the same key, held twice
    assert first.result() == 11
    first.release()
    first.release()  # twice is still once
    del first  # and collecting it afterwards is not a second release
    assert second.result() == 11
    assert client.who_has([second])[second.key]
    second.release()
    wait_for(lambda: client.scheduler_info()["tasks"] == 0, timeout=10,
             what="released results to be forgotten")


def test_traceback_is_a_traceback_object_naming_the_remote_frames(client):
    future = client.submit(divide_by_zero, 1)
    wait([future])
    tb = future.traceback()
    assert isinstance(tb, types.TracebackType)
    text = "".join(traceback.format_tb(tb))
    assert "divide_by_zero" in text and "return x / 0" in text


def test_as_completed_batches_update_and_errors_as_values(client):
    seq = as_completed([client.submit(inc, i) for i in range(3)])
    seq.update([client.submit(inc, i) for i in range(3, 6)])
    seen = [f.result() for batch in seq.batches() for f in batch]
    assert sorted(seen) == [1, 2, 3, 4, 5, 6]
    bad = client.submit(divide_by_zero, 2)
    good = client.submit(inc, 7)
    pairs = dict(as_completed([bad, good], with_results=True, raise_errors=False))
    assert pairs[good] == 8 and isinstance(pairs[bad], ZeroDivisionError)


def test_current_client_and_its_futures(client):
    assert Client.current() is client
    future = client.submit(inc, 41)
    assert future.key in client.futures
    assert future.result() == 42
    page = future._repr_html_()
    assert future.key in page and "finished" in page
    assert any(worker in page for worker in client.scheduler_info()["workers"])
    failed = client.submit(divide_by_zero, 3)
    wait([failed])
    assert "ZeroDivisionError" in failed._repr_html_()


def test_executor_futures_can_be_cancelled_while_queued(client):
    executor = client.get_executor(**NEVER)
    queued = executor.submit(inc, 1)
    assert queued.cancel() and queued.cancelled()
    others = [executor.submit(inc, i) for i in range(3)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in others)
    with pytest.raises(concurrent.futures.CancelledError):
        others[0].result()
    wait_for(lambda: client.scheduler_info()["tasks"] == 0, timeout=10,
             what="the cancelled tasks to leave the scheduler")


def test_timeouts_name_the_timeout(client):
    stuck = client.submit(inc, 2, **NEVER)
    with pytest.raises(TimeoutError, match=r"no result for .* within timeout=0\.2s"):
        stuck.result(timeout=0.2)
    with pytest.raises(TimeoutError,
                       match=r"1 of 1 futures not all completed within timeout=0\.2s"):
        wait([stuck], timeout=0.2)
    with pytest.raises(TimeoutError, match=r"0\.2s"):
        stuck.exception(timeout=0.2)
    stuck.cancel()


class Counter:
    def __init__(self) -> None:
        self.n = 0


def test_actor_keyword_is_never_passed_to_the_function(client):
    from shoal import Actor

    counter = client.submit(Counter, actor=True).result(timeout=10)
    assert isinstance(counter, Actor) and counter.n == 0  # in one process, too
    assert [type(c) for c in client.gather(client.map(Counter, [], actor=True))] == []
    assert isinstance(client.submit(Counter, actor=False).result(), Counter)


def test_compatible_executor_points_to_get_executor():
    from shoal import CompatibleExecutor

    with pytest.raises(RuntimeError, match=r"Client\.get_executor"):
        CompatibleExecutor()
