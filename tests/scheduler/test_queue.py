"""The scheduler's queue of root tasks hands them out in priority order."""

from __future__ import annotations

import random

from shoal.scheduler._model import TaskState
from shoal.scheduler._placement import Placement


class _Worker:
    status = "running"
    nthreads = 1
    avg_duration = None
    slot_count = 0
    busy = 0


def test_tasks_come_out_in_priority_order_however_they_went_in():
    rng = random.Random(3)
    placement = Placement(state=None)  # type: ignore[arg-type]
    priorities = [(0, i) for i in range(300)]  # a map: in order
    priorities += [(0, rng.randrange(300)) for _ in range(200)]  # then some out of order
    priorities += [(-1, rng.randrange(50)) for _ in range(50)]  # and some urgent ones
    tasks = [TaskState(f"t-{i}", "t", None, None, p) for i, p in enumerate(priorities)]
    for ts in tasks:
        placement.enqueue(ts)
    dropped = set(rng.sample(tasks, 100))
    for ts in dropped:
        placement.dequeue(ts)
    out: list[TaskState] = []
    while True:
        taken = placement.take(_Worker())  # type: ignore[arg-type]
        if not taken:
            break
        out.extend(taken)
    kept = [ts for ts in tasks if ts not in dropped]
    order = {ts: i for i, ts in enumerate(tasks)}
    assert out == sorted(kept, key=lambda ts: (ts.priority, order[ts]))
    assert not placement.queued and not placement._run and not placement._heap
