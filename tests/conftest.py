"""Shared fixtures: clusters in one process and across processes."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import psutil
import pytest

from shoal import Client, LocalCluster


@pytest.fixture(scope="module")
def inproc_cluster() -> Iterator[LocalCluster]:
    """Scheduler and two workers in a background loop of this process, over TCP."""
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False,
                      dashboard_address=None, memory_limit="1GiB") as cluster:
        yield cluster


@pytest.fixture
def client(inproc_cluster: LocalCluster) -> Iterator[Client]:
    with Client(inproc_cluster, timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def proc_cluster() -> Iterator[LocalCluster]:
    """A scheduler and two nanny-supervised workers, each its own process."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit="2GiB") as cluster:
        yield cluster


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """Reference counting alone, as in a server whose old objects are frozen
    (see ``shoal._gc``): what a test then finds still alive leaked."""
    enabled = gc.isenabled()
    gc.disable()
    yield
    if enabled:
        gc.enable()


@pytest.fixture(scope="session", autouse=True)
def no_stray_processes() -> Iterator[None]:
    """Every process a test starts must be gone when the session ends."""
    me = psutil.Process(os.getpid())
    before = {p.pid for p in me.children(recursive=True)}
    yield
    leftover = [p for p in me.children(recursive=True) if p.pid not in before]
    _gone, alive = psutil.wait_procs(leftover, timeout=10)
    for p in alive:
        p.kill()
    assert not alive, f"processes left behind: {[p.cmdline() for p in alive]}"
