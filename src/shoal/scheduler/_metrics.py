"""The scheduler's Prometheus metrics, read from live state at scrape time.

Prometheus scrapes a few times a minute while the scheduler changes state
thousands of times a second, so nothing here is updated on the hot path:
:class:`SchedulerCollector` walks the scheduler's state when ``/metrics`` is
asked for.  The few figures that only exist as a stream of events (how long
each finished task ran, how late the event loop wakes up) are gathered by
:class:`SchedulerMonitor`, a small periodic loop beside the scheduler that
tails its task stream and measures loop lag.

Every server has its own :class:`CollectorRegistry` (never the global one),
so several schedulers in one process (tests, ``processes=False``) do not
mix their figures.  Names and units are documented in docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._histogram import Durations
from ._adaptive import adaptive_target
from ._model import WorkerState

if TYPE_CHECKING:
    from ._server import Scheduler

#: Seconds between two wake-ups of the monitor loop (lag probe, stream tail).
PROBE_INTERVAL = 0.1
#: The loop-lag gauge shows the worst lag seen within this many seconds.
LAG_WINDOW = 10.0
TASK_STATES = ("released", "waiting", "queued", "no-worker", "processing", "memory", "erred")
WORKER_STATES = ("running", "paused", "closing", "closed")
DURATION_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0)


class TaskStreamTail:
    """Hands out the entries appended to ``scheduler.task_stream`` since last asked.

    The scheduler only appends to its task stream and, when it grows too
    long, drops a block from the front; the tail remembers the last entry it
    saw (by identity) and finds it again after such a cut.
    """

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._last: dict[str, Any] | None = None
        self._index = -1

    def new_entries(self) -> list[dict[str, Any]]:
        stream = self.scheduler.task_stream
        start = 0 if self._last is None else self._position_after_last(stream)
        new = stream[start:]
        if new:
            self._last = new[-1]
            self._index = len(stream) - 1
        return new

    def _position_after_last(self, stream: list[dict[str, Any]]) -> int:
        index = min(self._index, len(stream) - 1)
        while index >= 0:
            if stream[index] is self._last:
                return index + 1
            index -= 1
        return 0  # the last entry seen was cut off: everything left is new


class PeerTransferTotal:
    """Bytes workers fetched from each other, kept monotonic across worker exits.

    Workers report their own running total in every heartbeat; when a worker
    leaves, its last figure is kept so that the cluster total never falls.
    """

    def __init__(self) -> None:
        self._current: dict[str, int] = {}
        self._departed = 0

    def update(self, workers: dict[str, WorkerState]) -> int:
        now = {a: heartbeat_figure(ws, "bytes_fetched") for a, ws in workers.items()}
        for address, last in self._current.items():
            if address not in now or now[address] < last:
                self._departed += last
        self._current = now
        return self._departed + sum(now.values())


class SchedulerMonitor:
    """The event-driven half of the metrics, and the registry ``/metrics`` serves."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.registry = CollectorRegistry(auto_describe=False)
        self.tail = TaskStreamTail(scheduler)
        self.transfer = PeerTransferTotal()
        self._lags: deque[tuple[float, float]] = deque()
        self.durations = Durations(
            "shoal_scheduler_task_duration_seconds",
            "Run time of finished tasks, by task prefix (the function's name)",
            DURATION_BUCKETS, label="prefix")
        self.registry.register(SchedulerCollector(scheduler, self))

    def start(self) -> None:
        self.scheduler._spawn(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.scheduler.status != "closed":
            before = loop.time()
            await asyncio.sleep(PROBE_INTERVAL)  # a probe period, not a synchronisation
            self.record_lag(max(0.0, loop.time() - before - PROBE_INTERVAL))
            self.refresh()

    def record_lag(self, lag: float) -> None:
        now = time.monotonic()
        self._lags.append((now, lag))
        while self._lags and self._lags[0][0] < now - LAG_WINDOW:
            self._lags.popleft()

    @property
    def lag(self) -> float:
        return max((lag for _, lag in self._lags), default=0.0)

    def refresh(self) -> int:
        """Take in new task-stream entries and heartbeats; the transfer total."""
        by_prefix: dict[str, list[float]] = {}
        for entry in self.tail.new_entries():
            seconds = entry["stop"] - entry["start"]
            by_prefix.setdefault(entry["prefix"], []).append(max(0.0, seconds))
        for prefix, durations in by_prefix.items():
            self.durations.observe_many(durations, prefix)
        return self.transfer.update(self.scheduler.state.workers)

    def exposition(self) -> bytes:
        self.refresh()  # so the duration histograms are as fresh as the live figures
        return generate_latest(self.registry)


def heartbeat_figure(ws: WorkerState, name: str) -> int:
    """A number from the worker's last heartbeat; 0 when absent or not a number."""
    value = ws.metrics.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(value) if math.isfinite(value) else 0


def worker_state(ws: WorkerState) -> str:
    if ws.status == "running" and ws.metrics.get("paused"):
        return "paused"
    return ws.status


def tasks_by_state(scheduler: Scheduler) -> dict[str, int]:
    counts = dict.fromkeys(TASK_STATES, 0)
    for by_state in scheduler.state.prefix_counts.values():  # not a walk over every task
        for name, n in by_state.items():
            counts[name] = counts.get(name, 0) + n
    return counts


class SchedulerCollector(Collector):
    """Yields the ``shoal_scheduler_*`` families from the scheduler's state."""

    def __init__(self, scheduler: Scheduler, monitor: SchedulerMonitor) -> None:
        self.scheduler = scheduler
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        transferred = self.monitor.refresh()
        yield self.monitor.durations.family()
        yield from self._workers()
        yield from self._tasks()
        yield from self._memory()
        yield _counter("shoal_scheduler_transfer_bytes",
                       "Bytes workers fetched from other workers", transferred)
        yield _gauge("shoal_scheduler_clients", "Clients connected",
                     len(self.scheduler.client_streams))
        yield _gauge("shoal_scheduler_event_loop_lag_seconds",
                     f"Worst event-loop lag seen in the last {LAG_WINDOW:g} seconds",
                     self.monitor.lag)
        yield _gauge("shoal_scheduler_adaptive_target_workers",
                     "Workers the scheduler would like to have now",
                     adaptive_target(self.scheduler.state))
        yield _gauge("shoal_scheduler_start_time_seconds",
                     "When the scheduler started (unix seconds)", self.scheduler.started)

    def _workers(self) -> Iterator[Metric]:
        workers = list(self.scheduler.state.workers.values())
        by_state = GaugeMetricFamily("shoal_scheduler_workers", "Workers connected, by state",
                                     labels=["state"])
        counts = dict.fromkeys(WORKER_STATES, 0)
        for ws in workers:
            state = worker_state(ws)
            counts[state] = counts.get(state, 0) + 1
        for state, n in counts.items():
            by_state.add_metric([state], n)
        yield by_state
        yield _gauge("shoal_scheduler_threads", "Worker threads in the cluster",
                     sum(ws.nthreads for ws in workers))

    def _tasks(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("shoal_scheduler_tasks", "Tasks the scheduler knows, by state",
                                   labels=["state"])
        for state, n in tasks_by_state(self.scheduler).items():
            family.add_metric([state], n)
        yield family
        counts = self.scheduler.state.counts
        for name, what in (("finished", "Tasks that finished (including recomputations)"),
                           ("erred", "Tasks that failed"),
                           ("recomputed", "Tasks computed again after their result was lost"),
                           ("lost", "Tasks lost when the worker running them died")):
            yield _counter(f"shoal_scheduler_tasks_{name}", what, counts.get(name, 0))
        estimate = GaugeMetricFamily(
            "shoal_scheduler_task_duration_estimate_seconds",
            "The scheduler's running estimate of a task's run time, by task prefix",
            labels=["prefix"])
        for prefix, seconds in sorted(self.scheduler.state.placement.durations.items()):
            estimate.add_metric([prefix], seconds)
        yield estimate

    def _memory(self) -> Iterator[Metric]:
        workers = list(self.scheduler.state.workers.values())
        family = GaugeMetricFamily(
            "shoal_scheduler_memory_bytes",
            "Memory of all workers: results held (managed), spilled to disk, process RSS",
            labels=["kind"])
        family.add_metric(["managed"], sum(ws.nbytes for ws in workers))
        family.add_metric(["spilled"], sum(heartbeat_figure(ws, "memory_spilled")
                                           for ws in workers))
        family.add_metric(["process"], sum(heartbeat_figure(ws, "memory_process")
                                           for ws in workers))
        yield family
        yield _gauge("shoal_scheduler_memory_limit_bytes", "Sum of the workers' memory limits",
                     sum(ws.memory_limit or 0 for ws in workers))


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
