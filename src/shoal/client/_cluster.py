"""Questions and calls about the cluster as a whole, for ``Client``:
``run_on_scheduler``, ``wait_for_workers``, ``has_what``, ``nthreads``,
``restart``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..protocol import deserialize, serialize

if TYPE_CHECKING:
    from ._client import Client

#: How often ``wait_for_workers`` asks the scheduler.
WORKER_POLL_INTERVAL = 0.1


def run_on_scheduler(client: Client, function: Callable[..., Any], args: tuple,
                     kwargs: dict[str, Any]) -> Any:
    ser, ser_args, ser_kwargs = serialize(function), serialize(args), serialize(kwargs)

    async def run() -> Any:
        answer = await client.pool.request(client.scheduler_address, "run_function",
                                           function=ser, args=ser_args, kwargs=ser_kwargs)
        return deserialize(answer["result"])

    return client.sync(run)


def wait_for_workers(client: Client, n_workers: int, timeout: float | None) -> Any:
    if n_workers < 0:
        raise ValueError(f"n_workers must be 0 or more, got {n_workers}")

    async def wait() -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = await client.pool.request(client.scheduler_address, "scheduler_info")
            if len(info["workers"]) >= n_workers:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"only {len(info['workers'])} of {n_workers} workers "
                                   f"joined within the timeout of {timeout}s")
            await asyncio.sleep(WORKER_POLL_INTERVAL)  # a polling period, not a sync

    return client.sync(wait)


def _only(mapping: dict[str, Any], workers: list[str] | None) -> dict[str, Any]:
    return mapping if workers is None else {w: v for w, v in mapping.items() if w in workers}


def has_what(client: Client, workers: list[str] | None) -> Any:
    async def ask() -> dict[str, list[str]]:
        answer = await client.pool.request(client.scheduler_address, "has_what")
        return _only(answer, workers)

    return client.sync(ask)


def nthreads(client: Client, workers: list[str] | None) -> Any:
    async def ask() -> dict[str, int]:
        info = await client.pool.request(client.scheduler_address, "scheduler_info")
        return _only({a: w["nthreads"] for a, w in info["workers"].items()}, workers)

    return client.sync(ask)


def restart(client: Client, timeout: float) -> Any:
    async def ask() -> list[str]:
        answer = await client.pool.request(client.scheduler_address, "restart", timeout=timeout)
        return answer["workers"]

    return client.sync(ask)
