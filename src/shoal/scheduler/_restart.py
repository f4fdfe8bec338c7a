"""``Client.restart``: forget every task and start every worker afresh.

Every task is forgotten: each client is told its keys were cancelled and
they are released for it (published datasets and fire-and-forget holds
too), so nothing is recomputed when the workers go; then each worker is
told to exit so that its nanny starts a new process;
the answer comes once as many workers as before have joined, none of them an
old one.  Workers without a nanny could not come back, so a cluster with any
is refused before anything is cancelled.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from ..comm import CommClosedError
from ._events import CancelKeys, ClientReleasesKeys

if TYPE_CHECKING:
    from ._server import Scheduler

#: How often the scheduler looks whether the restarted workers are back.
REJOIN_POLL_INTERVAL = 0.05


async def restart(scheduler: Scheduler, timeout: float = 30.0) -> dict[str, Any]:
    refused = _without_nanny(scheduler)
    if refused is not None:
        return refused
    _forget_everything(scheduler)
    return await restart_workers(scheduler, timeout)


def _without_nanny(scheduler: Scheduler) -> dict[str, Any] | None:
    without = sorted(a for a in scheduler.state.workers
                     if not scheduler.worker_info.get(a, {}).get("nanny"))
    if without:
        return {"status": "error", "message": f"cannot restart workers without a nanny: "
                f"{without[:3]} (start them with a nanny, the default of `shoal worker`)"}
    return None


async def restart_workers(scheduler: Scheduler, timeout: float = 30.0) -> dict[str, Any]:
    """Tell every worker to exit for its nanny to start it again; answer once as
    many workers as before are back, none of them an old one (what they held is
    lost: the scheduler recomputes what is still wanted)."""
    refused = _without_nanny(scheduler)
    if refused is not None:
        return refused
    old = set(scheduler.state.workers)
    for address in old:
        stream = scheduler.worker_streams.get(address)
        if stream is not None:
            try:
                stream.send({"op": "restart"})
            except CommClosedError:
                pass
    deadline = time.monotonic() + timeout
    while old & set(scheduler.state.workers) or len(scheduler.state.workers) < len(old):
        if time.monotonic() > deadline:
            return {"status": "error", "message": f"{len(scheduler.state.workers)} of "
                    f"{len(old)} workers were back within timeout={timeout}s"}
        await asyncio.sleep(REJOIN_POLL_INTERVAL)  # a polling period, not a sync
    return {"status": "ok", "workers": sorted(scheduler.state.workers)}


def _forget_everything(scheduler: Scheduler) -> None:
    wanted: dict[str, list[str]] = {}
    for ts in scheduler.state.tasks.values():
        for client in ts.who_wants:
            wanted.setdefault(client, []).append(ts.key)
    scheduler.datasets.published.clear()
    scheduler.shared.clear()
    scheduler.holds.clear()  # their keys are released below, as any client's
    for client, keys in wanted.items():
        stream = scheduler.client_streams.get(client)
        if stream is not None:
            try:
                stream.send({"op": "cancelled-keys", "keys": keys})
            except CommClosedError:
                pass
        scheduler.handle(ClientReleasesKeys(scheduler.stimulus("restart"), client, keys))
    scheduler.handle(CancelKeys(scheduler.stimulus("restart"), "restart",
                                list(scheduler.state.tasks)))
