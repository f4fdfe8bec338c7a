"""Fixtures of the client tests: a client of the multi-process cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shoal import Client, LocalCluster


@pytest.fixture
def proc_client(proc_cluster: LocalCluster) -> Iterator[Client]:
    with Client(proc_cluster, timeout=20) as c:
        yield c
