"""Dropping input futures right after submitting their consumer loses nothing."""

from __future__ import annotations

from shoal import wait


def inc(x: float) -> float:
    return x + 1


def test_inputs_dropped_right_after_submit_are_kept_for_the_consumer(client):
    for t in range(30):
        inputs = client.map(inc, [t, t + 0.5])
        wait(inputs, timeout=10)
        unrelated = client.submit(inc, -t - 1.5)
        del unrelated  # queues a release on the loop
        total = client.submit(sum, inputs)
        del inputs  # released while the graph may still be queued
        assert total.result(timeout=10) == 2 * t + 2.5
