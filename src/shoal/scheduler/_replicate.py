"""``Client.replicate``: copies of results on more workers.

For each key in memory with fewer than ``n`` holders, the workers holding
the least data that lack it are asked to fetch it from a holder (the same
``acquire-replicas`` a retiring worker's data travels by); the answer comes
once every key has ``n`` holders, or when the timeout passes.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ..comm import CommClosedError

if TYPE_CHECKING:
    from ._server import Scheduler

#: How often the scheduler looks whether the copies have arrived.
REPLICA_POLL_INTERVAL = 0.05


async def replicate(scheduler: Scheduler, keys: list[str], n: int | None = None,
                    timeout: float = 30.0) -> dict[str, Any]:
    state = scheduler.state
    running = [ws for ws in state.workers.values() if ws.status == "running"]
    wanted = min(len(running) if n is None else n, len(running))
    if wanted < 1:
        return {"status": "error", "message": f"cannot hold {n} copies on {len(running)} workers"}
    tasks = [state.tasks[k] for k in keys if k in state.tasks and state.tasks[k].state == "memory"]
    plans: dict[str, dict[str, Any]] = {}
    load = {ws: ws.nbytes for ws in running}
    for ts in tasks:
        lacking = sorted((ws for ws in running if ws not in ts.who_has),
                         key=lambda w: (load[w], w.address))
        for target in lacking[:max(0, wanted - len(ts.who_has))]:
            load[target] += ts.nbytes
            plan = plans.setdefault(target.address, {"who_has": {}, "nbytes": {}})
            plan["who_has"][ts.key] = [w.address for w in ts.who_has]
            plan["nbytes"][ts.key] = ts.nbytes
    send_plans(scheduler, plans)
    deadline = time.monotonic() + timeout
    while any(ts.state == "memory" and len(ts.who_has) < wanted for ts in tasks):
        if time.monotonic() > deadline:
            return {"status": "error", "message": f"not every key had {wanted} copies within "
                    f"timeout={timeout}s"}
        await asyncio.sleep(REPLICA_POLL_INTERVAL)  # a polling period, not a sync
    return {"status": "ok", "copies": wanted}


def send_plans(scheduler: Scheduler, plans: dict[str, dict[str, Any]]) -> None:
    """Ask each worker to fetch its plan's keys: ``{address: {"who_has", "nbytes"}}``."""
    for address, plan in plans.items():
        stream = scheduler.worker_streams.get(address)
        if stream is not None:
            try:
                stream.send({"op": "acquire-replicas", **plan})
            except CommClosedError:
                pass
