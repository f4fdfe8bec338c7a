"""``shoal.progress(futures)``: a progress bar for work running on the cluster.

Long computations started from a terminal or a notebook should say how far
along they are.  In a terminal the bar is drawn on stderr and ``progress``
returns when every future is done (as dask's does); in a Jupyter kernel it is
an HTML bar (no ipywidgets needed) updated in place from a background
thread, and ``progress`` returns at once so the notebook stays usable.

Completion is counted with done-callbacks on the futures, so the bar moves
as results arrive; redrawing happens at most every :data:`REFRESH_SECONDS`.
"""

from __future__ import annotations

import asyncio
import html
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any, TextIO

from .._exceptions import ShoalTimeoutError
from ._future import Future

REFRESH_SECONDS = 0.1
BAR_WIDTH = 40


def flatten_futures(items: Iterable[Any]) -> list[Future]:
    """Futures found anywhere in (nested) lists, tuples, sets and dict values."""
    out: list[Future] = []
    seen: set[str] = set()
    stack = list(items)[::-1]
    while stack:
        item = stack.pop()
        if isinstance(item, Future):
            if item.key not in seen:
                seen.add(item.key)
                out.append(item)
        elif isinstance(item, dict):
            stack.extend(list(item.values())[::-1])
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(list(item)[::-1])
        else:
            raise TypeError(f"progress() takes futures (or collections of them), got {item!r}")
    return out


class Tracker:
    """Counts finished and failed futures as their done-callbacks fire."""

    def __init__(self, futures: list[Future]) -> None:
        self.total = len(futures)
        self.done = 0
        self.erred = 0
        self.started = time.monotonic()
        self.changed = threading.Event()
        self._lock = threading.Lock()
        for future in futures:
            if future.done():  # counted here: a closed client runs no callbacks
                self._on_done(future)
            else:
                future.add_done_callback(self._on_done)
        self.changed.set()

    def _on_done(self, future: Future) -> None:
        with self._lock:
            self.done += 1
            if future.status != "finished":
                self.erred += 1
        self.changed.set()

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def text_bar(tracker: Tracker, width: int = BAR_WIDTH) -> str:
    """``[#####     ] |  50% Completed |  1.2s`` (and how many failed, if any)."""
    filled = round(width * tracker.fraction)
    line = (f"[{'#' * filled}{' ' * (width - filled)}] | {tracker.fraction * 100:3.0f}% "
            f"Completed | {tracker.elapsed:4.1f}s")
    if tracker.erred:
        line += f" | {tracker.erred} erred"
    return line


def html_bar(tracker: Tracker) -> str:
    """The same bar as self-contained HTML (inline styles, nothing to load)."""
    percent = tracker.fraction * 100
    color = "#d64545" if tracker.erred else "#2f9e6b"
    note = f", {tracker.erred} erred" if tracker.erred else ""
    label = html.escape(f"{tracker.done} / {tracker.total} done{note} · {tracker.elapsed:.1f}s")
    return (
        '<div class="shoal-progress" style="font:12px system-ui,sans-serif;max-width:480px">'
        '<div style="background:#eef0f3;border-radius:3px;height:14px;overflow:hidden">'
        f'<div style="background:{color};width:{percent:.1f}%;height:100%"></div></div>'
        f'<div style="margin-top:2px">{percent:.0f}% · {label}</div></div>'
    )


class TextProgress:
    """Draws the bar on a terminal stream until every future is done."""

    def __init__(self, tracker: Tracker, stream: TextIO | None = None) -> None:
        self.tracker = tracker
        self.stream = stream if stream is not None else sys.stderr

    def draw(self, end: str = "") -> None:
        self.stream.write("\r" + text_bar(self.tracker) + end)
        self.stream.flush()

    def run(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.tracker.finished:
            self.draw()
            self.tracker.changed.clear()
            if deadline is not None and time.monotonic() > deadline:
                raise ShoalTimeoutError(f"progress: not done within timeout={timeout}s")
            if not self.tracker.finished:
                self.tracker.changed.wait(REFRESH_SECONDS)  # a redraw period, bounded
        self.draw(end="\n")

    async def run_async(self) -> None:
        while not self.tracker.finished:
            self.draw()
            await asyncio.sleep(REFRESH_SECONDS)  # a redraw period on the caller's loop
        self.draw(end="\n")


class NotebookProgress:
    """An HTML bar in a Jupyter output cell, updated from a background thread."""

    def __init__(self, tracker: Tracker) -> None:
        from IPython.display import HTML, display

        self.tracker = tracker
        self._html = HTML
        self.handle = display(HTML(html_bar(tracker)), display_id=True)
        self.thread = threading.Thread(target=self._update, name="shoal-progress", daemon=True)
        self.thread.start()

    def _update(self) -> None:
        while not self.tracker.finished:
            self.tracker.changed.wait(REFRESH_SECONDS)  # a redraw period, bounded
            self.tracker.changed.clear()
            self._show()
        self._show()

    def _show(self) -> None:
        if self.handle is not None:
            self.handle.update(self._html(html_bar(self.tracker)))

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython with a kernel attached)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress(*futures: Any, notebook: bool | None = None, stream: TextIO | None = None,
             timeout: float | None = None) -> Any:
    """Show how many of ``futures`` are done.

    In a terminal: draws a bar on ``stream`` (stderr by default) and returns
    when all are done (``TimeoutError`` after ``timeout`` seconds).  With an
    asynchronous client: returns an awaitable doing the same.  In Jupyter (or
    with ``notebook=True``, which needs IPython): displays an HTML bar that
    keeps updating from a background thread and returns ``None`` at once.
    """
    found = flatten_futures(futures)
    tracker = Tracker(found)
    if notebook is None:
        notebook = in_notebook()
    if notebook:
        NotebookProgress(tracker)
        return None
    bar = TextProgress(tracker, stream)
    if found and found[0].client.asynchronous:
        return bar.run_async()
    bar.run(timeout)
    return None
