"""The same workloads on Ray, where Ray has them.

Ray is the third system of the comparison: one node started by
``ray.init(num_cpus=2)`` (two worker processes run tasks, as the two
single-threaded workers of the other systems do).  Ray has no "client
submits to a separate scheduler" split: the driver owns its tasks' results
and the raylet schedules them, so the CPU table shows the driver as
``client``, ``gcs_server`` + ``raylet`` as ``scheduler``, the processes that
ran tasks as ``workers``, and Ray's helper daemons as ``other``.

Ray is a benchmark-only dependency (``pip install ray==2.60.0``, or the
``bench`` extra); nothing else imports this module.  Tasks are the same
functions as the other systems run (``_tasks.py``), wrapped by
``ray.remote``.  A block made by one task and consumed by another goes
through Ray's shared-memory object store, which is Ray's normal path between
workers of one node.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import _tasks
import _userlevel
import psutil
from _workloads import TRANSFER_ROUNDS, CpuMeter

NUM_CPUS = 2
WARMUP_TASKS = 200
SCHEDULER_PROCESSES = ("gcs_server", "raylet")


@contextlib.contextmanager
def session() -> Iterator[Any]:
    """A fresh one-node Ray with two CPUs, shut down afterwards."""
    import ray

    ray.init(num_cpus=NUM_CPUS, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


class _Remote:
    """The benchmark's task functions as Ray remote functions."""

    def __init__(self, ray: Any) -> None:
        self.inc = ray.remote(_tasks.inc)
        self.add = ray.remote(_tasks.add)
        self.make_block = ray.remote(_tasks.make_block)
        self.consume_block = ray.remote(_tasks.consume_block)
        self.make_bytes = ray.remote(_make_bytes)
        self.consume_bytes = ray.remote(_consume_bytes)
        self.pid = ray.remote(_pid)


def _pid() -> int:
    return os.getpid()


def _make_bytes(index: int, nbytes: int) -> bytes:
    return bytes([index % 251]) * nbytes


def _consume_bytes(block: bytes) -> tuple[int, int, int]:
    return len(block), block[-1], os.getpid()


def _warm_up(ray: Any, remote: _Remote) -> set[int]:
    values = ray.get([remote.inc.remote(i) for i in range(WARMUP_TASKS)])
    assert values == [i + 1 for i in range(WARMUP_TASKS)]
    return set(ray.get([remote.pid.remote() for _ in range(4 * NUM_CPUS)]))


def _cpu_meter(worker_pids: set[int]) -> CpuMeter:
    """CPU seconds per role of a Ray node (see the module docstring for the roles)."""
    roles = {os.getpid(): "client"}
    for proc in psutil.Process().children(recursive=True):
        if proc.pid in worker_pids:
            roles[proc.pid] = "workers"
        else:
            roles[proc.pid] = "scheduler" if proc.name() in SCHEDULER_PROCESSES else "other"
    return CpuMeter(roles=roles)


def roundtrip(sizes: dict[str, int]) -> dict[str, Any]:
    with session() as ray:
        remote = _Remote(ray)
        _warm_up(ray, remote)
        for i in range(sizes["roundtrip_warmup"]):
            assert ray.get(remote.inc.remote(-1 - i)) == -i
        samples = []
        for i in range(sizes["roundtrip_n"]):
            start = time.perf_counter()
            value = ray.get(remote.inc.remote(i))
            samples.append(time.perf_counter() - start)
            assert value == i + 1
    samples.sort()
    p99_index = min(len(samples) - 1, round(0.99 * len(samples)) - 1)
    return {"roundtrip_median_ms": statistics.median(samples) * 1e3,
            "roundtrip_p99_ms": samples[p99_index] * 1e3, "roundtrip_n": len(samples)}


def independent(sizes: dict[str, int]) -> dict[str, Any]:
    n = sizes["independent_n"]
    with session() as ray:
        remote = _Remote(ray)
        pids = _warm_up(ray, remote)
        with _cpu_meter(pids) as cpu:
            start = time.perf_counter()
            refs = [remote.inc.remote(i) for i in range(n)]
            results = ray.get(refs)
            elapsed = time.perf_counter() - start
        assert results == [i + 1 for i in range(n)]
    return {"independent_tasks_per_s": n / elapsed, "independent_n": n,
            "independent_seconds": elapsed, **cpu.per_task("independent", n)}


def tree(sizes: dict[str, int]) -> dict[str, Any]:
    leaves = sizes["tree_leaves"]
    with session() as ray:
        remote = _Remote(ray)
        pids = _warm_up(ray, remote)
        with _cpu_meter(pids) as cpu:
            start = time.perf_counter()
            level = [remote.inc.remote(i) for i in range(leaves)]
            while len(level) > 1:
                pairs = [remote.add.remote(level[i], level[i + 1])
                         for i in range(0, len(level) - 1, 2)]
                level = pairs + level[2 * len(pairs):]
            total = ray.get(level[0])
            elapsed = time.perf_counter() - start
    assert total == sum(i + 1 for i in range(leaves)), total
    n_tasks = 2 * leaves - 1
    return {"tree_tasks_per_s": n_tasks / elapsed, "tree_tasks": n_tasks,
            "tree_seconds": elapsed, **cpu.per_task("tree", n_tasks)}


def _transfer_rate(ray: Any, make: Any, consume: Any, sizes: dict[str, int]) -> list[float]:
    """MB/s of each round: blocks made (not timed), then consumed by other tasks (timed)."""
    blocks, nbytes = sizes["transfer_blocks"], sizes["transfer_block_bytes"]
    rates = []
    for r in range(TRANSFER_ROUNDS):
        first = r * blocks
        made = [make.remote(first + i, nbytes) for i in range(blocks)]
        ray.wait(made, num_returns=len(made))
        start = time.perf_counter()
        results = ray.get([consume.remote(m) for m in made])
        elapsed = time.perf_counter() - start
        for i, (size, check, _pid) in enumerate(results):
            assert size == nbytes and check == (first + i) % 251, (i, size, check)
        rates.append(blocks * nbytes / elapsed / 1e6)
        del made
    return rates


def transfer(sizes: dict[str, int]) -> dict[str, Any]:
    """Blocks made by one task and consumed by another, through the object store."""
    with session() as ray:
        remote = _Remote(ray)
        _warm_up(ray, remote)
        numpy_rates = _transfer_rate(ray, remote.make_block, remote.consume_block, sizes)
        bytes_rates = _transfer_rate(ray, remote.make_bytes, remote.consume_bytes, sizes)
    return {"transfer_MB_per_s": statistics.median(numpy_rates),
            "transfer_MB_per_s_rounds": numpy_rates,
            "transfer_bytes_MB_per_s": statistics.median(bytes_rates),
            "transfer_bytes_MB_per_s_rounds": bytes_rates,
            "transfer_bytes_per_round": sizes["transfer_blocks"] * sizes["transfer_block_bytes"]}


def _collection(run: Callable[[Callable[[Any], Any], dict[str, int]], dict[str, Any]],
                sizes: dict[str, int]) -> dict[str, Any]:
    """A dask collection computed by Ray's dask scheduler (``ray.util.dask``)."""
    with session() as ray:
        from ray.util.dask import ray_dask_get

        _warm_up(ray, _Remote(ray))
        return run(lambda c: c.compute(scheduler=ray_dask_get), sizes)


WORKLOADS: dict[str, Callable[[dict[str, int]], dict[str, Any]]] = {
    "roundtrip": roundtrip,
    "independent": independent,
    "tree": tree,
    "transfer": transfer,
    "array": lambda sizes: _collection(_userlevel.array, sizes),
    "dataframe": lambda sizes: _collection(_userlevel.dataframe, sizes),
}
