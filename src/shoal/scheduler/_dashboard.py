"""What the live dashboard shows, as one JSON document per poll.

The dashboard page (``static/dashboard.html``, served at ``/``) is plain
JavaScript with no assets from the internet: it asks ``/api/v1/dashboard``
about twice a second and redraws.  This module builds that answer from the
scheduler's live state: the workers (memory, threads, how busy), the task
stream since the page's last poll (what ran where and when), progress per
task prefix, and tasks by state.

How busy a worker is comes from its heartbeat's ``cpu`` figure when it
sends one, else from the tasks it finished: the share of its threads' time
spent running tasks over the last :data:`BUSY_WINDOW` seconds, summed as
tasks finish (:class:`BusyMeter`), so an answer costs the same whatever the
rate of tasks (the task stream, 10,000 entries at most, covers well under
the window at 16,000 tasks a second).
"""

from __future__ import annotations

import json
import math
import os
import time
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

from ._metrics import TASK_STATES, SchedulerMonitor, heartbeat_figure, worker_state
from ._model import WorkerState

if TYPE_CHECKING:
    from ._server import Scheduler

STATIC_DIRECTORY = os.path.join(os.path.dirname(__file__), "static")
#: Seconds of task stream looked at to tell how busy a worker's threads are.
BUSY_WINDOW = 2.0
#: Length of the slots of time busy seconds are summed in (see BusyMeter).
BUSY_BUCKET = 0.1
_BUSY_SLOTS = round(BUSY_WINDOW / BUSY_BUCKET)
#: Most task-stream entries sent in one answer (the newest are kept).
MAX_STREAM_ENTRIES = 2_000
#: Task prefixes listed at most (the ones with the most tasks first).
MAX_PREFIXES = 50
PROGRESS_STATES = ("memory", "erred", "processing", "queued", "no-worker", "waiting",
                   "released")


def snapshot(scheduler: Scheduler, monitor: SchedulerMonitor, since: float) -> dict[str, Any]:
    """Everything one redraw of the dashboard needs."""
    now = time.time()
    monitor.refresh()
    stream = recent_stream(scheduler.task_stream, since)
    busy = busy_fractions(scheduler, now)
    state = scheduler.state
    by_prefix = counts_by_prefix(scheduler)
    tasks = dict.fromkeys(TASK_STATES, 0)
    for counts in by_prefix.values():
        for name, n in counts.items():
            tasks[name] = tasks.get(name, 0) + n
    return {
        "now": now,
        "scheduler": {
            "address": scheduler.address,
            "status": scheduler.status,
            "started": scheduler.started,
            "clients": len(scheduler.client_streams),
            "event_loop_lag": monitor.lag,
        },
        "workers": [worker_entry(ws, busy.get(ws.address, 0.0))
                    for ws in sorted(state.workers.values(), key=lambda w: w.name)],
        "tasks": tasks,
        "counts": dict(state.counts),
        "progress": progress(scheduler, monitor, by_prefix),
        "task_stream": stream,
    }


def worker_entry(ws: WorkerState, busy: float) -> dict[str, Any]:
    cpu = ws.metrics.get("cpu")
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not math.isfinite(cpu):
        cpu = None
    return {
        "address": ws.address,
        "name": ws.name,
        "status": worker_state(ws),
        "nthreads": ws.nthreads,
        "memory_limit": ws.memory_limit,
        "memory": ws.nbytes,
        "memory_process": heartbeat_figure(ws, "memory_process"),
        "memory_spilled": heartbeat_figure(ws, "memory_spilled"),
        "executing": heartbeat_figure(ws, "executing"),
        "processing": len(ws.processing),
        "in_memory": len(ws.has_what),
        "cpu": float(cpu) if cpu is not None else None,
        "busy": busy,
        "http_address": ws.http_address,
        "last_seen": ws.last_seen,
    }


def recent_stream(task_stream: list[dict[str, Any]], since: float) -> list[dict[str, Any]]:
    """Entries that finished after ``since``, newest :data:`MAX_STREAM_ENTRIES`
    (the scheduler's own entries, which carry their prefix: not to be changed)."""
    first = len(task_stream)
    oldest = max(0, first - MAX_STREAM_ENTRIES)
    while first > oldest and task_stream[first - 1]["stop"] > since:
        first -= 1
    return task_stream[first:]


class StreamJSON:
    """The JSON text of task stream entries, each entry encoded once.

    The dashboard asks for the newest entries twice a second, and a page or
    a probe asking with an old ``since`` gets the same 2,000 entries every
    time: encoding them again (half the cost of an answer) is what this
    saves.  Texts are kept for entries of recent answers only.
    """

    def __init__(self) -> None:
        self._texts: dict[int, tuple[dict[str, Any], str]] = {}

    def encode(self, entries: list[dict[str, Any]]) -> str:
        texts = self._texts
        out: list[str] = []
        for entry in entries:
            known = texts.get(id(entry))
            if known is None or known[0] is not entry:
                known = texts[id(entry)] = (entry, entry_json(entry))
            out.append(known[1])
        if len(texts) > 4 * MAX_STREAM_ENTRIES:  # keep what this answer sent
            self._texts = {id(entry): texts[id(entry)] for entry in entries}
        return "[" + ", ".join(out) + "]"


def entry_json(entry: dict[str, Any]) -> str:
    """One task-stream entry as JSON, the text ``json.dumps`` writes, in under half its time.

    Every finished task is encoded once for a dashboard that polls, so this is
    per-task work: the usual entry (three strings, two finite floats, as
    ``Scheduler._record_task`` makes it) is formatted directly, anything else
    goes to ``json.dumps``.
    """
    key, prefix, worker = entry["key"], entry["prefix"], entry["worker"]
    start, stop = entry["start"], entry["stop"]
    if (len(entry) != 5 or type(key) is not str or type(prefix) is not str
            or type(worker) is not str or type(start) is not float or type(stop) is not float
            or not math.isfinite(start) or not math.isfinite(stop)):
        return json.dumps(entry)
    text = encode_basestring_ascii
    return (f'{{"key": {text(key)}, "prefix": {text(prefix)}, "worker": {text(worker)}, '
            f'"start": {start!r}, "stop": {stop!r}}}')


def snapshot_json(scheduler: Scheduler, monitor: SchedulerMonitor, since: float,
                  encoder: StreamJSON) -> str:
    """:func:`snapshot` as JSON text, its task stream encoded by ``encoder``."""
    answer = snapshot(scheduler, monitor, since)
    stream = answer.pop("task_stream")
    text = json.dumps(answer)
    return f'{text[:-1]}, "task_stream": {encoder.encode(stream)}}}'


class BusyMeter:
    """Seconds each worker's threads spent in tasks, in :data:`BUSY_BUCKET` slots
    of time, over the last :data:`BUSY_WINDOW` (and a slot) only.

    A task's time is put in the slots its run overlaps (one, for most), when it
    is reported finished; what is older than the window is dropped as new
    slots start.  A slot only partly inside the window counts whole: the
    figure is exact to one slot's length.
    """

    def __init__(self) -> None:
        self._slots: dict[str, dict[int, float]] = {}

    def record(self, worker: str, start: float, stop: float) -> None:
        if stop <= start:
            return
        slots = self._slots.get(worker)
        if slots is None:
            slots = self._slots[worker] = {}
        last = int(stop / BUSY_BUCKET)
        first = max(int(start / BUSY_BUCKET), last - _BUSY_SLOTS)
        if first == last:  # the usual case: a short task
            slots[last] = slots.get(last, 0.0) + (stop - start)
        else:
            for slot in range(first, last + 1):
                overlap = min(stop, (slot + 1) * BUSY_BUCKET) - max(start, slot * BUSY_BUCKET)
                if overlap > 0:
                    slots[slot] = slots.get(slot, 0.0) + overlap
        if len(slots) > 2 * _BUSY_SLOTS:
            oldest = last - _BUSY_SLOTS
            for slot in [s for s in slots if s < oldest]:
                del slots[slot]

    def forget(self, worker: str) -> None:
        self._slots.pop(worker, None)

    def seconds(self, worker: str, now: float) -> float:
        """Thread-seconds in tasks over the window that ends at ``now``."""
        slots = self._slots.get(worker)
        if not slots:
            return 0.0
        newest = int(now / BUSY_BUCKET)
        oldest = int((now - BUSY_WINDOW) / BUSY_BUCKET)
        return sum(seconds for slot, seconds in slots.items() if oldest <= slot <= newest)


def busy_fractions(scheduler: Scheduler, now: float) -> dict[str, float]:
    """Share of each worker's thread time spent in tasks over the last window."""
    meter = scheduler.busy
    return {address: min(1.0, meter.seconds(address, now) / (BUSY_WINDOW * max(ws.nthreads, 1)))
            for address, ws in scheduler.state.workers.items()}


def counts_by_prefix(scheduler: Scheduler) -> dict[str, dict[str, int]]:
    """Per task prefix, how many tasks are in each state (kept by the state machine)."""
    return {prefix: {name: counts.get(name, 0) for name in PROGRESS_STATES}
            for prefix, counts in scheduler.state.prefix_counts.items()}


def progress(scheduler: Scheduler, monitor: SchedulerMonitor,
             by_prefix: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """The prefixes with the most tasks: counts by state, and how many ever finished."""
    ranked = sorted(by_prefix.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    return [{"prefix": prefix, "total": sum(counts.values()), "states": counts,
             "finished": monitor.durations.count(prefix),
             "duration": scheduler.state.placement.durations.get(prefix)}
            for prefix, counts in ranked[:MAX_PREFIXES]]


def page() -> bytes:
    """The dashboard's HTML (read on each request: it is small, and edits show at once)."""
    with open(os.path.join(STATIC_DIRECTORY, "dashboard.html"), "rb") as f:
        return f.read()
