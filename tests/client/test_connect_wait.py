"""A Client waits (bounded) for a scheduler that is still starting.

On Kubernetes a notebook often connects the moment a ShoalCluster exists,
before the scheduler pod is up or its Service has an endpoint: the first
attempts are refused. Like dask's Client, shoal's retries until its timeout.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from shoal import Client, CommClosedError
from shoal.scheduler import Scheduler
from tests.polling import async_wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_client_connects_to_a_scheduler_started_after_it(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="shoal.client._client")
    port = free_port()

    async def main() -> int:
        connecting = asyncio.ensure_future(
            Client(f"tcp://127.0.0.1:{port}", asynchronous=True, timeout=30))
        await async_wait_for(lambda: "connecting to" in caplog.text, timeout=10,
                             what="a first refused attempt")
        assert not connecting.done()  # nothing listens yet: still trying
        scheduler = await Scheduler(port=port).start()
        try:
            client = await asyncio.wait_for(connecting, 30)
            try:
                return (await client.scheduler_info())["address"].count(str(port))
            finally:
                await client.close()
        finally:
            await scheduler.close()

    assert asyncio.run(main()) == 1


def test_a_client_gives_up_after_its_timeout_naming_it() -> None:
    port = free_port()

    async def main() -> None:
        await Client(f"tcp://127.0.0.1:{port}", asynchronous=True, timeout=0.5)

    with pytest.raises(CommClosedError, match=r"within timeout=0\.5s"):
        asyncio.run(main())
