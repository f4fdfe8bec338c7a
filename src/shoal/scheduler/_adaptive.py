"""How many workers the scheduler wants, from its queue and memory.

The target is the larger of

* the CPU need: the expected run time of all work not yet finished (from
  the observed durations of each task prefix) spread so that it would take
  about ``target_duration`` seconds, divided by threads per worker;
* the memory need: bytes held in memory over the memory each worker can
  keep before it starts to spill.

Both ``LocalCluster.adapt`` and the Kubernetes operator scale to this number,
clamped to their own minimum and maximum.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ._placement import UNKNOWN_TASK_DURATION

if TYPE_CHECKING:
    from ._state import SchedulerState

DEFAULT_TARGET_DURATION = 5.0
#: The states of tasks that still need a thread.
PENDING_STATES = ("processing", "queued", "no-worker", "waiting")
#: Fraction of a worker's memory limit counted as usable before spilling.
MEMORY_USABLE_FRACTION = 0.6


def pending_seconds(state: SchedulerState) -> float:
    durations = state.placement.durations
    total = 0.0
    for prefix, counts in state.prefix_counts.items():  # not a walk over every task
        pending = sum(counts[name] for name in PENDING_STATES)
        if pending:
            total += pending * durations.get(prefix, UNKNOWN_TASK_DURATION)
    return total


def adaptive_target(state: SchedulerState, target_duration: float = DEFAULT_TARGET_DURATION) -> int:
    workers = list(state.workers.values())
    threads = (sum(ws.nthreads for ws in workers) / len(workers)) if workers else 1.0
    pending = pending_seconds(state)
    cpu = math.ceil(pending / target_duration / threads) if pending else 0
    held = sum(ws.nbytes for ws in workers)
    limits = [ws.memory_limit for ws in workers if ws.memory_limit]
    memory = 0
    if held and limits:
        usable = MEMORY_USABLE_FRACTION * sum(limits) / len(limits)
        memory = math.ceil(held / usable)
    target = max(cpu, memory)
    if target == 0 and any(counts["queued"] or counts["no-worker"]
                           for counts in state.prefix_counts.values()):
        target = 1
    return target
