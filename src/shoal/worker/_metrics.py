"""The worker's Prometheus metrics, read from live state at scrape time.

:class:`WorkerCollector` reads the worker's task states, data store and
transfer counters when ``/metrics`` is asked for; nothing is updated on the
hot path.  The only event-driven figure is how long tasks run, which is
taken from the outcomes the executor hands back: :class:`ExecutionTimes`
sits between the executor and the worker, observes each outcome's start and
stop, and passes the outcomes on unchanged.

Each worker has its own :class:`CollectorRegistry` (never the global one),
so several workers in one process keep their figures apart.  Names and units
are documented in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .._histogram import Durations
from ..comm import _inplace
from ..comm._shared import channel
from ._execute import Outcome
from ._memory import process_memory

if TYPE_CHECKING:
    from ._server import Worker

TASK_STATES = ("waiting", "ready", "executing", "memory", "error", "fetch", "flight",
               "cancelled")
EXECUTION_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0)


class ExecutionTimes:
    """Wraps the executor's completion callback to time every task it ran."""

    def __init__(self, histogram: Durations) -> None:
        self.histogram = histogram

    def attach(self, worker: Worker) -> None:
        executor = getattr(worker, "executor", None)
        if executor is None:
            return
        forward: Callable[[list[Outcome]], None] = executor.on_done

        def on_done(outcomes: list[Outcome]) -> None:
            self.histogram.observe_many(
                max(0.0, o.stop - o.start) for o in outcomes if o.stop)
            forward(outcomes)

        executor.on_done = on_done


class WorkerMetrics:
    """The registry ``/metrics`` serves for one worker."""

    def __init__(self, worker: Worker) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.execution = Durations(
            "shoal_worker_task_execution_seconds",
            "Wall-clock seconds each task's function ran on this worker",
            EXECUTION_BUCKETS)
        self.registry.register(self.execution)
        ExecutionTimes(self.execution).attach(worker)
        self.registry.register(WorkerCollector(worker))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class WorkerCollector(Collector):
    """Yields the ``shoal_worker_*`` families from one worker's live state."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        worker = self.worker
        yield self._tasks()
        counts = worker.state.counts
        for name, key, what in (
            ("shoal_worker_tasks_executed", "executed", "Tasks this worker ran successfully"),
            ("shoal_worker_tasks_failed", "failed", "Tasks that raised on this worker"),
            ("shoal_worker_keys_fetched", "fetched", "Results fetched from other workers"),
        ):
            yield CounterMetricFamily(name, what, value=counts.get(key, 0))
        yield GaugeMetricFamily("shoal_worker_threads", "Threads that run tasks",
                                value=worker.nthreads)
        yield self._memory()
        yield GaugeMetricFamily("shoal_worker_memory_limit_bytes",
                                "Memory this worker may use (0: no limit)",
                                value=worker.memory_limit or 0)
        yield CounterMetricFamily("shoal_worker_fetched_bytes",
                                  "Serialized bytes fetched from other workers",
                                  value=worker.bytes_fetched)
        yield CounterMetricFamily("shoal_worker_served_bytes",
                                  "Serialized bytes sent to other workers and clients",
                                  value=worker.bytes_served)
        yield CounterMetricFamily("shoal_worker_results_pushed",
                                  "Small results sent straight to the clients that wait for "
                                  "them, ahead of the scheduler's report",
                                  value=worker.reports.pushed)
        yield GaugeMetricFamily("shoal_worker_client_streams",
                                "Clients that follow this worker (their results come "
                                "straight from it)", value=len(worker.reports.streams))
        yield from _shared_memory()
        yield GaugeMetricFamily("shoal_worker_paused",
                                "1 while the worker runs no new tasks for lack of memory",
                                value=1 if worker.state.paused else 0)

    def _tasks(self) -> GaugeMetricFamily:
        counts = dict.fromkeys(TASK_STATES, 0)
        for ts in self.worker.state.tasks.values():
            counts[ts.state] = counts.get(ts.state, 0) + 1
        family = GaugeMetricFamily("shoal_worker_tasks", "Tasks on this worker, by state",
                                   labels=["state"])
        for state, n in counts.items():
            family.add_metric([state], n)
        return family

    def _memory(self) -> GaugeMetricFamily:
        data = self.worker.data
        family = GaugeMetricFamily(
            "shoal_worker_memory_bytes",
            "Results held in memory (managed), spilled to disk, and the process RSS",
            labels=["kind"])
        family.add_metric(["managed"], data.memory_bytes)
        family.add_metric(["spilled"], data.spilled_bytes)
        family.add_metric(["process"], process_memory())
        return family


def _shared_memory() -> Iterator[Metric]:
    """What this process passed to same-host peers through shared memory, and put there."""
    own = channel()
    family = CounterMetricFamily(
        "shoal_worker_shared_frames",
        "Large frames passed to processes of this host through shared memory: copied "
        "into it when sent, or passed in place (no copy)", labels=["how"])
    family.add_metric(["copied"], own.sent - own.in_place if own is not None else 0)
    family.add_metric(["in_place"], own.in_place if own is not None else 0)
    yield family
    yield CounterMetricFamily("shoal_worker_put_bytes",
                              "Bytes of results put into shared memory when their task finished",
                              value=_inplace.put_bytes)
