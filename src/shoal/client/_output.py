"""Showing what tasks printed or warned with ``shoal.print`` / ``shoal.warn``.

The scheduler passes such output to every client; here it is written to
this process's ``sys.stdout`` or raised as a warning of the same category
(a built-in one by name; others become ``UserWarning``).
"""

from __future__ import annotations

import builtins
import sys
import warnings
from typing import Any


def show_task_output(msg: dict[str, Any]) -> None:
    text = str(msg.get("text", ""))
    if msg.get("kind") == "warn":
        category = getattr(builtins, str(msg.get("category")), UserWarning)
        if not (isinstance(category, type) and issubclass(category, Warning)):
            category = UserWarning
        warnings.warn(text, category, stacklevel=1)
        return
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (OSError, ValueError):  # our stdout is closed: the text has nowhere to go
        pass
