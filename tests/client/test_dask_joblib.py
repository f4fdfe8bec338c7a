"""joblib's ``Parallel`` under ``parallel_backend("shoal")`` runs on the
cluster's worker processes, and a failing call raises in the caller."""

from __future__ import annotations

import os

import pytest

joblib = pytest.importorskip("joblib")


def square_where(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fails(x: int) -> int:
    raise ValueError(f"bad {x}")


def test_parallel_runs_on_the_workers(proc_client):
    pids = set(proc_client.run(os.getpid).values())
    with joblib.parallel_backend("shoal"):
        out = joblib.Parallel(n_jobs=-1)(joblib.delayed(square_where)(i) for i in range(20))
    assert [v for v, _ in out] == [i * i for i in range(20)]
    assert {pid for _, pid in out} <= pids and os.getpid() not in pids


def test_a_failing_call_raises_in_the_caller(proc_client):
    with pytest.raises(ValueError, match="bad"), joblib.parallel_backend("shoal"):
        joblib.Parallel(n_jobs=2)(joblib.delayed(fails)(i) for i in range(4))
