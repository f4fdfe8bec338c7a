"""shoal against dask.distributed on the same workloads, in one run.

Usage::

    python benchmarks/bench.py                  # everything, both systems
    python benchmarks/bench.py --quick          # smaller sizes, a smoke run
    python benchmarks/bench.py --only roundtrip,tree --systems dask --json out.json
    python benchmarks/bench.py --tls            # what TLS costs each system (_tls.py)

Every (system, workload) pair runs in its own child process (a fresh cluster,
nothing left over from the previous workload) with a time limit; when the
limit passes the child's whole process group is killed. The parent prints
the machine, the versions, and a table of the figures with the ratio shoal /
dask judged against the targets of the performance goals (see README.md).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _profile
import _systems
import psutil

RESULT_MARKER = "@@BENCH-RESULT@@ "
FULL_TIMEOUT = 600.0
QUICK_TIMEOUT = 180.0
MEMORY_TIMEOUT = 1500.0  # dask needs ~10 minutes for 100,000 tasks on 2 cores
BUSY_LOAD = 0.5


@dataclass(frozen=True)
class Metric:
    """One row of the table: where to find it, and what shoal must reach."""

    key: str
    label: str
    unit: str
    lower_is_better: bool
    target: float  # the ratio shoal / dask must be <= (lower better) or >= (higher better)
    workload: str


METRICS = (
    Metric("roundtrip_median_ms", "round trip, median", "ms", True, 0.2, "roundtrip"),
    Metric("roundtrip_p99_ms", "round trip, p99", "ms", True, 0.2, "roundtrip"),
    Metric("independent_tasks_per_s", "independent tasks (map+gather)", "tasks/s", False, 5.0,
           "independent"),
    Metric("tree_tasks_per_s", "tree reduction (dependent)", "tasks/s", False, 5.0, "tree"),
    Metric("transfer_MB_per_s", "worker-to-worker transfer", "MB/s", False, 1.0, "transfer"),
    Metric("memory_bytes_per_task", "scheduler memory per held task", "B/task", True, 1.0,
           "memory"),
)
WORKLOAD_NAMES = ("roundtrip", "independent", "tree", "transfer", "memory")


def run_child(system: str, workload: str, quick: bool) -> None:
    """Child mode: run one workload on one system and print its metrics as JSON."""
    _systems.ensure_importable()
    import _workloads

    os.environ[_profile.LABEL_VAR] = f"{system}-{workload}"
    sizes = _workloads.QUICK if quick else _workloads.FULL
    metrics = _workloads.WORKLOADS[workload](_systems.load(system), sizes)
    print(RESULT_MARKER + json.dumps(metrics), flush=True)


def spawn_child(system: str, workload: str, quick: bool, timeout: float,
                profile_dir: str | None = None) -> dict[str, Any]:
    """Run one child process, bounded by ``timeout``; its metrics, or an ``error``."""
    command = [sys.executable, os.path.abspath(__file__), "--child", system, workload]
    if quick:
        command.append("--quick")
    env = _systems.child_environment()
    if profile_dir:
        env[_profile.ENV_VAR] = os.path.abspath(profile_dir)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return {"error": f"timed out after {timeout:.0f}s"}
    finally:
        _kill_group(proc)  # nothing the child started may outlive it
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_MARKER):
            return dict(json.loads(line[len(RESULT_MARKER):]))
    tail = "\n".join((err or out).strip().splitlines()[-12:])
    return {"error": f"exit code {proc.returncode}:\n{tail}"}


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_GB": round(psutil.virtual_memory().total / 1e9, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "shoal": _version("shoal"),
        "dask": _version("dask"),
        "distributed": _version("distributed"),
        "numpy": _version("numpy"),
    }


def judge(metric: Metric, shoal: float | None, dask: float | None) -> tuple[str, str]:
    """The ratio shoal / dask as text, and whether it is better or worse than the target."""
    if shoal is None or dask is None or dask == 0:
        return "-", "n/a"
    ratio = shoal / dask
    meets = ratio <= metric.target if metric.lower_is_better else ratio >= metric.target
    return f"{ratio:.3g}x", "better" if meets else "WORSE"


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def format_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The comparison table: one row per metric."""
    header = ("metric", "unit", "shoal", "dask", "shoal/dask", "target", "vs target")
    rows = [header]
    for metric in METRICS:
        values = {s: results.get(s, {}).get(metric.workload, {}).get(metric.key)
                  for s in _systems.SYSTEMS}
        ratio, verdict = judge(metric, values["shoal"], values["dask"])
        target = ("<= " if metric.lower_is_better else ">= ") + f"{metric.target:g}x"
        rows.append((metric.label, metric.unit, _cell(values["shoal"]), _cell(values["dask"]),
                     ratio, target, verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_cpu_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """CPU microseconds per task by process, in the timed window (not judged: explains)."""
    rows = [("CPU us/task", "shoal", "dask", "shoal/dask")]
    for workload in ("independent", "tree"):
        for role in ("client", "client+scheduler", "scheduler", "workers"):
            key = f"{workload}_cpu_us_per_task_{role}"
            values = [results.get(s, {}).get(workload, {}).get(key) for s in _systems.SYSTEMS]
            if all(v is None for v in values):
                continue
            ratio = (f"{values[0] / values[1]:.3g}x"
                     if values[0] is not None and values[1] else "-")
            rows.append((f"{workload} {role}", _cell(values[0]), _cell(values[1]), ratio))
    if len(rows) == 1:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("(dask's LocalCluster runs its scheduler inside the client process: "
                 "compare its client+scheduler row with shoal's client + scheduler)")
    return "\n".join(lines)


def _errors(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    return [f"{system}/{workload}: {data['error']}"
            for system, by_workload in results.items()
            for workload, data in by_workload.items() if "error" in data]


def _default_timeout(workload: str, quick: bool) -> float:
    if quick:
        return QUICK_TIMEOUT
    return MEMORY_TIMEOUT if workload == "memory" else FULL_TIMEOUT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(WORKLOAD_NAMES),
                        help=f"comma-separated workloads among {', '.join(WORKLOAD_NAMES)}")
    parser.add_argument("--systems", default=",".join(_systems.SYSTEMS),
                        help="comma-separated systems among shoal, dask")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--json", metavar="PATH", help="also write all figures to PATH")
    parser.add_argument("--timeout", type=float, help="seconds per system and workload")
    parser.add_argument("--profile", metavar="DIR",
                        help="record every cluster process with py-spy into DIR and print "
                             "the hottest functions")
    parser.add_argument("--tls", action="store_true",
                        help="instead: plain vs TLS, shoal and dask (see _tls.py)")
    parser.add_argument("--child", nargs=2, metavar=("SYSTEM", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.only = [w.strip() for w in args.only.split(",") if w.strip()]
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [w for w in args.only if w not in WORKLOAD_NAMES]
    unknown += [s for s in args.systems if s not in _systems.SYSTEMS]
    if unknown:
        parser.error(f"unknown workload or system: {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        run_child(args.child[0], args.child[1], args.quick)
        return 0
    if args.tls:
        import _tls

        return _tls.main(args.quick, args.json)
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    if info["load_average_1min"] > BUSY_LOAD:
        print(f"warning: the machine is busy (load {info['load_average_1min']}); "
              "absolute figures will be noisy, ratios less so", flush=True)
    results: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in args.systems}
    for workload in args.only:
        for system in args.systems:
            start = time.monotonic()
            timeout = args.timeout or _default_timeout(workload, args.quick)
            results[system][workload] = spawn_child(system, workload, args.quick, timeout,
                                                    args.profile)
            status = "error" if "error" in results[system][workload] else "ok"
            print(f"  {workload:<12} {system:<6} {status} ({time.monotonic() - start:.1f}s)",
                  flush=True)
    print()
    print(format_table(results))
    cpu_table = format_cpu_table(results)
    if cpu_table:
        print("\n" + cpu_table)
    for line in _errors(results):
        print(f"\n{line}")
    if args.profile:
        for path in sorted(Path(args.profile).glob("*.txt")):
            package = "distributed" if path.name.startswith("dask") else "shoal"
            print("\n" + _profile.summarize(path, package=package))
    info["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "quick": args.quick, "results": results}, fh, indent=2)
    return 1 if _errors(results) else 0


if __name__ == "__main__":
    sys.exit(main())
