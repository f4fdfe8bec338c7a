"""``Client.rebalance``: move results so that workers hold similar amounts.

The measure is the bytes of results each worker holds as the scheduler
knows them (``WorkerState.nbytes``: every result there, in memory or
spilled), not dask's process-memory measure: it is what the scheduler can
move, and it is exact.  The plan is greedy: from the worker holding most,
above the mean, its largest movable result goes to the worker holding least
that lacks it, whenever that narrows the gap between the two (a result
smaller than their difference: each move lowers the spread, so it ends).

A move is a copy, then a drop: the recipient fetches the result from its
holder (``acquire-replicas``, as for retiring workers); once the scheduler
sees it there, the sender is asked to drop its copy and says which ones it
did (not an actor's, not an input of work it has started), and only those
leave the scheduler's ``who_has``.  No result is ever without a holder.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..comm import CommClosedError
from ._events import MissingData
from ._model import TaskState, WorkerState
from ._replicate import send_plans

if TYPE_CHECKING:
    from ._server import Scheduler

#: How often the scheduler looks whether the copies have arrived.
COPY_POLL_INTERVAL = 0.05

Move = tuple[TaskState, WorkerState, WorkerState]  # result, sender, recipient


def plan(workers: list[WorkerState], keys: set[str] | None = None) -> list[Move]:
    """The moves that even out the bytes held by ``workers`` (only ``keys`` move, if given)."""
    if len(workers) < 2:
        return []
    load = {ws: ws.nbytes for ws in workers}
    mean = sum(load.values()) / len(workers)
    moves: list[Move] = []
    for sender in sorted(workers, key=lambda w: (-load[w], w.address)):
        movable = sorted((ts for ts in sender.has_what if ts.state == "memory"
                          and (keys is None or ts.key in keys)),
                         key=lambda t: (-t.nbytes, t.key))
        for ts in movable:
            if load[sender] <= mean:
                break
            lacking = [w for w in workers if w not in ts.who_has]
            if not lacking:
                continue
            recipient = min(lacking, key=lambda w: (load[w], w.address))
            if ts.nbytes >= load[sender] - load[recipient]:
                continue  # it would not narrow the gap
            moves.append((ts, sender, recipient))
            load[sender] -= ts.nbytes
            load[recipient] += ts.nbytes
    return moves


async def rebalance(scheduler: Scheduler, keys: list[str] | None = None,
                    workers: list[str] | None = None, timeout: float = 30.0) -> dict[str, Any]:
    state = scheduler.state
    chosen = [ws for ws in state.workers.values() if ws.status == "running"
              and (workers is None or ws.address in workers or ws.name in workers)]
    moves = plan(chosen, set(keys) if keys is not None else None)
    _send_copies(scheduler, moves)
    deadline = time.monotonic() + timeout
    while any(_in_flight(move) for move in moves) and time.monotonic() < deadline:
        await asyncio.sleep(COPY_POLL_INTERVAL)  # a polling period, not a sync
    by_sender: dict[WorkerState, list[str]] = {}
    for ts, sender, recipient in moves:
        if recipient in ts.who_has and sender in ts.who_has and ts.state == "memory":
            by_sender.setdefault(sender, []).append(ts.key)
    moved = 0
    for sender, sent in by_sender.items():
        moved += await _drop(scheduler, sender, sent)
    return {"status": "ok", "moved": moved, "planned": len(moves)}


def _in_flight(move: Move) -> bool:
    ts, _sender, recipient = move
    return (ts.state == "memory" and recipient not in ts.who_has
            and recipient.status == "running")


def _send_copies(scheduler: Scheduler, moves: Iterable[Move]) -> None:
    plans: dict[str, dict[str, Any]] = {}
    for ts, sender, recipient in moves:
        plan_ = plans.setdefault(recipient.address, {"who_has": {}, "nbytes": {}})
        plan_["who_has"][ts.key] = [sender.address]
        plan_["nbytes"][ts.key] = ts.nbytes
    send_plans(scheduler, plans)


async def _drop(scheduler: Scheduler, sender: WorkerState, keys: list[str]) -> int:
    """Ask ``sender`` to drop its copies; forget those it dropped. How many it did."""
    try:
        answer = await scheduler.pool.request(sender.address, "remove_replicas", keys=keys)
    except (CommClosedError, OSError):
        return 0  # gone: its removal takes its copies off the books
    dropped = [k for k in answer.get("dropped", []) if isinstance(k, str)]
    scheduler.handle(*(MissingData(scheduler.stimulus("rebalance"), sender.address, key,
                                   sender.address) for key in dropped))
    return len(dropped)
