"""What TLS costs: shoal plain vs shoal TLS vs dask plain vs dask TLS, in one run.

Usage::

    python benchmarks/bench.py --tls [--quick] [--json out.json]
    python benchmarks/_tls.py [--quick]          # the same, directly

Three of the workloads of bench.py (round trip, tiny-task throughput and
worker-to-worker transfer) run on each system's LocalCluster as it is, and
again with ``security=True`` (each system's ``Security.temporary()``: a fresh
CA, mutual TLS on every connection).  Each (variant, workload) runs in its
own child process, as in bench.py.  The table shows each figure and, per
system, TLS / plain: the share of its speed a system keeps under TLS.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
from typing import Any

import _systems

RESULT_MARKER = "@@TLS-RESULT@@ "
TIMEOUT = 600.0
QUICK_TIMEOUT = 180.0
VARIANTS = ("shoal", "shoal-tls", "dask", "dask-tls")
WORKLOADS = ("roundtrip", "independent", "transfer")
#: (metric key, label, unit, lower is better)
METRICS = (
    ("roundtrip_median_ms", "round trip, median", "ms", True),
    ("roundtrip_p99_ms", "round trip, p99", "ms", True),
    ("independent_tasks_per_s", "independent tasks (map+gather)", "tasks/s", False),
    ("transfer_MB_per_s", "worker-to-worker transfer", "MB/s", False),
)


def _system(variant: str) -> _systems.System:
    """The system, with ``security=True`` given to its LocalCluster for a -tls variant
    (both systems' Clients take the cluster's credentials by themselves)."""
    name, _, tls = variant.partition("-")
    system = _systems.load(name)
    if not tls:
        return system
    return _systems.System(system.name, system.version, system.client_cls,
                           functools.partial(system.cluster_cls, security=True), system.wait)


def run_child(variant: str, workload: str, quick: bool) -> None:
    _systems.ensure_importable()
    import _workloads

    sizes = _workloads.QUICK if quick else _workloads.FULL
    metrics = _workloads.WORKLOADS[workload](_system(variant), sizes)
    print(RESULT_MARKER + json.dumps(metrics), flush=True)


def spawn_child(variant: str, workload: str, quick: bool) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--child", variant, workload]
    if quick:
        command.append("--quick")
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              env=_systems.child_environment(),
                              timeout=QUICK_TIMEOUT if quick else TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return dict(json.loads(line[len(RESULT_MARKER):]))
    tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
    return {"error": f"exit code {done.returncode}:\n{tail}"}


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def _kept(plain: float | None, tls: float | None, lower_is_better: bool) -> str:
    """The share of its plain speed a system keeps under TLS (1.0 = TLS is free)."""
    if not plain or not tls:
        return "-"
    return f"{(plain / tls if lower_is_better else tls / plain):.2f}"


def format_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    header = ("metric", "unit", *VARIANTS, "shoal kept", "dask kept", "shoal-tls/dask-tls")
    rows = [header]
    for key, label, unit, lower in METRICS:
        workload = key.split("_")[0]
        values = {v: results.get(v, {}).get(workload, {}).get(key) for v in VARIANTS}
        shoal_tls, dask_tls = values["shoal-tls"], values["dask-tls"]
        versus = f"{shoal_tls / dask_tls:.3g}x" if shoal_tls and dask_tls else "-"
        rows.append((label, unit, *(_cell(values[v]) for v in VARIANTS),
                     _kept(values["shoal"], shoal_tls, lower),
                     _kept(values["dask"], dask_tls, lower), versus))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("(kept: the share of a system's plain speed left under TLS; 1.00 = free)")
    return "\n".join(lines)


def main(quick: bool = False, json_path: str | None = None) -> int:
    results: dict[str, dict[str, dict[str, Any]]] = {v: {} for v in VARIANTS}
    for workload in WORKLOADS:
        for variant in VARIANTS:
            results[variant][workload] = spawn_child(variant, workload, quick)
            status = "error" if "error" in results[variant][workload] else "ok"
            print(f"  {workload:<12} {variant:<10} {status}", flush=True)
    print()
    print(format_table(results))
    errors = [f"{v}/{w}: {d['error']}" for v, by in results.items() for w, d in by.items()
              if "error" in d]
    for line in errors:
        print(f"\n{line}")
    if json_path:
        with open(json_path, "w") as fh:
            json.dump({"quick": quick, "tls": results}, fh, indent=2)
    return 1 if errors else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--child", nargs=2, metavar=("VARIANT", "WORKLOAD"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child[0], args.child[1], args.quick)
        sys.exit(0)
    sys.exit(main(args.quick, args.json))
