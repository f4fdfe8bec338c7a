"""``client.restart()`` on a multi-process cluster: every task is forgotten
(futures cancelled) and every worker is a fresh process afterwards."""

from __future__ import annotations

import os
import sys

import pytest

from shoal import Client, wait
from shoal.comm import RemoteError

NEVER = {"resources": {"no-such-resource": 1}}


def mark() -> None:
    sys.shoal_test_marker = True  # type: ignore[attr-defined]


def marked() -> bool:
    return hasattr(sys, "shoal_test_marker")


def test_restart_cancels_every_future_and_starts_fresh_workers(proc_client):
    held = proc_client.submit(sum, [1, 2])
    assert held.result() == 3
    stuck = proc_client.submit(sum, [3, 4], **NEVER)
    proc_client.run(mark)
    pids = set(proc_client.run(os.getpid).values())
    workers = proc_client.restart(timeout=60)
    assert len(workers) == 2
    wait([held, stuck], timeout=10)
    assert held.cancelled() and stuck.cancelled()
    assert not any(proc_client.run(marked).values())
    assert not pids & set(proc_client.run(os.getpid).values())
    again = proc_client.submit(sum, [1, 2])  # the key of a cancelled future, anew
    assert again.result() == 3 and not again.cancelled()
    assert proc_client.scheduler_info()["tasks"] == 1  # nothing from before the restart


def test_restart_without_nannies_is_refused_and_cancels_nothing(inproc_cluster):
    with Client(inproc_cluster, timeout=20) as client:
        kept = client.submit(sum, [7, 8])
        assert kept.result() == 15
        with pytest.raises(RemoteError, match="without a nanny"):
            client.restart()
        assert kept.result() == 15 and not kept.cancelled()
