"""``client.profile()``: where the workers' task threads spent their time.

Each worker samples the stacks of its running tasks (``worker/_profile.py``);
this collects the trees of the workers asked, merges them (dask's format:
``{"identifier", "description", "count", "children"}``) and, given a
``filename``, writes them as one self-contained HTML page: nested,
collapsible frames with their share of the samples, no script, no network.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import RemoteError
from ..worker._profile import Tree, merge

if TYPE_CHECKING:
    from ._client import Client

#: Frames shown open in the HTML page, from the root; and the smallest share shown.
OPEN_LEVELS = 3
MIN_SHARE = 0.005


def profile(client: Client, key: str | None, start: float | None, stop: float | None,
            workers: list[str] | None, merge_workers: bool, filename: str | None) -> Any:
    async def ask() -> dict[str, Tree]:
        answers = await client.ask_scheduler("broadcast",
                                             worker_op="profile", workers=workers, start=start,
                                             stop=stop, key=key)
        trees = {}
        for address, answer in answers.items():
            if answer.get("status") != "ok":
                raise RemoteError(f"no profile from {address}: {answer.get('message')}")
            trees[address] = answer["profile"]
        return trees

    trees = client.sync(ask)
    merged = merge(*trees.values())
    if filename is not None:
        Path(filename).write_text(profile_html(merged, key))
    return merged if merge_workers else trees


def _node(tree: Tree, total: int, depth: int) -> str:
    share = tree["count"] / total if total else 0.0
    desc = tree["description"]
    where = f"{Path(desc['filename']).name}:{desc['line_number']}" if desc["filename"] else ""
    label = (f"<b>{html.escape(desc['name'] or 'all tasks')}</b> "
             f"<span class=w>{html.escape(where)}</span> "
             f"<span class=n>{100 * share:.1f}% ({tree['count']})</span>"
             f"<span class=bar style='width:{200 * share:.0f}px'></span>")
    if desc["line"]:
        label += f"<div class=src>{html.escape(desc['line'])}</div>"
    children = sorted(tree["children"].values(), key=lambda c: -c["count"])
    shown = [c for c in children if total and c["count"] / total >= MIN_SHARE]
    if not shown:
        return f"<div class=leaf>{label}</div>"
    inner = "".join(_node(c, total, depth + 1) for c in shown)
    opened = " open" if depth < OPEN_LEVELS else ""
    return f"<details{opened}><summary>{label}</summary>{inner}</details>"


PROFILE_STYLE = (
    "details,.leaf{margin-left:1.2em}.w{color:#666}.n{color:#036;margin:0 .5em}"
    ".src{color:#555;font-family:monospace;margin-left:1.2em}"
    ".bar{display:inline-block;height:.7em;background:#4a90d9}")


def profile_section(tree: Tree) -> str:
    """The tree as nested, collapsible HTML (styled by ``PROFILE_STYLE``)."""
    return _node(tree, tree["count"], 0) if tree["count"] else "<p>No samples.</p>"


def profile_html(tree: Tree, key: str | None = None) -> str:
    """The tree as a page that opens offline."""
    title = f"shoal profile{f' of {key}' if key else ''}: {tree['count']} samples"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>body{{font:13px sans-serif;margin:1em}}{PROFILE_STYLE}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>{profile_section(tree)}</body></html>")
