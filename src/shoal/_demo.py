"""The computation behind ``shoal demo``: quality assurance over a factory.

Dask began with a manufacturer who ran many custom models of its components
over sensor telemetry: work that is neither one big array nor one big table,
but thousands of small, different Python functions wired together. This
module is that job in miniature, in pure standard-library Python:

* per batch: synthetic telemetry (seeded, so every run is reproducible, with
  injected faults as ground truth) and a robust batch baseline;
* per unit: the component models its type needs (thermal drift, a vibration
  spectrum by a small DFT, Miner's-rule wear, phase imbalance, pressure
  ripple), then a verdict that cross-checks the models against each other and
  against the batch baseline;
* per batch a consistency check over its verdicts, per line a temperature
  trend and a summary, and one plant report at the end.

The same graph builder runs on a cluster (``client.submit``/``client.map``)
or serially (plain calls), so :func:`run_demo_serial` is the reference the
distributed result must equal exactly.
"""

from __future__ import annotations

import cmath
import math
import random
import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

DEFAULT_UNITS = 1000
BATCH_SIZE = 20
LINES = 4
FAULT_RATE = 0.05
LOT_FAULT_RATE = 0.08
COMPOUND_LEVEL = 0.7
OUTLIER_Z = 4.0
SUSPECT_BATCH_FRACTION = 0.25
TOP_ANOMALIES = 10
TEMPERATURE_SAMPLES = 96
WAVE_SAMPLES = 64

COMPONENTS = ("bearing", "motor", "pump", "gearbox")
MODELS_BY_COMPONENT = {
    "bearing": ("thermal_drift", "vibration_spectrum", "wear_accumulation"),
    "motor": ("thermal_drift", "phase_imbalance", "vibration_spectrum"),
    "pump": ("pressure_ripple", "wear_accumulation", "thermal_drift"),
    "gearbox": ("vibration_spectrum", "wear_accumulation", "thermal_drift"),
}
FAULTS_BY_MODEL = {
    "thermal_drift": "overheating", "vibration_spectrum": "bearing_defect",
    "wear_accumulation": "overload", "phase_imbalance": "phase_loss",
    "pressure_ripple": "cavitation",
}


# --- telemetry ---------------------------------------------------------------------------------

def component_of(unit: int, seed: int) -> str:
    """The component type of a unit (known when the graph is built)."""
    return COMPONENTS[random.Random(f"component:{seed}:{unit}").randrange(len(COMPONENTS))]


def _wave(rng: random.Random, parts: Iterable[tuple[float, float]], noise: float) -> list[float]:
    phases = [(amp, freq, rng.uniform(0, 2 * math.pi)) for amp, freq in parts]
    return [sum(a * math.sin(2 * math.pi * f * k / WAVE_SAMPLES + p) for a, f, p in phases)
            + rng.gauss(0, noise) for k in range(WAVE_SAMPLES)]


def _unit_signals(rng: random.Random, component: str, fault: str | None,
                  ambient: float, soft_lot: bool) -> dict[str, Any]:
    needs = set(MODELS_BY_COMPONENT[component])
    strength = rng.uniform(0.5, 1.5) if fault else 0.0  # faults range from subtle to obvious
    out: dict[str, Any] = {}
    slope = 0.02 + (0.08 * strength if fault == "overheating" else 0.0)
    base = ambient + 45 + rng.gauss(0, 0.6)
    out["temperature"] = [base + slope * k + rng.gauss(0, 0.4) for k in range(TEMPERATURE_SAMPLES)]
    if "vibration_spectrum" in needs:
        defect = [(0.6 * strength, 23)] if fault == "bearing_defect" else []
        out["vibration"] = _wave(rng, [(1.0, 4), (0.3, 8)] + defect, 0.15)
    if "wear_accumulation" in needs:
        scale = (1 + 0.6 * strength if fault == "overload" else 1.0) * (1.45 if soft_lot else 1.0)
        out["loads"] = [scale * rng.lognormvariate(math.log(120), 0.25) for _ in range(40)]
    if "phase_imbalance" in needs:
        amps = [10 * (1 + rng.gauss(0, 0.01)) for _ in range(3)]
        if fault == "phase_loss":
            amps[rng.randrange(3)] *= 1 - 0.12 * strength
        out["currents"] = [_wave(rng, [(a, 3)], 0.05) for a in amps]
    if "pressure_ripple" in needs:
        dip = 0.6 * strength if fault == "cavitation" else 0.0
        out["pressure"] = [6 + 0.1 * math.sin(k / 3) + rng.gauss(0, 0.03)
                           - (dip if rng.random() < 0.1 else 0.0) for k in range(WAVE_SAMPLES)]
    return out


def generate_batch(line: int, batch: int, units: list[int], seed: int) -> dict[str, Any]:
    """Seeded telemetry of one production batch, with faults injected as ground truth."""
    rng = random.Random(f"telemetry:{seed}:{line}:{batch}")
    soft_lot = rng.random() < LOT_FAULT_RATE
    ambient = 20 + 1.5 * line + 0.08 * (batch // LINES) + rng.gauss(0, 0.5)
    records = {}
    for unit in units:
        component = component_of(unit, seed)
        fault = None
        if rng.random() < FAULT_RATE:
            fault = FAULTS_BY_MODEL[rng.choice(MODELS_BY_COMPONENT[component])]
        records[unit] = {"component": component, "fault": fault,
                         **_unit_signals(rng, component, fault, ambient, soft_lot)}
    return {"line": line, "batch": batch, "soft_lot": soft_lot, "units": records}


# --- component models --------------------------------------------------------------------------

def _result(model: str, metric: float, limit: float) -> dict[str, Any]:
    return {"model": model, "metric": metric, "severity": metric / limit}


def thermal_drift(telemetry: dict[str, Any], unit: int) -> dict[str, Any]:
    """Least-squares temperature slope, as degrees of drift over the window (limit 6 C)."""
    temps = telemetry["units"][unit]["temperature"]
    n = len(temps)
    mean_k, mean_t = (n - 1) / 2, statistics.fmean(temps)
    cov = sum((k - mean_k) * (t - mean_t) for k, t in enumerate(temps))
    var = sum((k - mean_k) ** 2 for k in range(n))
    return _result("thermal_drift", cov / var * n, 6.0)


def dft_magnitudes(samples: list[float]) -> list[float]:
    """Magnitudes of the one-sided discrete Fourier transform (bins 0..n/2)."""
    n = len(samples)
    return [abs(sum(x * cmath.exp(-2j * math.pi * b * k / n) for k, x in enumerate(samples)))
            for b in range(n // 2 + 1)]


def vibration_spectrum(telemetry: dict[str, Any], unit: int) -> dict[str, Any]:
    """Share of vibration energy in the high band (bearing defects ring there; limit 15%)."""
    energy = [m * m for m in dft_magnitudes(telemetry["units"][unit]["vibration"])[1:]]
    high = sum(energy[len(energy) // 2:])
    return _result("vibration_spectrum", high / sum(energy), 0.15)


def wear_accumulation(telemetry: dict[str, Any], unit: int) -> dict[str, Any]:
    """Miner's-rule damage from load amplitudes on a Basquin curve (limit: damage 1)."""
    loads = telemetry["units"][unit]["loads"]
    return _result("wear_accumulation", math.fsum((s / 120.0) ** 3 for s in loads) / 160.0, 1.0)


def phase_imbalance(telemetry: dict[str, Any], unit: int) -> dict[str, Any]:
    """Largest deviation of a phase's RMS current from the mean (limit 5%)."""
    rms = [math.sqrt(statistics.fmean(x * x for x in phase))
           for phase in telemetry["units"][unit]["currents"]]
    mean = statistics.fmean(rms)
    return _result("phase_imbalance", max(abs(r - mean) for r in rms) / mean, 0.05)


def pressure_ripple(telemetry: dict[str, Any], unit: int) -> dict[str, Any]:
    """Peak-to-peak pressure over mean pressure (cavitation dips; limit 15%)."""
    pressure = telemetry["units"][unit]["pressure"]
    return _result("pressure_ripple", (max(pressure) - min(pressure)) / statistics.fmean(pressure),
                   0.15)


MODELS: dict[str, Callable[[dict[str, Any], int], dict[str, Any]]] = {
    "thermal_drift": thermal_drift, "vibration_spectrum": vibration_spectrum,
    "wear_accumulation": wear_accumulation, "phase_imbalance": phase_imbalance,
    "pressure_ripple": pressure_ripple,
}


# --- checks and summaries ----------------------------------------------------------------------

def batch_baseline(telemetry: dict[str, Any]) -> dict[str, Any]:
    """Median and MAD of the units' mean temperature: what "normal" is in this batch."""
    means = [statistics.fmean(r["temperature"]) for r in telemetry["units"].values()]
    median = statistics.median(means)
    mad = statistics.median(abs(m - median) for m in means)
    return {"line": telemetry["line"], "batch": telemetry["batch"],
            "median_temperature": median, "mad_temperature": mad}


def unit_verdict(unit: int, telemetry: dict[str, Any], baseline: dict[str, Any],
                 models: list[dict[str, Any]]) -> dict[str, Any]:
    """Cross-check one unit's models against each other and against its batch."""
    record = telemetry["units"][unit]
    severity = {m["model"]: m["severity"] for m in models}
    reasons = sorted(name for name, s in severity.items() if s >= 1.0)
    strong = sorted(name for name, s in severity.items() if COMPOUND_LEVEL <= s < 1.0)
    if len(strong) >= 2:
        reasons.append("compound:" + "+".join(strong))
    spread = 1.4826 * baseline["mad_temperature"] + 1e-9
    z = (statistics.fmean(record["temperature"]) - baseline["median_temperature"]) / spread
    if abs(z) > OUTLIER_Z:
        reasons.append("temperature_outlier")
    score = math.sqrt(math.fsum(s * s for s in severity.values())) + 0.1 * max(0.0, abs(z) - 2)
    return {"unit": unit, "line": telemetry["line"], "batch": telemetry["batch"],
            "component": record["component"], "fault": record["fault"],
            "score": round(score, 6), "reasons": reasons, "flagged": bool(reasons)}


def batch_consistency(verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch where many units fail together points at a bad lot, not bad luck."""
    flagged = [v for v in verdicts if v["flagged"]]
    return {"line": verdicts[0]["line"], "batch": verdicts[0]["batch"], "units": len(verdicts),
            "flagged": len(flagged), "suspect": len(flagged) > SUSPECT_BATCH_FRACTION * len(verdicts),
            "verdicts": verdicts}


def line_trend(baselines: list[dict[str, Any]]) -> float:
    """Least-squares slope of the batch median temperature along a line (C per batch)."""
    if len(baselines) < 2:
        return 0.0
    ys = [b["median_temperature"] for b in baselines]
    mean_x, mean_y = (len(ys) - 1) / 2, statistics.fmean(ys)
    num = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(ys))
    return round(num / sum((x - mean_x) ** 2 for x in range(len(ys))), 6)


def line_summary(line: int, batches: list[dict[str, Any]], trend: float) -> dict[str, Any]:
    """One production line: counts, suspect batches, worst unit, temperature trend."""
    verdicts = [v for b in batches for v in b["verdicts"]]
    worst = max(verdicts, key=lambda v: (v["score"], -v["unit"]))
    return {"line": line, "units": len(verdicts), "flagged": sum(b["flagged"] for b in batches),
            "suspect_batches": [b["batch"] for b in batches if b["suspect"]],
            "temperature_trend": trend, "worst_unit": worst["unit"], "worst_score": worst["score"],
            "verdicts": verdicts}


def plant_report(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The final summary over all lines."""
    verdicts = [v for line in lines for v in line["verdicts"]]
    flagged = [v for v in verdicts if v["flagged"]]
    top = sorted(flagged, key=lambda v: (-v["score"], v["unit"]))[:TOP_ANOMALIES]
    return {
        "units": len(verdicts),
        "flagged_units": len(flagged),
        "faults_injected": sum(1 for v in verdicts if v["fault"]),
        "faults_caught": sum(1 for v in flagged if v["fault"]),
        "false_alarms": sum(1 for v in flagged if not v["fault"]),
        "flagged_by_component": dict(sorted(Counter(v["component"] for v in flagged).items())),
        "flagged_by_reason": dict(sorted(Counter(r for v in flagged for r in v["reasons"]).items())),
        "lines": [{k: v for k, v in line.items() if k != "verdicts"} for line in lines],
        "top_anomalies": [{k: v[k] for k in ("unit", "line", "batch", "component", "score",
                                              "reasons", "fault")} for v in top],
    }


# --- the graph ---------------------------------------------------------------------------------

class _Graph:
    """Counts tasks while handing them to ``submit``/``map`` (a client's, or plain calls)."""

    def __init__(self, submit: Callable[..., Any], map_: Callable[..., list[Any]]) -> None:
        self._submit, self._map, self.tasks = submit, map_, 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.tasks += 1
        return self._submit(fn, *args)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> list[Any]:
        out = list(self._map(fn, *iterables))
        self.tasks += len(out)
        return out


def plan_batches(units: int) -> list[tuple[int, int, list[int]]]:
    """``(line, batch, unit ids)`` for every batch; batch ``b`` runs on line ``b % LINES``."""
    if units < 1:
        raise ValueError(f"units must be at least 1, got {units}")
    return [(b % LINES, b, list(range(start, min(units, start + BATCH_SIZE))))
            for b, start in enumerate(range(0, units, BATCH_SIZE))]


def _build(graph: _Graph, units: int, seed: int) -> Any:
    """Wire the whole job; returns the handle of the plant report."""
    plan = plan_batches(units)
    telemetry = graph.map(generate_batch, [p[0] for p in plan], [p[1] for p in plan],
                          [p[2] for p in plan], [seed] * len(plan))
    baselines = graph.map(batch_baseline, telemetry)
    consistency: dict[int, list[Any]] = {}
    for (line, _, unit_ids), tel, base in zip(plan, telemetry, baselines, strict=True):
        verdicts = []
        for unit in unit_ids:
            models = [graph.submit(MODELS[name], tel, unit)
                      for name in MODELS_BY_COMPONENT[component_of(unit, seed)]]
            verdicts.append(graph.submit(unit_verdict, unit, tel, base, models))
        consistency.setdefault(line, []).append(graph.submit(batch_consistency, verdicts))
    summaries = []
    for line, batches in sorted(consistency.items()):
        line_baselines = [b for p, b in zip(plan, baselines, strict=True) if p[0] == line]
        trend = graph.submit(line_trend, line_baselines)
        summaries.append(graph.submit(line_summary, line, batches, trend))
    return graph.submit(plant_report, summaries)


def _finish(report: dict[str, Any], graph: _Graph, units: int, seed: int) -> dict[str, Any]:
    return {"seed": seed, "units": units, "batches": len(plan_batches(units)),
            "tasks": graph.tasks, **report}


def run_demo(client: Any, units: int = DEFAULT_UNITS, seed: int = 0) -> dict[str, Any]:
    """Run the job on a cluster through ``client``; the summary is deterministic for a seed."""
    graph = _Graph(client.submit, client.map)
    report = _build(graph, units, seed).result()
    return _finish(report, graph, units, seed)


def run_demo_serial(units: int = DEFAULT_UNITS, seed: int = 0) -> dict[str, Any]:
    """The same job as plain function calls: the reference for :func:`run_demo`."""
    graph = _Graph(lambda fn, *args: fn(*args),
                   lambda fn, *iterables: [fn(*args) for args in zip(*iterables, strict=True)])
    return _finish(_build(graph, units, seed), graph, units, seed)


# --- the printed report ------------------------------------------------------------------------

def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def format_report(summary: dict[str, Any], elapsed_seconds: float) -> str:
    """A human-readable report of a :func:`run_demo` summary."""
    units, flagged = summary["units"], summary["flagged_units"]
    rate = summary["tasks"] / elapsed_seconds if elapsed_seconds > 0 else float("inf")
    out = [
        (f"shoal demo: quality assurance of {units:,} units on {len(summary['lines'])} lines "
         f"({summary['batches']} batches, seed {summary['seed']})"),
        f"{summary['tasks']:,} tasks in {elapsed_seconds:.2f} s ({rate:,.0f} tasks/s)",
        "",
        (f"flagged units: {flagged} ({flagged / units:.1%}); injected faults caught: "
         f"{summary['faults_caught']}/{summary['faults_injected']}; "
         f"other flags: {summary['false_alarms']}"),
        f"by component: {_counts(summary['flagged_by_component'])}",
        f"by reason:    {_counts(summary['flagged_by_reason'])}",
        "",
        (f"{'line':<6}{'units':>7}{'flagged':>9}{'trend C/batch':>15}  {'worst unit':<12}"
         "suspect batches"),
    ]
    for line in summary["lines"]:
        worst = f"{line['worst_unit']} ({line['worst_score']:.2f})"
        suspects = ", ".join(str(b) for b in line["suspect_batches"]) or "-"
        out.append(f"L{line['line']:<5}{line['units']:>7}{line['flagged']:>9}"
                   f"{line['temperature_trend']:>15.3f}  {worst:<12}{suspects}")
    out += ["", "top anomalies:",
            f"  {'unit':>6}  {'line':>4}  {'batch':>5}  {'component':<10}{'score':>7}  reasons"]
    for v in summary["top_anomalies"]:
        out.append(f"  {v['unit']:>6}  L{v['line']:<3}  {v['batch']:>5}  {v['component']:<10}"
                   f"{v['score']:>7.2f}  {', '.join(v['reasons'])}")
    return "\n".join(out)
