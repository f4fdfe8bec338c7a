"""Adaptive scaling of a cluster to the scheduler's wanted number of workers.

Scaling up happens at once; scaling down only once the target has stayed
below the current size for ``wait_count`` checks in a row, so a brief lull
between two phases of a computation does not throw away warm workers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from ..comm import spawn

logger = logging.getLogger(__name__)


class Scalable(Protocol):
    workers: dict[str, Any]
    scheduler_address: str

    async def _scale(self, n: int) -> None: ...

    async def scheduler_info(self) -> dict[str, Any]: ...


def decide(current: int, target: int, minimum: int, maximum: int, lower_streak: int,
           wait_count: int) -> tuple[int, int]:
    """The size to scale to now and the updated count of checks below current."""
    target = max(minimum, min(maximum, target))
    if target > current:
        return target, 0
    if target < current:
        lower_streak += 1
        if lower_streak >= wait_count:
            return target, 0
        return current, lower_streak
    return current, 0


class Adaptive:
    def __init__(self, cluster: Any, minimum: int = 0, maximum: int = 10**6,
                 interval: float = 1.0, wait_count: int = 3) -> None:
        if minimum < 0 or maximum < minimum:
            raise ValueError(f"need 0 <= minimum <= maximum, got {minimum}, {maximum}")
        self.cluster = cluster
        self.minimum = minimum
        self.maximum = maximum
        self.interval = interval
        self.wait_count = wait_count
        self._streak = 0
        self._task: asyncio.Task | None = None
        self.history: list[tuple[int, int]] = []  # (target, decided size)

    def start(self) -> None:
        self._task = spawn(self._run(), "adaptive scaling")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def step(self) -> int:
        pool = self.cluster.pool
        answer = await pool.request(self.cluster.scheduler_address, "adaptive_target")
        current = len(self.cluster.workers)
        size, self._streak = decide(current, answer["workers"], self.minimum, self.maximum,
                                    self._streak, self.wait_count)
        self.history.append((answer["workers"], size))
        if size != current:
            logger.info("adaptive: scaling from %d to %d workers", current, size)
            await self.cluster._scale(size)
        return size

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except (OSError, ConnectionError) as exc:
                logger.warning("adaptive scaling step failed: %s", exc)
            await asyncio.sleep(self.interval)  # the adaptation period
