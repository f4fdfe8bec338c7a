"""Diagnostics on a multi-process cluster: the task stream (call and context
manager), a performance report that is one self-contained HTML file, and the
logs of the workers, the scheduler and the cluster."""

from __future__ import annotations

import logging
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
    assert "<h2>Profile (" in page  # the workers' samples of the block
    assert not re.search(r"""(src|href)\s*=|url\(|<script|<link""", page)  # opens offline


def log_a_warning(text: str) -> str:
    logging.getLogger("shoal.user-task").warning(text)
    return text


def test_worker_scheduler_and_cluster_logs(proc_cluster, proc_client):
    proc_client.submit(log_a_warning, "noted-by-a-task").result()
    by_worker = proc_client.get_worker_logs()
    assert set(by_worker) == set(proc_client.nthreads())
    lines = [line for logs in by_worker.values() for _, line in logs]
    assert any("noted-by-a-task" in line for line in lines)
    assert all(level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
               for logs in by_worker.values() for level, _ in logs)
    proc_client.run_on_scheduler(log_a_warning, "noted-on-the-scheduler")
    assert any("noted-on-the-scheduler" in line for _, line in proc_client.get_scheduler_logs())
    assert len(proc_client.get_scheduler_logs(n=1)) == 1
    logs = proc_cluster.get_logs()
    assert "Scheduler" in logs and "local-0" in logs and "local-1" in logs
    assert "noted-by-a-task" in logs["local-0"] + logs["local-1"]
