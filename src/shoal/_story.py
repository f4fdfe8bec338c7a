"""A bounded record of task-state changes, for "what happened to this key?".

Both state machines append one entry per transition: the key, the state it
left, the state it reached, the stimulus id of the event that caused it and
the time of that event.  The log is a ring buffer (a ``deque`` with a
maximum length), so a long-running scheduler keeps only the most recent
entries and its memory stays bounded whatever it runs.
"""

from __future__ import annotations

from collections import deque
from typing import Any

#: Entries kept by default (about 100 bytes each).
DEFAULT_STORY_SIZE = 50_000

#: One entry: (key, start, finish, stimulus_id, timestamp).
Entry = tuple[str, str, str, str, float]


class Story:
    """The most recent ``size`` transitions; ``size=0`` keeps none."""

    __slots__ = ("entries",)

    def __init__(self, size: int = DEFAULT_STORY_SIZE) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"story size must be a non-negative integer, got {size!r}")
        self.entries: deque[Entry] = deque(maxlen=size)

    def append(self, entry: Entry) -> None:
        self.entries.append(entry)

    def of(self, keys: set[str] | frozenset[str]) -> list[Entry]:
        """The entries about any of ``keys``, oldest first."""
        return [e for e in self.entries if e[0] in keys]

    def __len__(self) -> int:
        return len(self.entries)


def as_dicts(entries: list[Entry], where: str) -> list[dict[str, Any]]:
    """Entries in the form the API returns them, tagged with who recorded them."""
    return [
        {"key": k, "start": s, "finish": f, "stimulus_id": sid, "timestamp": t, "where": where}
        for k, s, f, sid, t in entries
    ]
