"""Cluster-wide calls of a dask.distributed Client, on a multi-process cluster:
run_on_scheduler, wait_for_workers, has_what, nthreads/ncores, and
``client.run`` handing ``dask_worker=`` to functions that ask for it."""

from __future__ import annotations

import os

import pytest


def scheduler_facts(dask_scheduler, extra: int = 0) -> tuple[str, int, int]:
    return dask_scheduler.address, os.getpid(), len(dask_scheduler.state.workers) + extra


def worker_address(prefix: str, dask_worker=None) -> str:
    return prefix + dask_worker.address


def test_run_on_scheduler_injects_the_scheduler(proc_client):
    address, pid, workers = proc_client.run_on_scheduler(scheduler_facts, extra=10)
    assert address == proc_client.scheduler_address
    assert pid != os.getpid() and workers == 12


def test_client_run_injects_dask_worker_and_passes_keywords(proc_client):
    answers = proc_client.run(worker_address, prefix="at ")
    assert answers == {address: f"at {address}" for address in answers}
    assert len(answers) == 2


def test_wait_for_workers_has_what_and_nthreads(proc_client):
    proc_client.wait_for_workers(2, timeout=20)
    with pytest.raises(TimeoutError, match=r"2 of 5 workers .* 0\.3s"):
        proc_client.wait_for_workers(5, timeout=0.3)
    future = proc_client.submit(sum, [4, 5])
    assert future.result() == 9
    holders = proc_client.who_has([future])[future.key]
    held = proc_client.has_what()
    assert [w for w, keys in held.items() if future.key in keys] == holders
    assert proc_client.has_what(workers=holders) == {holders[0]: held[holders[0]]}
    assert proc_client.nthreads() == {w: 1 for w in held} == proc_client.ncores()
