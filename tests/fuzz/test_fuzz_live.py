"""A short live fuzz run in the default suite: real processes, loopback only.

Bounded by a count and a time; ``python -m tests.fuzz --minutes 10`` is the
long run.  The seed is fixed so the suite does the same every time.
"""

from __future__ import annotations

from .live import run_live


def test_live_scheduler_and_worker_survive_fuzzing_over_tcp_and_http():
    tally = run_live(inputs=3000, seconds=45, seed=20261201)
    assert tally.inputs >= 300, tally.as_dict()
    assert (tally.crashes, tally.hangs, tally.stopped_serving) == (0, 0, 0), tally.as_dict()
