"""A task's remote traceback as a real traceback object.

Workers send a failed task's traceback as text.  ``Future.traceback()``
returns a ``types.TracebackType`` (what ``concurrent.futures`` code and the
``traceback`` module expect) whose frames carry the remote file names, line
numbers and function names: each is made by running a tiny code object
compiled under that file name and line, the technique tblib uses.
"""

from __future__ import annotations

import re
import sys
from types import TracebackType

_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<name>.+)$')


class _Marker(Exception):
    pass


def _frame_at(filename: str, lineno: int, name: str) -> TracebackType | None:
    """A traceback entry whose frame is ``name`` at ``filename:lineno``."""
    source = "\n" * (lineno - 1) + "def frame(): raise _Marker\n"
    namespace: dict = {"_Marker": _Marker}
    try:
        exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - code we wrote above
        frame = namespace["frame"]
        frame.__code__ = frame.__code__.replace(co_name=name, co_qualname=name)
        frame()
    except _Marker:
        tb = sys.exc_info()[2]
        return tb.tb_next if tb is not None else None
    except (SyntaxError, ValueError, MemoryError):  # an absurd line number
        return None
    return None


def traceback_from_text(text: str) -> TracebackType | None:
    """The frames named in a formatted traceback, outermost first, as one chain."""
    frames = [m for line in text.splitlines() if (m := _FRAME.match(line))]
    head: TracebackType | None = None
    for match in reversed(frames):
        entry = _frame_at(match["file"], int(match["line"]), match["name"])
        if entry is not None:
            head = TracebackType(head, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return head
