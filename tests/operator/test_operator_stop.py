"""A cluster's reconcile loop always ends when it is stopped, whatever the timing.

On Python 3.11, ``asyncio.wait_for`` drops a cancellation that arrives in the
loop iterations in which the awaited event fires. The loop used to wait for
its nudge that way, so a stop cancelling it just as it was nudged (or just as
it started waiting with a nudge left from its round) was lost: the loop went
on, its stop never returned, and the operator did not stop (kopf waits for
its cleanup handler without a bound), while the loop kept reconciling.
"""

from __future__ import annotations

import asyncio

import pytest

from shoal.operator import handlers, metrics

BOUND = 10.0  # seconds; a stop takes a few loop iterations


async def settle() -> None:
    """Let the loop task run up to its pause (a few iterations, nothing else runs)."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize("iterations", range(4))
def test_a_loop_stops_when_cancelled_as_it_is_nudged(iterations: int) -> None:
    metrics.config.reconcile_interval = 60.0  # only the nudge wakes it (restored by conftest)

    async def scenario() -> bool:
        loop = handlers.loop_for("stop-ns", f"nudged-{iterations}")
        loop.start()  # an empty body: each round returns at once, no API is called
        await settle()
        loop.nudge()
        for _ in range(iterations):
            await asyncio.sleep(0)
        stopping = asyncio.ensure_future(loop.stop())
        done, _ = await asyncio.wait({stopping}, timeout=BOUND)
        ended = bool(done) and loop.task is not None and loop.task.done()
        handlers.loops.pop(("stop-ns", f"nudged-{iterations}"), None)
        if not ended and loop.task is not None:  # (a failing run: clean up before asserting)
            loop.stopped = True
            loop.task.cancel()
            await asyncio.wait({loop.task, stopping}, timeout=BOUND)
        return ended

    assert asyncio.run(scenario()), "the loop did not stop"


def test_each_operator_run_has_its_own_loops() -> None:
    """A loop of a run that has ended is neither reused nor stopped by the next run."""
    key = ("stop-ns", "twice")

    async def first() -> handlers.ClusterLoop:
        loop = handlers.loop_for(*key)
        assert handlers.loop_for(*key) is loop  # one per cluster within a run
        return loop

    async def second(old: handlers.ClusterLoop) -> handlers.ClusterLoop:
        new = handlers.loop_for(*key)
        assert new is not old and new.owner is asyncio.get_running_loop()
        await handlers.stop_loops()
        return new

    old = asyncio.run(first())
    new = asyncio.run(second(old))
    assert new.stopped and not old.stopped and key not in handlers.loops
