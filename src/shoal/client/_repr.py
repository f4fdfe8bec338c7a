"""How a Client and a LocalCluster show themselves in a notebook.

Evaluating ``client`` or ``cluster`` in Jupyter should answer the first
questions a user has: where is the scheduler, where is the dashboard, how
many workers, threads and how much memory.  These functions build that
HTML (self-contained, inline styles) from ``scheduler_info``; when the
scheduler cannot be asked without blocking (an asynchronous client) or
cannot be reached, they show what is known locally.
"""

from __future__ import annotations

import html
import logging
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds a repr waits for the scheduler before showing what it knows locally.
INFO_TIMEOUT = 5.0


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def cluster_totals(info: dict[str, Any] | None) -> dict[str, Any]:
    """Workers, threads, memory limit and memory held, from ``scheduler_info``."""
    workers = (info or {}).get("workers", {}).values()
    return {
        "workers": len(workers),
        "threads": sum(int(w.get("nthreads", 0)) for w in workers),
        "memory_limit": sum(int(w.get("memory_limit") or 0) for w in workers),
        "memory": sum(int(w.get("memory") or 0) for w in workers),
    }


def dashboard_link(client: Any) -> str | None:
    """The dashboard's URL, from the cluster object or else from the scheduler."""
    link = getattr(client.cluster, "dashboard_link", None)
    if link:
        return str(link)
    if client.asynchronous or client.status != "running":
        return None
    info = _client_info(client)
    http = info.get("http_address") if info else None
    return f"{http}/" if http else None


def _client_info(client: Any) -> dict[str, Any] | None:
    if client.asynchronous or client.status != "running":
        return None
    try:
        return client.sync(
            lambda: client.ask_scheduler("scheduler_info"),
            timeout=INFO_TIMEOUT,
        )
    except (OSError, TimeoutError, RuntimeError) as exc:
        logger.debug("no scheduler_info for the repr: %s", exc)
        return None


def _table(title: str, rows: list[tuple[str, str]]) -> str:
    cells = "".join(
        f'<tr><th style="text-align:left;padding-right:1em">{html.escape(k)}</th>'
        f'<td style="text-align:left">{v}</td></tr>' for k, v in rows
    )
    return (
        '<div class="shoal-repr" style="font:13px system-ui,sans-serif">'
        f'<strong>{html.escape(title)}</strong><table style="margin-top:4px">{cells}</table></div>'
    )


def _link(url: str | None) -> str:
    if not url:
        return "<em>none</em>"
    safe = html.escape(url, quote=True)
    return f'<a href="{safe}" target="_blank">{safe}</a>'


def _resource_rows(info: dict[str, Any] | None) -> list[tuple[str, str]]:
    if info is None:
        return [("workers", "<em>unknown (scheduler not asked)</em>")]
    t = cluster_totals(info)
    return [("workers", str(t["workers"])), ("threads", str(t["threads"])),
            ("memory", f"{format_bytes(t['memory'])} held of {format_bytes(t['memory_limit'])}")]


def client_html(client: Any) -> str:
    info = _client_info(client)
    link = getattr(client.cluster, "dashboard_link", None)
    if not link and info and info.get("http_address"):
        link = f"{info['http_address']}/"
    rows = [("scheduler", html.escape(client.scheduler_address or "not connected")),
            ("dashboard", _link(link)), ("status", html.escape(str(client.status)))]
    if client.cluster is not None:
        rows.append(("cluster", html.escape(type(client.cluster).__name__)))
    return _table("shoal Client", rows + _resource_rows(info))


def cluster_html(cluster: Any) -> str:
    info = None
    if not cluster.asynchronous and cluster.status == "running":
        try:
            info = cluster._runner.run(cluster.scheduler_info, INFO_TIMEOUT)
        except (OSError, TimeoutError, RuntimeError) as exc:
            logger.debug("no scheduler_info for the repr: %s", exc)
    rows = [("scheduler", html.escape(cluster.scheduler_address or "not started")),
            ("dashboard", _link(cluster.dashboard_link)),
            ("status", html.escape(str(cluster.status))),
            ("processes", "yes" if cluster.processes else "no (threads in this process)")]
    if info is None:
        started = f"{len(cluster.workers)} started, {cluster.threads_per_worker} threads each"
        rows.append(("workers", started))
        return _table(type(cluster).__name__, rows)
    return _table(type(cluster).__name__, rows + _resource_rows(info))


def future_html(future: Any) -> str:
    """A Future as dask shows it: its key, status, and where and how big its result is."""
    state = future._state
    rows = [("key", html.escape(future.key)), ("status", html.escape(state.status))]
    if state.status == "finished":
        rows.append(("held by", html.escape(", ".join(state.workers) or "(sent inline)")))
        rows.append(("size", format_bytes(state.nbytes)))
    elif state.status == "error" and state.exception_text:
        rows.append(("error", html.escape(state.exception_text)))
    return _table("shoal Future", rows)
