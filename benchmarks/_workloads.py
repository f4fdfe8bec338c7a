"""The workloads of the performance goals, written once for shoal and dask.

Each workload takes a ready :class:`_systems.System`, starts the cluster shape
it needs, warms it up (connections open, functions cached on the workers),
measures, checks the answer is right, and returns a flat dict of metrics.
Sizes come from :data:`FULL` or :data:`QUICK`.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any, Self

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
    "million_n": 1_000_000,
    "array_n": 8_000, "array_chunk": 500,
    "dataframe_days": 30,
}
QUICK = {
    "roundtrip_n": 100, "roundtrip_warmup": 20,
    "independent_n": 2_000,
    "tree_leaves": 1_024,
    "transfer_blocks": 4, "transfer_block_bytes": 8 * MiB,
    "memory_n": 10_000,
    "million_n": 100_000,
    "array_n": 2_000, "array_chunk": 250,
    "dataframe_days": 3,
}
WARMUP_TASKS = 200
TRANSFER_ROUNDS = 7
SETTLE_POLLS = 50
SETTLE_INTERVAL = 0.1


class CpuMeter:
    """CPU seconds (user + system) used by each cluster process during a timed window.

    Unlike wall time, this does not grow when other programs load the machine,
    so it is the figure to compare per-task costs with.
    """

    def __init__(self, client: Any = None, roles: dict[int, str] | None = None) -> None:
        self.roles = roles if roles is not None else _systems.process_roles(client)
        self.procs = {pid: psutil.Process(pid) for pid in self.roles}
        self.start: dict[int, float] = {}
        self.used: dict[int, float] = {}

    def _now(self) -> dict[int, float]:
        return {pid: sum(p.cpu_times()[:2]) for pid, p in self.procs.items()}

    def __enter__(self) -> Self:
        self.start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.used = {pid: end[pid] - self.start[pid] for pid in end}

    def per_task(self, prefix: str, n_tasks: int) -> dict[str, float]:
        """``{prefix_cpu_us_per_task_<role>: microseconds}``, workers summed."""
        out: dict[str, float] = {}
        for pid, seconds in self.used.items():
            key = f"{prefix}_cpu_us_per_task_{self.roles[pid]}"
            out[key] = out.get(key, 0.0) + seconds * 1e6 / n_tasks
        return out


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
        with CpuMeter(client) as cpu:
            start = time.perf_counter()
            futures = client.map(_tasks.inc, range(n))
            results = client.gather(futures)
            elapsed = time.perf_counter() - start
        assert results == [i + 1 for i in range(n)]
        del futures
    return {"independent_tasks_per_s": n / elapsed, "independent_n": n,
            "independent_seconds": elapsed, **cpu.per_task("independent", n)}


def tree(system: _systems.System, sizes: dict[str, int]) -> dict[str, Any]:
    """A binary tree reduction: leaves by ``map``, then ``submit(add, a, b)`` level by level."""
    return _tree(system, sizes, "tree", _tasks.inc, _tasks.add)


#: The tree's functions as a notebook cell defines them: in ``__main__``, so each
#: system ships them by value (pickled with what they read), not by reference.
NOTEBOOK_CELL = """
STEP = 1

def inc(x):
    return x + STEP

def add(a, b):
    return a + b
"""


def notebook(system: _systems.System, sizes: dict[str, int]) -> dict[str, Any]:
    """The tree reduction over functions defined in a notebook."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(NOTEBOOK_CELL, "<notebook cell>", "exec"), namespace)  # noqa: S102
    return _tree(system, sizes, "notebook", namespace["inc"], namespace["add"])


def _tree(system: _systems.System, sizes: dict[str, int], tag: str,
          inc: Callable[[int], int], add: Callable[[int, int], int]) -> dict[str, Any]:
    leaves = sizes["tree_leaves"]
    with _systems.local_cluster(system) as client:
        _warm_up(client)
        assert client.submit(add, -1, -2).result() == -3
        with CpuMeter(client) as cpu:
            start = time.perf_counter()
            level = client.map(inc, range(leaves))
            while len(level) > 1:
                pairs = [client.submit(add, level[i], level[i + 1])
                         for i in range(0, len(level) - 1, 2)]
                level = pairs + level[2 * len(pairs):]
            total = level[0].result()
            elapsed = time.perf_counter() - start
    assert total == sum(i + 1 for i in range(leaves)), total
    n_tasks = 2 * leaves - 1  # every add turns two values into one
    return {f"{tag}_tasks_per_s": n_tasks / elapsed, f"{tag}_tasks": n_tasks,
            f"{tag}_seconds": elapsed, **cpu.per_task(tag, n_tasks)}


def _transfer_round(system: _systems.System, client: Any, a: str, b: tuple[str, int],
                    first: int, sizes: dict[str, int], make: Callable = _tasks.make_block) -> float:
    """One round: blocks made on A (not timed), consumed on B (timed); seconds."""
    blocks, nbytes = sizes["transfer_blocks"], sizes["transfer_block_bytes"]
    made = [client.submit(make, first + i, nbytes, workers=[a])
            for i in range(blocks)]
    system.wait(made)
    start = time.perf_counter()
    used = [client.submit(_tasks.consume_block, m, workers=[b[0]]) for m in made]
    results = client.gather(used)
    elapsed = time.perf_counter() - start
    for i, (size, check, pid) in enumerate(results):
        assert size == nbytes and check == (first + i) % 251, (i, size, check)
        assert pid == b[1], "a block was consumed outside worker B"
    return elapsed


def transfer(system: _systems.System, sizes: dict[str, int]) -> dict[str, Any]:
    """Worker-to-worker MB/s: the median of TRANSFER_ROUNDS rounds, each with fresh blocks,
    of numpy blocks, then of ``bytes`` blocks (``transfer_bytes_MB_per_s``)."""
    with _systems.local_cluster(system) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        pids = client.run(os.getpid)
        assert pids[a] != pids[b], "the two workers share a process"
        warm = client.submit(_tasks.make_block, -1, MiB, workers=[a])
        assert client.submit(_tasks.consume_block, warm, workers=[b]).result()[:2] == (MiB, 250)
        del warm
        seconds = [_transfer_round(system, client, a, (b, pids[b]),
                                   r * sizes["transfer_blocks"], sizes)
                   for r in range(TRANSFER_ROUNDS)]
        bytes_seconds = [_transfer_round(system, client, a, (b, pids[b]),
                                         r * sizes["transfer_blocks"], sizes,
                                         _tasks.make_bytes_block)
                         for r in range(TRANSFER_ROUNDS)]
    total = sizes["transfer_blocks"] * sizes["transfer_block_bytes"]
    rates = [total / s / 1e6 for s in seconds]
    bytes_rates = [total / s / 1e6 for s in bytes_seconds]
    return {"transfer_MB_per_s": statistics.median(rates), "transfer_bytes_per_round": total,
            "transfer_MB_per_s_rounds": rates,
            "transfer_bytes_MB_per_s": statistics.median(bytes_rates),
            "transfer_bytes_MB_per_s_rounds": bytes_rates}


def transfer_tcp(system: _systems.System, sizes: dict[str, int]) -> dict[str, Any]:
    """The transfer workload over TCP only, as between two hosts: shoal with its
    shared-memory and Unix-socket paths off (``SHOAL_SHARED_MEMORY=0``,
    ``SHOAL_UNIX_SOCKETS=0``, inherited by its cluster);
    dask always moves data over its socket."""
    if system.name == "shoal":  # this child process only, and the cluster it starts
        os.environ["SHOAL_SHARED_MEMORY"] = "0"
        os.environ["SHOAL_UNIX_SOCKETS"] = "0"
    found = transfer(system, sizes)
    return {"tcp_MB_per_s": found["transfer_MB_per_s"],
            "tcp_MB_per_s_rounds": found["transfer_MB_per_s_rounds"],
            "tcp_bytes_MB_per_s": found["transfer_bytes_MB_per_s"],
            "tcp_bytes_MB_per_s_rounds": found["transfer_bytes_MB_per_s_rounds"]}


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


def _compute(client: Any) -> Callable[[Any], Any]:
    """A system's normal path for a dask collection: ``client.compute(c).result()``."""
    return lambda collection: client.compute(collection).result()


def array(system: _systems.System, sizes: dict[str, int]) -> dict[str, Any]:
    """dask.array through the system's ``client.compute`` (see _userlevel.py)."""
    import _userlevel

    with _systems.local_cluster(system) as client:
        _warm_up(client)
        return _userlevel.array(_compute(client), sizes)


def dataframe(system: _systems.System, sizes: dict[str, int]) -> dict[str, Any]:
    """dask.dataframe groupby-aggregate through ``client.compute`` (see _userlevel.py)."""
    import _userlevel

    with _systems.local_cluster(system) as client:
        _warm_up(client)
        return _userlevel.dataframe(_compute(client), sizes)


def million(system: _systems.System, sizes: dict[str, int]) -> dict[str, Any]:
    """A million tasks at once (see _scale.py)."""
    import _scale

    return _scale.million(system, sizes)


WORKLOADS: dict[str, Callable[[_systems.System, dict[str, int]], dict[str, Any]]] = {
    "roundtrip": roundtrip,
    "independent": independent,
    "tree": tree,
    "notebook": notebook,
    "transfer": transfer,
    "tcp": transfer_tcp,
    "memory": memory,
    "million": million,
    "array": array,
    "dataframe": dataframe,
}
