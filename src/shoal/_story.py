"""A bounded record of task-state changes, for "what happened to this key?".

Both state machines append one entry per transition: the key, the state it
left, the state it reached, the stimulus id of the event that caused it and
the time of that event.  The log is a ring buffer (a ``deque`` with a
maximum length), so a long-running scheduler keeps only the most recent
entries and its memory stays bounded whatever it runs.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

#: Entries kept by default (five pointers, 40 bytes, each).
DEFAULT_STORY_SIZE = 50_000

#: One entry: (key, start, finish, stimulus_id, timestamp).
Entry = tuple[str, str, str, str, float]
FIELDS = 5


class Story:
    """The most recent ``size`` transitions; ``size=0`` keeps none.

    Entries are stored flat (five slots each) rather than as tuples: a
    recorded transition then allocates nothing that outlives the call, which
    keeps a full log from costing cache misses and collector work on the
    per-task path.  Append with ``record = story.entries.extend`` and a
    five-tuple.
    """

    __slots__ = ("entries",)

    def __init__(self, size: int = DEFAULT_STORY_SIZE) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"story size must be a non-negative integer, got {size!r}")
        self.entries: deque[Any] = deque(maxlen=size * FIELDS)

    def append(self, entry: Entry) -> None:
        self.entries.extend(entry)

    def of(self, keys: set[str] | frozenset[str]) -> list[Entry]:
        """The entries about any of ``keys``, oldest first."""
        flat = list(self.entries)
        return [tuple(flat[i:i + FIELDS]) for i in range(0, len(flat), FIELDS)  # type: ignore[misc]
                if flat[i] in keys]

    def since(self, count: int) -> list[Entry]:
        """The entries after the first ``count`` (while none were dropped)."""
        flat = list(itertools.islice(self.entries, count * FIELDS, None))
        return [tuple(flat[i:i + FIELDS]) for i in range(0, len(flat), FIELDS)]  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.entries) // FIELDS


def as_dicts(entries: list[Entry], where: str) -> list[dict[str, Any]]:
    """Entries in the form the API returns them, tagged with who recorded them."""
    return [
        {"key": k, "start": s, "finish": f, "stimulus_id": sid, "timestamp": t, "where": where}
        for k, s, f, sid, t in entries
    ]
