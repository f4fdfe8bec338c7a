"""The ``shoal demo`` job: its models, its determinism, and cluster == serial."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from shoal import _demo


def _engine() -> tuple[Any, Any] | None:
    """``(Client, LocalCluster)``, or None while the engine is not importable."""
    try:
        from shoal import Client, LocalCluster
    except ImportError:
        return None
    return Client, LocalCluster


ENGINE = _engine()


def _telemetry(**signals: object) -> dict[str, object]:
    return {"line": 0, "batch": 0, "units": {7: signals}}


def test_dft_finds_the_tone_it_was_given() -> None:
    n = 64
    samples = [2.0 * math.cos(2 * math.pi * 5 * k / n) for k in range(n)]
    mags = _demo.dft_magnitudes(samples)
    assert len(mags) == n // 2 + 1
    assert max(range(len(mags)), key=mags.__getitem__) == 5
    assert mags[5] == pytest.approx(n)  # amplitude * n / 2
    assert sum(mags) - mags[5] == pytest.approx(0.0, abs=1e-9)


def test_thermal_drift_measures_the_slope_over_the_window() -> None:
    temps = [50 + 0.1 * k for k in range(_demo.TEMPERATURE_SAMPLES)]
    result = _demo.thermal_drift(_telemetry(temperature=temps), 7)
    assert result["metric"] == pytest.approx(0.1 * _demo.TEMPERATURE_SAMPLES)
    assert result["severity"] == pytest.approx(0.1 * _demo.TEMPERATURE_SAMPLES / 6.0)


def test_each_model_scores_a_faulty_unit_above_a_healthy_one() -> None:
    rng = random.Random(3)
    for component, models in _demo.MODELS_BY_COMPONENT.items():
        for model in models:
            fault = _demo.FAULTS_BY_MODEL[model]
            healthy = _demo._unit_signals(rng, component, None, 20.0, False)
            faulty = _demo._unit_signals(rng, component, fault, 20.0, False)
            fn = _demo.MODELS[model]
            assert (fn(_telemetry(**faulty), 7)["severity"]
                    > fn(_telemetry(**healthy), 7)["severity"]), (component, model)


def test_plan_covers_every_unit_once_and_refuses_nonsense() -> None:
    plan = _demo.plan_batches(95)
    assert sorted(u for _, _, units in plan for u in units) == list(range(95))
    assert [line for line, _, _ in plan] == [0, 1, 2, 3, 0]
    with pytest.raises(ValueError, match="at least 1"):
        _demo.plan_batches(0)


def test_serial_summary_is_deterministic_and_depends_on_the_seed() -> None:
    first = _demo.run_demo_serial(units=120, seed=5)
    assert first == _demo.run_demo_serial(units=120, seed=5)
    assert first != _demo.run_demo_serial(units=120, seed=6)
    json.dumps(first)  # plain data all the way down
    assert first["units"] == 120
    assert sum(line["units"] for line in first["lines"]) == 120
    assert first["faults_caught"] <= first["faults_injected"]
    assert first["flagged_units"] == first["faults_caught"] + first["false_alarms"]
    assert first["tasks"] > 4 * 120  # 3 models + 1 verdict per unit, plus batch/line tasks


def test_report_shows_the_summary() -> None:
    summary = _demo.run_demo_serial(units=60, seed=2)
    text = _demo.format_report(summary, 2.0)
    assert f"{summary['tasks']:,} tasks in 2.00 s" in text
    assert f"flagged units: {summary['flagged_units']} " in text
    for line in summary["lines"]:
        assert f"\nL{line['line']} " in text
    for anomaly in summary["top_anomalies"]:
        assert f"{anomaly['score']:.2f}" in text


@pytest.mark.skipif(ENGINE is None, reason="the shoal engine is not importable yet")
def test_distributed_run_equals_the_serial_reference() -> None:
    assert ENGINE is not None
    client_cls, cluster_cls = ENGINE
    with cluster_cls(n_workers=2, threads_per_worker=1) as cluster, client_cls(cluster) as client:
        summary = _demo.run_demo(client, units=90, seed=11)
    assert summary == _demo.run_demo_serial(units=90, seed=11)
