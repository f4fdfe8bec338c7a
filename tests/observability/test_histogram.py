"""Durations: the lock-free histogram gives prometheus-client's exposition."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shoal._histogram import Durations

BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0)


def samples(text: bytes) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_the_same_observations_give_prometheus_clients_series():
    rng = random.Random(5)
    observed = [0.0, 0.0005, 0.001, 300.0, 301.0, *(rng.expovariate(20) for _ in range(500))]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    durations = Durations("t_seconds", "doc", BUCKETS, label="prefix")
    ours.register(durations)
    reference = Histogram("t_seconds", "doc", ["prefix"], buckets=BUCKETS, registry=theirs)
    for i, seconds in enumerate(observed):
        prefix = ("inc", "add")[i % 2]
        durations.observe(seconds, prefix) if i % 3 else durations.observe_many([seconds], prefix)
        reference.labels(prefix).observe(seconds)
    got, want = samples(generate_latest(ours)), samples(generate_latest(theirs))
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), key
    assert durations.count("inc") + durations.count("add") == len(observed)


def test_without_a_label_and_before_any_observation():
    durations = Durations("u_seconds", "doc", (1.0, 0.1))
    assert list(durations.family().samples) == []
    durations.observe_many([0.05, 0.5, 5.0])
    got = {(s.name, s.labels.get("le")): s.value for s in durations.family().samples}
    assert got[("u_seconds_bucket", "0.1")] == 1 and got[("u_seconds_bucket", "1.0")] == 2
    assert got[("u_seconds_bucket", "+Inf")] == 3 and got[("u_seconds_count", None)] == 3
    assert abs(got[("u_seconds_sum", None)] - 5.55) < 1e-9
