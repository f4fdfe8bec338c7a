"""shoal against dask.distributed and Ray on the same workloads, in one run.

Usage::

    python benchmarks/bench.py                  # everything, both systems
    python benchmarks/bench.py --quick          # smaller sizes, a smoke run
    python benchmarks/bench.py --only roundtrip,tree --systems dask --json out.json
    python benchmarks/bench.py --tls            # what TLS costs each system (_tls.py)

Every (system, workload) pair runs in its own child process (a fresh cluster,
nothing left over from the previous workload) with a time limit; when the
limit passes the child's whole process group is killed. The parent prints
the machine, the versions, and a table of the figures with the ratios shoal / dask,
shoal / ray and shoal / this machine's floor (measured in the same run),
judged against the targets of the performance goals (see README.md).
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
    """One row of the table: where to find it, and what shoal must reach.

    ``targets`` are ``(against, ratio)``: shoal / dask, shoal / ray or
    shoal / floor must be <= ``ratio`` (lower better) or >= it (higher
    better); ``abs`` compares shoal's own figure with ``ratio``.
    """

    key: str
    label: str
    unit: str
    lower_is_better: bool
    targets: tuple[tuple[str, float], ...]
    workload: str
    floor: str | None = None  # the key of the machine's floor for this figure


METRICS = (
    Metric("roundtrip_median_ms", "round trip, median", "ms", True,
           (("ray", 1 / 3), ("floor", 1.5)), "roundtrip", "floor_roundtrip_ms"),
    Metric("roundtrip_p99_ms", "round trip, p99", "ms", True, (("abs", 1.0),), "roundtrip"),
    Metric("independent_tasks_per_s", "independent tasks (map+gather)", "tasks/s", False,
           (("dask", 30.0), ("ray", 10.0)), "independent"),
    Metric("tree_tasks_per_s", "tree reduction (dependent)", "tasks/s", False,
           (("dask", 25.0),), "tree"),
    Metric("notebook_tasks_per_s", "tree of notebook functions", "tasks/s", False,
           (("dask", 25.0),), "notebook"),
    Metric("transfer_MB_per_s", "worker-to-worker transfer, numpy", "MB/s", False,
           (("dask", 2.0), ("ray", 1.0), ("floor", 0.6)), "transfer", "floor_socket_MB_per_s"),
    Metric("transfer_bytes_MB_per_s", "worker-to-worker transfer, bytes", "MB/s", False,
           (("dask", 2.0), ("ray", 1.0), ("floor", 0.6)), "transfer", "floor_socket_MB_per_s"),
    Metric("tcp_MB_per_s", "transfer over TCP only, numpy", "MB/s", False,
           (("dask", 2.0), ("floor", 0.6)), "tcp", "floor_socket_MB_per_s"),
    Metric("tcp_bytes_MB_per_s", "transfer over TCP only, bytes", "MB/s", False,
           (("dask", 2.0), ("floor", 0.6)), "tcp", "floor_socket_MB_per_s"),
    Metric("memory_bytes_per_task", "scheduler memory per held task", "B/task", True,
           (("dask", 1.0), ("abs", 1000.0)), "memory"),
    Metric("million_seconds", "1M tasks at once: wall time", "s", True, (("abs", 60.0),),
           "million"),
    Metric("million_scheduler_bytes_per_task", "1M tasks: scheduler memory", "B/task", True,
           (("abs", 1000.0),), "million"),
    Metric("million_client_bytes_per_task", "1M tasks: client memory", "B/task", True,
           (("abs", 500.0),), "million"),
    Metric("million_health_max_ms", "1M tasks: /health slowest answer", "ms", True,
           (("abs", 100.0),), "million"),
    Metric("million_dashboard_max_ms", "1M tasks: dashboard slowest answer", "ms", True,
           (("abs", 100.0),), "million"),
    Metric("array_seconds", "dask.array (x + x.T).mean(axis=0)", "s", True,
           (("dask", 1.0),), "array"),
    Metric("dataframe_seconds", "dask.dataframe groupby-aggregate", "s", True,
           (("dask", 1.0),), "dataframe"),
)
WORKLOAD_NAMES = ("floors", "roundtrip", "independent", "tree", "notebook", "transfer", "tcp",
                  "memory", "million", "array", "dataframe")
#: Which systems run each workload ("machine": the floors; dask stalls on a million
#: tasks and Ray has no separate scheduler process to measure memory of).
WORKLOAD_SYSTEMS = {"floors": ("machine",), "memory": ("shoal", "dask"), "million": ("shoal",),
                    "tcp": ("shoal", "dask"), "notebook": ("shoal", "dask")}
TIMEOUTS = {"memory": MEMORY_TIMEOUT, "million": 900.0}


def run_child(system: str, workload: str, quick: bool) -> None:
    """Child mode: run one workload on one system and print its metrics as JSON."""
    _systems.ensure_importable()
    import _workloads

    os.environ[_profile.LABEL_VAR] = f"{system}-{workload}"
    sizes = _workloads.QUICK if quick else _workloads.FULL
    if system == "machine":
        import _floors

        metrics = _floors.floors(sizes)
    elif system == "ray":
        import _ray_workloads

        metrics = _ray_workloads.WORKLOADS[workload](sizes)
    else:
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
        "ray": _version("ray"),
        "numpy": _version("numpy"),
    }


def _ratio(metric: Metric, shoal: float | None, other: float | None) -> float | None:
    if shoal is None or other is None or other == 0:
        return None
    return shoal / other


def judge(metric: Metric, values: dict[str, float | None]) -> tuple[str, str]:
    """The targets as text, and whether shoal meets all of them ("n/a" if not measured)."""
    texts, verdicts = [], []
    for against, ratio in metric.targets:
        sign = "<=" if metric.lower_is_better else ">="
        texts.append(f"{sign} {ratio:g}" if against == "abs"
                     else f"{sign} {ratio:.3g}x {against}")
        other = 1.0 if against == "abs" else values.get(against)
        got = _ratio(metric, values.get("shoal"), other)
        if got is not None:
            verdicts.append(got <= ratio if metric.lower_is_better else got >= ratio)
    verdict = "n/a" if not verdicts else ("better" if all(verdicts) else "WORSE")
    return ", ".join(texts), verdict


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def _ratio_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}x"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The comparison table: one row per metric measured by anyone."""
    floors = results.get("machine", {}).get("floors", {})
    rows = [("metric", "unit", "shoal", "dask", "ray", "floor", "shoal/dask", "shoal/ray",
             "shoal/floor", "target", "vs target")]
    for metric in METRICS:
        values: dict[str, float | None] = {
            s: results.get(s, {}).get(metric.workload, {}).get(metric.key)
            for s in _systems.SYSTEMS}
        values["floor"] = floors.get(metric.floor) if metric.floor else None
        if all(v is None for v in values.values()):
            continue
        target, verdict = judge(metric, values)
        shoal = values["shoal"]
        rows.append((metric.label, metric.unit, _cell(shoal), _cell(values["dask"]),
                     _cell(values["ray"]), _cell(values["floor"]),
                     _ratio_cell(_ratio(metric, shoal, values["dask"])),
                     _ratio_cell(_ratio(metric, shoal, values["ray"])),
                     _ratio_cell(_ratio(metric, shoal, values["floor"])), target, verdict))
    return _table(rows)


CPU_ROLES = ("client", "client+scheduler", "scheduler", "workers", "other")


def format_cpu_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """CPU microseconds per task by process, in the timed window (not judged: explains)."""
    systems = _systems.SYSTEMS
    rows = [("CPU us/task", *systems)]
    for workload in ("independent", "tree", "notebook"):
        totals: dict[str, float] = {}
        for role in CPU_ROLES:
            key = f"{workload}_cpu_us_per_task_{role}"
            values = [results.get(s, {}).get(workload, {}).get(key) for s in systems]
            if all(v is None for v in values):
                continue
            for s, v in zip(systems, values, strict=True):
                if v is not None:
                    totals[s] = totals.get(s, 0.0) + v
            rows.append((f"{workload} {role}", *(_cell(v) for v in values)))
        if totals:
            rows.append((f"{workload} all processes", *(_cell(totals.get(s)) for s in systems)))
    if len(rows) == 1:
        return ""
    return (_table(rows) + "\n(dask's LocalCluster runs its scheduler inside the client process; "
            "Ray's scheduler row is gcs_server + raylet, other: its helper daemons)")


def format_scale_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """How the million-task workload's costs grow with the number of tasks."""
    data = results.get("shoal", {}).get("million", {})
    sizes = sorted(int(k.split("_")[1]) for k in data if k.endswith("_tasks_per_s")
                   and k.count("_") == 4)
    if not sizes:
        return ""
    columns = (("tasks/s", "tasks_per_s"), ("s", "seconds"),
               ("CPU us/task", "cpu_us_per_task_all"),
               ("sched B/task", "scheduler_bytes_per_task"),
               ("client B/task", "client_bytes_per_task"),
               ("sched peak MB", "scheduler_peak_MB"), ("/health max ms", "health_max_ms"),
               ("dashboard max ms", "dashboard_max_ms"))
    rows = [("tasks at once", *(c[0] for c in columns))]
    for n in sizes:
        rows.append((f"{n:,}", *(_cell(data.get(f"million_{n}_{c[1]}")) for c in columns)))
    return _table(rows)


def _errors(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    return [f"{system}/{workload}: {data['error']}"
            for system, by_workload in results.items()
            for workload, data in by_workload.items() if "error" in data]


def _default_timeout(workload: str, quick: bool) -> float:
    if quick:
        return QUICK_TIMEOUT
    return TIMEOUTS.get(workload, FULL_TIMEOUT)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(WORKLOAD_NAMES),
                        help=f"comma-separated workloads among {', '.join(WORKLOAD_NAMES)}")
    parser.add_argument("--systems", default=",".join(_systems.SYSTEMS),
                        help="comma-separated systems among shoal, dask, ray")
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
    if "ray" in args.systems and _version("ray") == "not installed":
        print("note: Ray is not installed (pip install ray==2.60.0): its column stays empty",
              flush=True)
        args.systems.remove("ray")
    results["machine"] = {}
    for workload in args.only:
        for system in WORKLOAD_SYSTEMS.get(workload, _systems.SYSTEMS):
            if system != "machine" and system not in args.systems:
                continue
            start = time.monotonic()
            timeout = args.timeout or _default_timeout(workload, args.quick)
            results[system][workload] = spawn_child(system, workload, args.quick, timeout,
                                                    args.profile)
            status = "error" if "error" in results[system][workload] else "ok"
            print(f"  {workload:<12} {system:<6} {status} ({time.monotonic() - start:.1f}s)",
                  flush=True)
    print()
    print(format_table(results))
    for extra in (format_cpu_table(results), format_scale_table(results)):
        if extra:
            print("\n" + extra)
    for line in _errors(results):
        print(f"\n{line}")
    if args.profile:
        for path in sorted(Path(args.profile).glob("*.txt")):
            package = {"dask": "distributed", "ray": "ray"}.get(path.name.split("-")[0], "shoal")
            print("\n" + _profile.summarize(path, package=package))
    info["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "quick": args.quick, "results": results}, fh, indent=2)
    return 1 if _errors(results) else 0


if __name__ == "__main__":
    sys.exit(main())
