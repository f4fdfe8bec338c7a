"""The pieces behind metrics and dashboard that need no cluster."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from shoal.scheduler import Scheduler
from shoal.scheduler._dashboard import (
    BUSY_WINDOW,
    MAX_STREAM_ENTRIES,
    StreamJSON,
    busy_fractions,
    entry_json,
    recent_stream,
)
from shoal.scheduler._metrics import PeerTransferTotal, TaskStreamTail, heartbeat_figure
from shoal.scheduler._model import WorkerState

from .observability_support import sample, scrape


def entry(i: int) -> dict:
    return {"key": f"inc-{i:032x}", "prefix": "inc", "worker": "tcp://w:1", "start": float(i),
            "stop": i + 0.5}


def test_stream_tail_hands_out_each_entry_once_across_cuts() -> None:
    scheduler = Scheduler()
    tail = TaskStreamTail(scheduler)
    assert tail.new_entries() == []
    scheduler.task_stream.extend(entry(i) for i in range(10))
    assert [e["start"] for e in tail.new_entries()] == list(range(10))
    assert tail.new_entries() == []
    scheduler.task_stream.extend(entry(i) for i in range(10, 15))
    del scheduler.task_stream[:8]  # the scheduler drops old entries from the front
    scheduler.task_stream.extend(entry(i) for i in range(15, 17))
    assert [e["start"] for e in tail.new_entries()] == list(range(10, 17))
    del scheduler.task_stream[:]  # even the last entry seen was dropped
    scheduler.task_stream.extend(entry(i) for i in range(17, 19))
    assert [e["start"] for e in tail.new_entries()] == [17, 18]


def test_transfer_total_never_falls_when_workers_leave_or_restart() -> None:
    total = PeerTransferTotal()
    a, b = WorkerState("tcp://a:1", "a", 1, 0), WorkerState("tcp://b:1", "b", 1, 0)
    a.metrics, b.metrics = {"bytes_fetched": 100}, {"bytes_fetched": 50}
    assert total.update({"tcp://a:1": a, "tcp://b:1": b}) == 150
    a.metrics = {"bytes_fetched": 300}
    assert total.update({"tcp://a:1": a}) == 350  # b left: its 50 are kept
    a.metrics = {"bytes_fetched": 10}  # a new process at the same address
    assert total.update({"tcp://a:1": a}) == 360


def test_heartbeat_figures_that_are_not_numbers_count_as_zero() -> None:
    ws = WorkerState("tcp://a:1", "a", 1, 0)
    ws.metrics = {"x": "12", "y": True, "z": float("nan"), "ok": 7.9}
    assert [heartbeat_figure(ws, k) for k in ("x", "y", "z", "ok", "missing")] == [0, 0, 0, 7, 0]


def block_the_calling_loop(seconds: float) -> None:
    """The very thing measured: a loop that runs this can do nothing else meanwhile."""
    time.sleep(seconds)


def test_event_loop_lag_shows_a_blocked_loop() -> None:
    async def main() -> float:
        scheduler = await Scheduler(http_port=0).start()
        loop = asyncio.get_running_loop()
        try:
            url = f"{scheduler.http_address}/metrics"
            before = await loop.run_in_executor(None, scrape, url)
            assert sample(before, "shoal_scheduler_event_loop_lag_seconds") < 0.25
            block_the_calling_loop(0.4)
            deadline = time.monotonic() + 5
            while True:
                after = await loop.run_in_executor(None, scrape, url)
                lag = sample(after, "shoal_scheduler_event_loop_lag_seconds")
                if lag >= 0.3 or time.monotonic() > deadline:
                    return lag
        finally:
            await scheduler.close()

    assert asyncio.run(main()) >= 0.3


def test_dashboard_stream_since_and_limit() -> None:
    stream = [entry(i) for i in range(3000)]
    assert [e["start"] for e in recent_stream(stream, since=2997.0)] == [2997.0, 2998.0, 2999.0]
    newest = recent_stream(stream, since=0.0)
    assert len(newest) == MAX_STREAM_ENTRIES and newest[-1]["start"] == 2999.0
    assert newest[0]["prefix"] == "inc"
    assert recent_stream(stream, since=1e12) == []


def test_the_dashboards_stream_json_encodes_each_entry_once_and_stays_exact() -> None:
    encoder = StreamJSON()
    stream = [entry(i) for i in range(3000)]
    first = encoder.encode(recent_stream(stream, since=0.0))
    assert json.loads(first) == stream[-MAX_STREAM_ENTRIES:]
    cached = len(encoder._texts)
    assert encoder.encode(recent_stream(stream, since=0.0)) == first
    assert len(encoder._texts) == cached  # nothing encoded again
    del stream[:1000]  # the scheduler cuts old entries; ids may be reused by new ones
    stream.extend(entry(i) for i in range(3000, 9000))
    for since in (0.0, 8990.0, 1e12):
        assert json.loads(encoder.encode(recent_stream(stream, since))) == \
            recent_stream(stream, since)
    assert len(encoder._texts) <= 4 * MAX_STREAM_ENTRIES + MAX_STREAM_ENTRIES


@pytest.mark.parametrize("fields", [
    {},
    {"key": "(\"x\", 3) \u00e9\u4e2d\n\\", "worker": "tls://[::1]:8786"},  # escaped as json does
    {"start": 0.0, "stop": 1e-07},
    {"start": 1.7e9 + 1 / 3, "stop": 1.7e9 + 2 / 3},
    {"start": 0, "stop": 5},  # ints from a worker: json.dumps writes them
    {"stop": float("nan")},
    {"start": float("-inf")},
    {"key": 7},
    {"extra": True},
])
def test_a_stream_entry_is_written_exactly_as_json_dumps_writes_it(fields: dict) -> None:
    item = entry(12) | fields
    assert entry_json(item) == json.dumps(item)


def test_busy_fraction_is_thread_time_in_tasks() -> None:
    scheduler = Scheduler()
    now = 1000.0
    two_threads = WorkerState("tcp://w:1", "w", 2, 0)
    idle = WorkerState("tcp://i:1", "i", 1, 0)
    scheduler.state.workers.update({"tcp://w:1": two_threads, "tcp://i:1": idle})
    # one thread busy for the whole window, the other for half of it
    scheduler.busy.record("tcp://w:1", now - 10, now)
    scheduler.busy.record("tcp://w:1", now - BUSY_WINDOW / 2, now)
    busy = busy_fractions(scheduler, now)
    assert busy == {"tcp://w:1": pytest.approx(0.75), "tcp://i:1": 0.0}
    # many short tasks, far more than the task stream keeps: all counted
    for i in range(20_000):  # back to back on the idle worker for the last second
        scheduler.busy.record("tcp://i:1", now - 1 + i * 5e-5, now - 1 + (i + 1) * 5e-5)
    assert busy_fractions(scheduler, now)["tcp://i:1"] == pytest.approx(0.5, abs=0.01)
    assert busy_fractions(scheduler, now + BUSY_WINDOW + 1)["tcp://i:1"] == 0.0  # all older
    assert len(scheduler.busy._slots["tcp://i:1"]) <= 2 * round(BUSY_WINDOW / 0.1) + 1
    scheduler.busy.forget("tcp://i:1")
    assert busy_fractions(scheduler, now)["tcp://i:1"] == 0.0
