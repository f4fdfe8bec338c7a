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

if TYPE_CHECKING:
    from ._state import SchedulerState

DEFAULT_TARGET_DURATION = 5.0
#: Fraction of a worker's memory limit counted as usable before spilling.
MEMORY_USABLE_FRACTION = 0.6


def pending_seconds(state: SchedulerState) -> float:
    estimate = state.placement.estimate
    total = 0.0
    for ts in state.tasks.values():
        if ts.state in ("processing", "queued", "no-worker", "waiting"):
            total += estimate(ts)
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
    if target == 0 and any(ts.state in ("queued", "no-worker") for ts in state.tasks.values()):
        target = 1
    return target
