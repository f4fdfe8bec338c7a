"""Compact task relations for both state machines.

Millions of tasks may be held at once, and a Python set costs 216 bytes even
when it holds one element, so most relations of a task do not get one:

* sets that are usually empty (inputs, dependents, waiters, peers) share one
  frozen empty set until the first element arrives (:func:`grow`);
* relations that nearly always hold one element (``who_has``: the worker
  with the result, ``who_wants``: the client with the future) are tuples
  (56 bytes for one), changed through :func:`with_item` and
  :func:`without_item`.
"""

from __future__ import annotations

from typing import Any

#: The shared value of a task's relation sets while they are empty.
EMPTY: Any = frozenset()


def grow(relation: set[Any]) -> set[Any]:
    """A relation set that can be added to (a new set in place of ``EMPTY``)."""
    return relation if relation is not EMPTY else set()


def with_item(items: tuple[Any, ...], item: Any) -> tuple[Any, ...]:
    """``items`` with ``item`` (once).

    ``who_has`` and ``who_wants`` are tuples: nearly always they hold one
    worker and one client, and a tuple of one is 56 bytes where a set is 216
    (with a million held tasks, that is most of the scheduler's memory).
    """
    return items if item in items else (*items, item)


def without_item(items: tuple[Any, ...], item: Any) -> tuple[Any, ...]:
    """``items`` without ``item``."""
    if item not in items:
        return items
    return tuple(x for x in items if x != item) if len(items) > 1 else ()
