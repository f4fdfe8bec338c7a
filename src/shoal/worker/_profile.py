"""A statistical profile of the tasks a worker runs, for ``client.profile()``.

A sampling thread looks at the call stack of every thread running a task
(or an actor's call) every ``PROFILE_INTERVAL`` seconds, and merges it into
a tree of frames with counts (dask's profile format: ``{"identifier",
"description", "count", "children"}``), one tree per task prefix (``inc``
for ``inc-3f2a...``).  Every ``PROFILE_CYCLE`` seconds the trees are filed
in a bounded history with their time, so that a client can ask for what
ran between two times.  A worker running nothing costs one look at an empty
dict per interval; frames above the task's function (the executor's own)
are left out.
"""

from __future__ import annotations

import linecache
import sys
import threading
import time
from collections import deque
from types import FrameType
from typing import Any

#: Seconds between two samples, and between two filings in the history.
PROFILE_INTERVAL = 0.01
PROFILE_CYCLE = 1.0
#: Cycles kept (an hour at the default cycle).
PROFILE_HISTORY = 3600
#: Frames of a stack kept, outermost first (the tree travels as nested maps).
MAX_DEPTH = 100

Tree = dict[str, Any]


def new_tree(identifier: str = "root", description: dict[str, Any] | None = None) -> Tree:
    return {"identifier": identifier, "count": 0, "children": {},
            "description": description or {"filename": "", "name": "", "line_number": 0,
                                           "line": ""}}


#: (code, line) -> (identifier, description): a sample costs a lookup per frame
_described: dict[tuple[Any, int], tuple[str, dict[str, Any]]] = {}
_MAX_DESCRIBED = 100_000


def _identify(frame: FrameType) -> tuple[str, dict[str, Any]]:
    code = frame.f_code
    # None while the frame has not started a line (another thread's, caught
    # in the middle of an import)
    lineno = frame.f_lineno or code.co_firstlineno
    found = _described.get((code, lineno))
    if found is None:
        if len(_described) > _MAX_DESCRIBED:
            _described.clear()
        line = linecache.getline(code.co_filename, lineno).strip()
        found = _described[code, lineno] = (
            f"{code.co_name};{code.co_filename};{code.co_firstlineno}",
            {"filename": code.co_filename, "name": code.co_name,
             "line_number": lineno, "line": line})
    return found


def add_stack(tree: Tree, frames: list[FrameType]) -> None:
    """Count one sample of ``frames`` (outermost first) into ``tree``."""
    tree["count"] += 1
    node = tree
    for frame in frames:
        identifier, description = _identify(frame)
        children = node["children"]
        child = children.get(identifier)
        if child is None:
            child = children[identifier] = new_tree(identifier, dict(description))
        child["count"] += 1
        node = child


def merge(*trees: Tree) -> Tree:
    """One tree counting every sample of ``trees``."""
    out = new_tree()
    for tree in trees:
        _merge_into(out, tree)
    return out


def _merge_into(out: Tree, tree: Tree) -> None:
    out["count"] += tree["count"]
    for identifier, child in tree["children"].items():
        mine = out["children"].get(identifier)
        if mine is None:
            mine = out["children"][identifier] = new_tree(identifier, dict(child["description"]))
        _merge_into(mine, child)


def _task_frames(frame: FrameType | None, stop_at: frozenset[Any]) -> list[FrameType]:
    """The stack of a task thread, outermost first, from the task's function on."""
    stack: list[FrameType] = []
    # another thread's stack, read while it runs: in CPython 3.11 a frame
    # being set up (an import starting) may show a stale f_back, which is
    # where the walk stops
    while isinstance(frame, FrameType) and frame.f_code not in stop_at:
        stack.append(frame)
        frame = frame.f_back
    stack.reverse()
    return stack[:MAX_DEPTH]


def prefix(key: str) -> str:
    return key.split("-", 1)[0] or key


class Profiler:
    """The sampling thread of one worker and its history."""

    def __init__(self, running: dict[int, str], stop_at: frozenset[Any],
                 interval: float = PROFILE_INTERVAL, cycle: float = PROFILE_CYCLE) -> None:
        self.running = running  # thread id -> key of the task it runs (kept by the worker)
        self.stop_at = stop_at  # code objects above a task's function
        self.interval = interval
        self.cycle = cycle
        self.history: deque[tuple[float, dict[str, Tree]]] = deque(maxlen=PROFILE_HISTORY)
        self.current: dict[str, Tree] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shoal-profile", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        filed = time.time()
        while not self._stop.wait(self.interval):  # a sampling period, not a sync
            if self.running:
                self.sample()
            now = time.time()
            if now - filed >= self.cycle:
                with self._lock:
                    if self.current:
                        self.history.append((now, self.current))
                    self.current = {}
                filed = now

    def sample(self) -> None:
        # ``frames`` holds this very frame too: a cycle that would keep every
        # thread's frames, and what their locals hold, alive until the cyclic
        # collector ran; only the frames of tasks are looked up, then dropped.
        frames = sys._current_frames()
        wanted = {ident: frames.get(ident) for ident in list(self.running)}
        del frames
        with self._lock:
            for ident, frame in wanted.items():
                key = self.running.get(ident)
                if frame is None or key is None:
                    continue
                tree = self.current.get(prefix(key))
                if tree is None:
                    tree = self.current[prefix(key)] = new_tree()
                add_stack(tree, _task_frames(frame, self.stop_at))
        wanted.clear()

    def profile(self, start: float | None = None, stop: float | None = None,
                key: str | None = None) -> Tree:
        """The samples taken between ``start`` and ``stop`` (times), of ``key``'s
        prefix or of every task."""
        with self._lock:
            cycles = [*self.history, (time.time(), self.current)]
            trees = [tree for when, by_prefix in cycles
                     if (start is None or when >= start)
                     and (stop is None or when - self.cycle <= stop)
                     for name, tree in by_prefix.items() if key is None or name == key]
            return merge(*trees)
