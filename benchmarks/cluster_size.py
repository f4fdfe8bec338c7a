"""The scheduler's cost per task as the cluster grows: 2 to 1,000 workers.

A cluster of a thousand workers does not fit on this 2-core machine, so this
drives the scheduler's state machine (``SchedulerState``) alone, in this
process: one client ``map``s 20,000 tasks (roots alone, or roots each with a
dependent), then every ``compute-task`` sent is answered by its worker's
``task-finished`` one event at a time, as a busy cluster's reports arrive.
The figures are microseconds per task for the graph and for the reports.
They should stay flat as workers are added.

Usage: ``python benchmarks/cluster_size.py``
"""

from __future__ import annotations

import time
from collections import deque

from shoal.scheduler._events import (
    AddClient,
    AddWorker,
    TaskFinished,
    TaskSpec,
    ToWorker,
    UpdateGraph,
)
from shoal.scheduler._state import SchedulerState

S = "bench"
WORKERS = (2, 10, 100, 1000)
TASKS = 20_000


def _computes(out: list) -> list[tuple[str, str]]:
    return [(i.worker, i.msg["key"]) for i in out
            if type(i) is ToWorker and i.msg["op"] == "compute-task"]


def run(workers: int, n: int, chains: bool) -> tuple[float, float]:
    """(us per task handling the graph, us per task handling the reports)."""
    state = SchedulerState()
    state.handle(*[AddWorker(S, f"w{i}", f"w{i}", 1, 10**9) for i in range(workers)],
                 AddClient(S, "c"))
    specs = [TaskSpec(f"r-{i}", "f", b"a") for i in range(n)]
    if chains:
        specs += [TaskSpec(f"s-{i}", "f", b"a", [f"r-{i}"]) for i in range(n)]
    start = time.perf_counter()
    todo = deque(_computes(state.handle(UpdateGraph(S, "c", specs, {"f": b"F"},
                                                    [s.key for s in specs]))))
    graphed = time.perf_counter()
    done = 0
    while todo:
        worker, key = todo.popleft()
        todo.extend(_computes(state.handle(TaskFinished(S, worker, key, 8))))
        done += 1
    finished = time.perf_counter()
    assert done == len(specs), (done, len(specs))
    return ((graphed - start) * 1e6 / len(specs), (finished - graphed) * 1e6 / len(specs))


def main() -> None:
    print(f"{'workers':>8}  {'graph':>6}  {'us/task: graph':>15}  {'reports':>8}")
    for workers in WORKERS:
        for chains in (False, True):
            graph, reports = run(workers, TASKS, chains)
            print(f"{workers:>8,}  {'chains' if chains else 'roots':>6}  {graph:>15.1f}  "
                  f"{reports:>8.1f}")


if __name__ == "__main__":
    main()
