"""Small results straight from the worker (client/_follow.py, worker/_reports.py):
real processes over real sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal import Client, LocalCluster
from shoal.comm import CommClosedError, RPCServer, connect
from shoal.protocol import serialize

WAIT = 20.0  # seconds any condition below may take to come true


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT}s: {what}")
        time.sleep(0.01)  # polling a condition with a deadline, not a sleep as a sync


def inc(x: int) -> int:
    return x + 1


def _followers(dask_worker=None) -> list[str]:
    return sorted(dask_worker.reports.streams)


def _pushed(dask_worker=None) -> int:
    return dask_worker.reports.pushed


def follow_every_worker(client: Client) -> list[str]:
    """A result from each worker, then wait until the client follows them all."""
    workers = sorted(client.scheduler_info()["workers"])
    for i, worker in enumerate(workers):
        assert client.submit(inc, -i - 1, workers=[worker]).result(timeout=WAIT) == -i
    wait_until(lambda: all(client.id in ids for ids in client.run(_followers).values()),
               "the client follows every worker")
    return workers


def test_a_lone_result_comes_straight_from_the_worker(proc_cluster: LocalCluster):
    with Client(proc_cluster, timeout=20) as client:
        workers = follow_every_worker(client)
        assert sorted(client._followed.tasks) == workers
        before = sum(client.run(_pushed).values())
        assert [client.submit(inc, i).result(timeout=WAIT) for i in range(20)] == list(
            range(1, 21))
        # every one of them was pushed: each worker was idle but for it
        assert sum(client.run(_pushed).values()) - before == 20


def test_a_flood_goes_through_the_scheduler_only(proc_cluster: LocalCluster):
    with Client(proc_cluster, timeout=20) as client:
        follow_every_worker(client)
        before = sum(client.run(_pushed).values())
        assert client.gather(client.map(inc, range(2_000))) == list(range(1, 2_001))
        # a worker with more to run sends its results to the scheduler only (here
        # some 15 of the 2,000 are pushed: each worker's last, and the odd gap)
        assert sum(client.run(_pushed).values()) - before < 2_000 // 4


def test_a_lost_push_is_reported_again_by_the_scheduler(proc_cluster: LocalCluster,
                                                         monkeypatch: pytest.MonkeyPatch):
    with Client(proc_cluster, timeout=20) as client:
        workers = follow_every_worker(client)
        dropped: list[str] = []
        take = client._followed._take

        def drop_first(worker: str, msg):  # the push never arrives; the stream breaks
            if not dropped:
                dropped.append(worker)
                return False
            return take(worker, msg)

        monkeypatch.setattr(client._followed, "_take", drop_first)
        assert client.submit(inc, 41, workers=[workers[0]]).result(timeout=WAIT) == 42
        assert dropped == [workers[0]]
        assert workers[0] in client._followed.not_again  # not followed again
        wait_until(lambda: client.id not in client.run(_followers)[workers[0]],
                   "the worker closed the stream")
        # that worker's later results reach the client through the scheduler
        assert client.submit(inc, 1, workers=[workers[0]]).result(timeout=WAIT) == 2


def _hold_reports(dask_worker=None) -> None:
    """Hold this worker's reports of finished tasks until it sends anything
    else: the widest the gap between a push and its report can be."""
    send = dask_worker._send
    held: list[dict] = dask_worker.__dict__.setdefault("held_reports", [])

    def holding(msg: dict) -> None:
        if msg.get("op") == "task-finished":
            held.append(msg)
            return
        while held:
            send(held.pop(0))
        send(msg)

    dask_worker._send = holding


def _send_held_reports(dask_worker=None) -> int:
    del dask_worker._send  # the method again
    held = dask_worker.__dict__.pop("held_reports")
    for msg in held:
        dask_worker._send(msg)
    return len(held)


def test_the_scheduler_answers_knowing_every_result_pushed_before(proc_cluster: LocalCluster):
    with Client(proc_cluster, timeout=20) as client:
        workers = follow_every_worker(client)
        client.run(_hold_reports)
        try:
            start = time.time()
            futures = [client.submit(inc, 100 + i, workers=[w]) for i, w in enumerate(workers)]
            assert [f.result(timeout=WAIT) for f in futures] == [101, 102]
            assert sorted(client._followed.pushed) == workers  # pushed; the reports held
            # the scheduler has them at once: it caught up with those workers first
            assert client.who_has(futures) == {f.key: [w] for f, w in zip(futures, workers)}
            assert client._followed.pushed == {}
            stream = client.get_task_stream(start=start)
            assert sorted(e["key"] for e in stream) == sorted(f.key for f in futures)
        finally:
            held = client.run(_send_held_reports)
        assert held == {w: 0 for w in workers}  # the catch-up had sent them
        assert client.submit(inc, 1).result(timeout=WAIT) == 2


def test_a_client_not_direct_to_workers_follows_none(proc_cluster: LocalCluster):
    with Client(proc_cluster, timeout=20, direct_to_workers=False) as client:
        assert client.gather([client.submit(inc, i) for i in range(10)]) == list(range(1, 11))
        assert client._followed.tasks == {}
        assert all(client.id not in ids for ids in client.run(_followers).values())


def test_a_report_stream_refuses_messages_and_a_second_stream(proc_cluster: LocalCluster):
    with Client(proc_cluster, timeout=20) as client:
        worker = follow_every_worker(client)[0]

        async def attack() -> tuple[object, object]:
            twin = await connect(worker)  # the same client id again
            await twin.write({"op": "client-reports", "client": client.id})
            refused = await twin.read()
            twin.abort()
            other = await connect(worker)
            await other.write({"op": "client-reports", "client": "intruder"})
            assert await other.read() == {"status": "ok"}
            await other.write({"op": "get_data", "keys": ["x"]})  # a stream takes none
            answer = await other.read()
            other.abort()
            return refused, answer

        refused, answer = asyncio.run(asyncio.wait_for(attack(), WAIT))
        assert refused["status"] == "error" and "follows this worker already" in refused["message"]
        assert answer == [{"op": "error", "message": "a report stream takes no messages"}]
        # the worker goes on serving everyone, the client among them
        assert client.submit(inc, 1, workers=[worker]).result(timeout=WAIT) == 2
        assert client.id in client.run(_followers)[worker]


_messages = st.one_of(
    st.none(), st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.sampled_from(["op", "key", "nbytes", "value", "message", "x"]),
                    st.one_of(st.none(), st.integers(-5, 2**70), st.text(max_size=8),
                              st.binary(max_size=8), st.sampled_from(["key-in-memory",
                                                                      "error", "followed-key"])),
                    max_size=5),
)


@settings(deadline=None, database=None, derandomize=True, max_examples=200,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msg=_messages)
def test_whatever_a_worker_pushes_is_checked(client: Client, msg):
    future = client.submit(inc, 0, key="followed-key")
    future.result(timeout=WAIT)
    state = future._state
    status, outcome = state.status, state.outcome
    keep = client._followed._take("tcp://127.0.0.1:1", msg)
    assert keep in (True, False)
    assert (state.status, state.outcome) == (status, outcome)  # a final state stays


def test_a_well_formed_push_finishes_only_a_waiting_future(client: Client):
    ser = serialize(7)
    pending = client._register_future("never-submitted", None)
    assert client._followed._take("tcp://127.0.0.1:1",
                                  {"op": "key-in-memory", "key": "never-submitted",
                                   "nbytes": 8, "value": ser}) is True
    assert pending.status == "finished" and pending.workers == ("tcp://127.0.0.1:1",)
    assert client._followed._take("tcp://127.0.0.1:1", {"op": "error", "message": "no"}) is False


def test_bytes_that_make_no_message_end_the_stream(client: Client, caplog):
    async def liar(comm, client: str) -> None:  # says yes, then sends garbage
        await comm.write({"status": "ok"})
        comm.transport.write(b"\xff" * 64)
        try:
            await comm.read()
        except CommClosedError:
            pass

    async def start() -> tuple[RPCServer, str]:
        server = RPCServer({}, {"client-reports": liar})
        address = await server.listen("tcp://127.0.0.1:0")
        client._followed.heard_of(address)
        return server, address

    with caplog.at_level("WARNING", logger="shoal.client._follow"):
        server, address = client.sync(start)
        try:
            wait_until(lambda: address in client._followed.not_again, "the stream ended")
        finally:
            async def stop() -> None:
                server.stop()

            client.sync(stop)
    assert "sent what is no report" in caplog.text
    assert client.submit(inc, 1).result(timeout=WAIT) == 2
