"""The five workloads of the performance goals, written once for both systems.

Each workload takes a ready :class:`_systems.System`, starts the cluster shape
it needs, warms it up (connections open, functions cached on the workers),
measures, checks the answer is right, and returns a flat dict of metrics.
Sizes come from :data:`FULL` or :data:`QUICK`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import _systems
import _tasks
import psutil

MiB = 1024 * 1024
FULL = {
    "roundtrip_n": 500, "roundtrip_warmup": 50,
    "independent_n": 20_000,
    "tree_leaves": 8_192,
    "transfer_blocks": 8, "transfer_block_bytes": 32 * MiB,
    "memory_n": 100_000,
}
QUICK = {
    "roundtrip_n": 100, "roundtrip_warmup": 20,
    "independent_n": 2_000,
    "tree_leaves": 1_024,
    "transfer_blocks": 4, "transfer_block_bytes": 8 * MiB,
    "memory_n": 10_000,
}
WARMUP_TASKS = 200
SETTLE_POLLS = 50
SETTLE_INTERVAL = 0.1


def _warm_up(client: Any, offset: int = 10**9) -> None:
    """Run a small batch so connections, imports and function caches are hot."""
    futures = client.map(_tasks.inc, range(offset, offset + WARMUP_TASKS))
    assert client.gather(futures) == [i + 1 for i in range(offset, offset + WARMUP_TASKS)]
    del futures


def roundtrip(system: _systems.System, sizes: dict[str, int]) -> dict[str, Any]:
    """Submit one tiny task and wait for its result, many times in a row."""
    with _systems.local_cluster(system) as client:
        _warm_up(client)
        for i in range(sizes["roundtrip_warmup"]):
            assert client.submit(_tasks.inc, -1 - i).result() == -i
        samples = []
        for i in range(sizes["roundtrip_n"]):
            start = time.perf_counter()
            value = client.submit(_tasks.inc, i).result()
            samples.append(time.perf_counter() - start)
            assert value == i + 1
    samples.sort()
    p99_index = min(len(samples) - 1, round(0.99 * len(samples)) - 1)
    return {
        "roundtrip_median_ms": statistics.median(samples) * 1e3,
        "roundtrip_p99_ms": samples[p99_index] * 1e3,
        "roundtrip_n": len(samples),
    }


def independent(system: _systems.System, sizes: dict[str, int]) -> dict[str, Any]:
    """``map`` many tiny independent tasks and ``gather`` them all."""
    n = sizes["independent_n"]
    with _systems.local_cluster(system) as client:
        _warm_up(client)
        start = time.perf_counter()
        futures = client.map(_tasks.inc, range(n))
        results = client.gather(futures)
        elapsed = time.perf_counter() - start
        assert results == [i + 1 for i in range(n)]
        del futures
    return {"independent_tasks_per_s": n / elapsed, "independent_n": n,
            "independent_seconds": elapsed}


def tree(system: _systems.System, sizes: dict[str, int]) -> dict[str, Any]:
    """A binary tree reduction: leaves by ``map``, then ``submit(add, a, b)`` level by level."""
    leaves = sizes["tree_leaves"]
    with _systems.local_cluster(system) as client:
        _warm_up(client)
        assert client.submit(_tasks.add, -1, -2).result() == -3
        start = time.perf_counter()
        level = client.map(_tasks.inc, range(leaves))
        while len(level) > 1:
            pairs = [client.submit(_tasks.add, level[i], level[i + 1])
                     for i in range(0, len(level) - 1, 2)]
            level = pairs + level[2 * len(pairs):]
        total = level[0].result()
        elapsed = time.perf_counter() - start
    assert total == sum(i + 1 for i in range(leaves)), total
    n_tasks = 2 * leaves - 1  # every add turns two values into one
    return {"tree_tasks_per_s": n_tasks / elapsed, "tree_tasks": n_tasks,
            "tree_seconds": elapsed}


def transfer(system: _systems.System, sizes: dict[str, int]) -> dict[str, Any]:
    """Blocks made on worker A (not timed), then consumed on worker B (timed): MB/s."""
    blocks, nbytes = sizes["transfer_blocks"], sizes["transfer_block_bytes"]
    with _systems.local_cluster(system) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        pid_a = client.submit(_tasks.where_am_i, workers=[a], pure=False).result()
        warm = client.submit(_tasks.make_block, -1, MiB, workers=[a])
        assert client.submit(_tasks.consume_block, warm, workers=[b]).result()[0] == MiB
        made = [client.submit(_tasks.make_block, i, nbytes, workers=[a]) for i in range(blocks)]
        system.wait(made)
        start = time.perf_counter()
        used = [client.submit(_tasks.consume_block, m, workers=[b]) for m in made]
        results = client.gather(used)
        elapsed = time.perf_counter() - start
    for i, (size, check, pid) in enumerate(results):
        assert size == nbytes and check == i % 251, (i, size, check)
        assert pid != pid_a, "the consumer ran in the producer's process"
    total = blocks * nbytes
    return {"transfer_MB_per_s": total / elapsed / 1e6, "transfer_bytes": total,
            "transfer_seconds": elapsed}


def _settled_rss(process: psutil.Process) -> int:
    """The process's RSS once it stops moving (bounded number of polls)."""
    previous = process.memory_info().rss
    for _ in range(SETTLE_POLLS):
        time.sleep(SETTLE_INTERVAL)
        current = process.memory_info().rss
        if abs(current - previous) < 0.002 * previous:
            return current
        previous = current
    return previous


def memory(system: _systems.System, sizes: dict[str, int]) -> dict[str, Any]:
    """Scheduler RSS increase per task while ``n`` small results are held by futures."""
    n = sizes["memory_n"]
    with _systems.cli_cluster(system) as (client, scheduler_pid):
        scheduler = psutil.Process(scheduler_pid)
        for offset in (10**9, 2 * 10**9):
            _warm_up(client, offset)
        before = _settled_rss(scheduler)
        start = time.perf_counter()
        futures = client.map(_tasks.inc, range(n))
        system.wait(futures)
        elapsed = time.perf_counter() - start
        after = _settled_rss(scheduler)
        assert all(f.status == "finished" for f in futures)
        del futures
    return {"memory_bytes_per_task": (after - before) / n, "memory_n": n,
            "memory_scheduler_rss_before_MB": before / 1e6,
            "memory_scheduler_rss_after_MB": after / 1e6,
            "memory_seconds": elapsed}


WORKLOADS: dict[str, Callable[[_systems.System, dict[str, int]], dict[str, Any]]] = {
    "roundtrip": roundtrip,
    "independent": independent,
    "tree": tree,
    "transfer": transfer,
    "memory": memory,
}
