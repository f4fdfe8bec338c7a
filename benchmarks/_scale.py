"""A million tiny tasks submitted at once: time, memory per task, and a live HTTP side.

The cluster is started from the command line (a scheduler process with its
HTTP server, two workers), so the scheduler's memory is its own.  For each
size (10,000, 100,000, then 1,000,000 tasks) the client ``map``s that many
tiny tasks in one call and waits for all of them while holding every
future; meanwhile a separate probe process asks the scheduler's ``/health``
and ``/api/v1/dashboard`` every ``PROBE_INTERVAL`` seconds (answer times)
and samples the scheduler's and the client's resident memory (peaks).  The
figures per size: wall seconds, CPU microseconds per task of each process,
and the RSS increase per held task of the scheduler and of the client.
Cost per task should stay flat from the smallest size to the largest.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
import urllib.request
from typing import Any

import _systems
import _tasks
import psutil
from _workloads import CpuMeter, _settled_rss, _warm_up

PROBE_INTERVAL = 0.1
PROBE_TIMEOUT = 5.0
DRAIN_SECONDS = 120.0
SIZES = (10_000, 100_000, 1_000_000)
PROBE_PATHS = ("/health", "/api/v1/dashboard")


def _probe(http: str, pids: list[int], stop: Any, results: Any) -> None:
    """In a separate process: time the HTTP answers, sample the RSS peaks."""
    latencies: dict[str, list[float]] = {p: [] for p in PROBE_PATHS}
    failures: dict[str, int] = {p: 0 for p in PROBE_PATHS}
    procs = {pid: psutil.Process(pid) for pid in pids}
    peaks = {pid: 0 for pid in pids}
    while not stop.is_set():
        for path in PROBE_PATHS:
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(http + path, timeout=PROBE_TIMEOUT) as answer:
                    answer.read()
                latencies[path].append(time.perf_counter() - start)
            except OSError:
                failures[path] += 1
        for pid, proc in procs.items():
            try:
                peaks[pid] = max(peaks[pid], proc.memory_info().rss)
            except psutil.Error:
                pass
        stop.wait(PROBE_INTERVAL)
    results.put({"latencies": latencies, "failures": failures, "peaks": peaks})


def _latency_figures(prefix: str, samples: list[float], failures: int) -> dict[str, Any]:
    if not samples:
        return {f"{prefix}_failures": failures}
    samples = sorted(samples)
    p99 = samples[min(len(samples) - 1, round(0.99 * len(samples)) - 1)]
    return {f"{prefix}_median_ms": statistics.median(samples) * 1e3, f"{prefix}_p99_ms": p99 * 1e3,
            f"{prefix}_max_ms": samples[-1] * 1e3, f"{prefix}_samples": len(samples),
            f"{prefix}_failures": failures}


def _drained(client: Any, deadline: float) -> None:
    """Wait (bounded) until the scheduler has forgotten the released tasks."""
    while client.scheduler_info()["tasks"] > 0 and time.monotonic() < deadline:
        time.sleep(0.2)


def _one_size(client: Any, scheduler_pid: int, http: str, n: int, offset: int) -> dict[str, Any]:
    me = psutil.Process()
    scheduler = psutil.Process(scheduler_pid)
    sched_before, client_before = _settled_rss(scheduler), me.memory_info().rss
    ctx = multiprocessing.get_context("spawn")
    stop, results = ctx.Event(), ctx.Queue()
    probe = ctx.Process(target=_probe, args=(http, [scheduler_pid, os.getpid()], stop, results),
                        daemon=True)
    probe.start()
    with CpuMeter(client) as cpu:
        start = time.perf_counter()
        futures = client.map(_tasks.inc, range(offset, offset + n))
        submitted = time.perf_counter() - start
        _systems.load("shoal").wait(futures)
        elapsed = time.perf_counter() - start
    sched_after, client_after = _settled_rss(scheduler), me.memory_info().rss
    stop.set()
    probe_out = results.get(timeout=60)
    probe.join(30)
    assert futures[-1].result() == offset + n
    del futures
    tag = f"million_{n}"
    out: dict[str, Any] = {
        f"{tag}_seconds": elapsed, f"{tag}_submit_seconds": submitted,
        f"{tag}_tasks_per_s": n / elapsed,
        f"{tag}_scheduler_bytes_per_task": (sched_after - sched_before) / n,
        f"{tag}_client_bytes_per_task": (client_after - client_before) / n,
        f"{tag}_scheduler_peak_MB": probe_out["peaks"][scheduler_pid] / 1e6,
        f"{tag}_client_peak_MB": probe_out["peaks"][os.getpid()] / 1e6,
    }
    per_role = cpu.per_task(tag, n)
    out.update(per_role)
    out[f"{tag}_cpu_us_per_task_all"] = sum(per_role.values())
    for path, key in zip(PROBE_PATHS, ("health", "dashboard"), strict=True):
        out.update(_latency_figures(f"{tag}_{key}", probe_out["latencies"][path],
                                    probe_out["failures"][path]))
    return out


def million(system: _systems.System, sizes: dict[str, int]) -> dict[str, Any]:
    """The scale workload: every size in turn on one CLI cluster (shoal only)."""
    if system.name != "shoal":
        raise NotImplementedError("the million-task workload runs on shoal only")
    largest = sizes["million_n"]
    out: dict[str, Any] = {}
    with _systems.cli_cluster(system) as (client, scheduler_pid):
        http = client.scheduler_info()["http_address"]
        for offset in (10**9, 2 * 10**9):
            _warm_up(client, offset)
        for i, n in enumerate(s for s in SIZES if s <= largest):
            out.update(_one_size(client, scheduler_pid, http, n, (3 + i) * 10**9))
            _drained(client, time.monotonic() + DRAIN_SECONDS)
    top = f"million_{largest}"
    out["million_seconds"] = out[f"{top}_seconds"]
    out["million_scheduler_bytes_per_task"] = out[f"{top}_scheduler_bytes_per_task"]
    out["million_client_bytes_per_task"] = out[f"{top}_client_bytes_per_task"]
    out["million_health_max_ms"] = out.get(f"{top}_health_max_ms")
    out["million_dashboard_max_ms"] = out.get(f"{top}_dashboard_max_ms")
    return out
