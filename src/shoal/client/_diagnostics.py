"""What ran where and when: ``get_task_stream`` and ``performance_report``.

The scheduler records each finished task's worker, start and stop (the
task stream its dashboard draws, newest 2,000 kept).  ``get_task_stream``
returns those records in dask.distributed's shape; used as a context
manager it collects what finished inside the block.  ``performance_report``
writes the same as a self-contained HTML page (inline SVG and styles, no
script, no network) that opens offline, with the workers' statistical
profile of the block (``client.profile``).
"""

from __future__ import annotations

import html
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Self

from ._client import Client, default_client
from ._profile import PROFILE_STYLE, profile_section


def task_stream(client: Client, since: float = 0.0) -> list[dict[str, Any]]:
    """Finished tasks since ``since`` (a time.time()), oldest first, dask's record shape."""
    entries = client.sync(lambda: client.ask_scheduler("get_task_stream", since=since))
    return [{"key": e["key"], "prefix": e["prefix"], "worker": e["worker"], "status": "OK",
             "startstops": [{"action": "compute", "start": e["start"], "stop": e["stop"]}]}
            for e in entries]


class get_task_stream:  # lower case: dask.distributed's name, used like a function
    """``with get_task_stream() as ts: ...`` then ``ts.data``: what ran in the block."""

    def __init__(self, client: Client | None = None) -> None:
        self.client = client or default_client()
        self.data: list[dict[str, Any]] = []
        self._start = 0.0

    def __enter__(self) -> Self:
        self._start = time.time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.data = task_stream(self.client, self._start)


class performance_report:  # lower case: dask.distributed's name
    """``with performance_report(filename="report.html"): ...`` writes the report on exit."""

    def __init__(self, filename: str = "dask-report.html", client: Client | None = None) -> None:
        self.filename = filename
        self._stream = get_task_stream(client)

    def __enter__(self) -> Self:
        self._stream.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.__exit__(*exc)
        tree = self._stream.client.profile(start=self._stream._start)
        Path(self.filename).write_text(report_html(self._stream.data, self._stream._start, tree))


def report_html(records: list[dict[str, Any]], start: float,
                profile: dict[str, Any] | None = None) -> str:
    """The report page: totals per task prefix, and a timeline per worker (inline SVG)."""
    end = max((r["startstops"][0]["stop"] for r in records), default=start)
    span = max(end - start, 1e-6)
    by_prefix: dict[str, list[float]] = defaultdict(list)
    rows: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for r in records:
        ss = r["startstops"][0]
        by_prefix[r["prefix"]].append(ss["stop"] - ss["start"])
        rows[r["worker"]].append((ss["start"], ss["stop"], r["prefix"]))
    table = "".join(
        f"<tr><td>{html.escape(p)}</td><td>{len(d)}</td><td>{sum(d):.3f}</td></tr>"
        for p, d in sorted(by_prefix.items(), key=lambda kv: -sum(kv[1])))
    width, lane = 900, 18
    bars = []
    for i, (worker, spans) in enumerate(sorted(rows.items())):
        bars.append(f'<text x="0" y="{i * lane + 13}" font-size="11">{html.escape(worker)}</text>')
        for s, e, prefix in spans:
            x = 220 + (s - start) / span * (width - 220)
            w = max((e - s) / span * (width - 220), 0.5)
            bars.append(f'<rect x="{x:.1f}" y="{i * lane + 2}" width="{w:.1f}" height="14" '
                        f'fill="#3b7dd8"><title>{html.escape(prefix)}: {e - s:.4f}s</title></rect>')
    height = max(len(rows), 1) * lane
    profiled = "" if profile is None else (
        f"<h2>Profile ({profile['count']} samples)</h2>{profile_section(profile)}")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>shoal performance report"
        "</title><style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;"
        f"text-align:left}}{PROFILE_STYLE}</style></head><body><h1>shoal performance report</h1>"
        f"<p>{len(records)} tasks in {span:.3f} s on {len(rows)} workers.</p>"
        "<h2>Task stream</h2>"
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f"{''.join(bars)}</svg><h2>By task prefix</h2><table><tr><th>prefix</th>"
        f"<th>tasks</th><th>compute seconds</th></tr>{table}</table>{profiled}</body></html>"
    )
