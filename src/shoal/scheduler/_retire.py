"""Graceful retirement: move data off workers before they close.

Retiring a worker never costs a recomputation: the worker stops receiving
new tasks, the tasks it is running finish, every result that exists only
there is copied to a worker that stays, and only then is it told to close.
When only a count is given, the workers whose loss costs least (the fewest
bytes held only by them, then the least work in progress) are picked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..comm import wait_event
from ._events import RemoveWorker, RetireWorkers
from ._model import ACTIVE, TaskState, WorkerState

if TYPE_CHECKING:
    from ._server import Scheduler

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT = 60.0


def unique_bytes(ws: WorkerState) -> int:
    return sum(ts.nbytes for ts in ws.has_what if len(ts.who_has) == 1)


def workers_to_close(workers: list[WorkerState], n: int) -> list[WorkerState]:
    """The ``n`` workers whose loss costs least."""
    ranked = sorted(workers, key=lambda ws: (unique_bytes(ws), len(ws.processing), ws.address))
    return ranked[: max(0, n)]


class Retirement:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._changed = asyncio.Event()

    def poke(self) -> None:
        """Called after events: something a retirement waits for may have happened."""
        self._changed.set()

    def choose(self, workers: list[str] | None, n: int | None) -> list[WorkerState]:
        state = self.scheduler.state
        active = [ws for ws in state.workers.values() if ws.status in ACTIVE]
        if workers is not None:
            wanted = set(workers)
            return [ws for ws in active if ws.address in wanted or ws.name in wanted]
        if n is None:
            raise ValueError("retire_workers needs `workers` or `n`")
        if n < 0:
            raise ValueError(f"cannot retire {n} workers")
        return workers_to_close(active, n)

    async def retire(self, workers: list[str] | None = None, n: int | None = None,
                     close: bool = True, timeout: float = DRAIN_TIMEOUT) -> list[dict[str, Any]]:
        chosen = self.choose(workers, n)
        state = self.scheduler.state
        if chosen and len(chosen) >= len([w for w in state.workers.values()
                                          if w.status in ACTIVE]):
            keep = [ts for ws in chosen for ts in ws.has_what]
            if keep:
                raise ValueError("cannot retire every worker while they hold data")
        self.scheduler.handle(RetireWorkers(self.scheduler.stimulus("retire-workers"),
                                            [ws.address for ws in chosen]))
        deadline = time.monotonic() + timeout
        await self._wait(lambda: not any(ws.processing for ws in chosen), deadline)
        self._replicate(chosen)
        await self._wait(lambda: not self._stranded(chosen), deadline)
        retired = []
        for ws in chosen:
            if self._stranded([ws]):
                logger.warning("retiring %s before all its data moved (timeout)", ws.address)
            retired.append({"address": ws.address, "name": ws.name})
            stream = self.scheduler.worker_streams.get(ws.address)
            if close and stream is not None:
                stream.send({"op": "close"})
            self.scheduler.handle(RemoveWorker(self.scheduler.stimulus("retire"), ws.address,
                                               "retired", graceful=True))
        return retired

    def _stranded(self, chosen: list[WorkerState]) -> list[TaskState]:
        leaving = set(chosen)
        return [ts for ws in chosen for ts in ws.has_what if leaving.issuperset(ts.who_has)]

    def _replicate(self, chosen: list[WorkerState]) -> None:
        state = self.scheduler.state
        leaving = set(chosen)
        staying = [ws for ws in state.workers.values() if ws not in leaving
                   and ws.status == "running"]
        if not staying:
            return
        plans: dict[str, dict[str, Any]] = {}
        load = {ws: ws.nbytes for ws in staying}
        for ts in self._stranded(chosen):
            target = min(staying, key=lambda w: (load[w], w.address))
            load[target] += ts.nbytes
            plan = plans.setdefault(target.address, {"who_has": {}, "nbytes": {}})
            plan["who_has"][ts.key] = [w.address for w in ts.who_has]
            plan["nbytes"][ts.key] = ts.nbytes
        for address, plan in plans.items():
            stream = self.scheduler.worker_streams.get(address)
            if stream is not None:
                stream.send({"op": "acquire-replicas", **plan})

    async def _wait(self, done: Any, deadline: float) -> None:
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._changed.clear()
            await wait_event(self._changed, min(remaining, 0.5))
