"""Diagnostics on a multi-process cluster: the task stream (call and context
manager) and a performance report that is one self-contained HTML file."""

from __future__ import annotations

import re
import time

from shoal import get_task_stream, performance_report


def slow_inc(x: int) -> int:
    return x + 1


def test_get_task_stream_as_call_and_as_context_manager(proc_client):
    before = time.time()
    with get_task_stream(client=proc_client) as ts:
        assert sum(proc_client.gather(proc_client.map(slow_inc, range(5)))) == 15
    keys = {r["key"] for r in ts.data}
    assert len(keys) == 5 and all(k.startswith("slow_inc-") for k in keys)
    record = ts.data[0]
    assert record["worker"] in proc_client.scheduler_info()["workers"]
    (span,) = record["startstops"]
    assert span["action"] == "compute" and span["start"] <= span["stop"]
    assert keys <= {r["key"] for r in proc_client.get_task_stream(start=before)}


def test_performance_report_is_a_self_contained_html_file(proc_client, tmp_path):
    target = tmp_path / "report.html"
    with performance_report(filename=str(target), client=proc_client):
        proc_client.gather(proc_client.map(slow_inc, range(10, 14)))
    page = target.read_text()
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert "4 tasks" in page and "slow_inc" in page and "<svg" in page
    assert not re.search(r"""(src|href)\s*=|url\(|<script|<link""", page)  # opens offline
