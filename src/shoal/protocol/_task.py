"""How a task's arguments name other tasks' results.

The client replaces every future inside a task's arguments (also nested in
lists, tuples, sets and dicts) by a :class:`KeyRef`; the worker that runs the
task puts the values back.  Both sides share this module, so the format is
defined once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["KEEP", "KeyRef", "replace", "substitute"]


class KeyRef:
    """Stands for the result of the task ``key`` inside pickled arguments."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (KeyRef, (self.key,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyRef) and other.key == self.key

    def __hash__(self) -> int:
        return hash(("KeyRef", self.key))

    def __repr__(self) -> str:
        return f"KeyRef({self.key!r})"


#: What a ``swap`` function returns to leave a leaf as it is.
KEEP = object()
#: Leaves that are never a future nor a reference: not even shown to ``swap``
#: (most arguments of a map are numbers or strings, a call per leaf adds up).
ATOMS = frozenset({int, float, str, bytes, bool, complex, type(None)})


def replace(obj: Any, swap: Callable[[Any], Any]) -> Any:
    """Copy ``obj`` with each leaf replaced by ``swap(leaf)`` unless that is KEEP.

    Containers without replacements are returned as they are (no copy);
    leaves of the :data:`ATOMS` types are kept without asking ``swap``.
    """
    typ = type(obj)
    if typ in ATOMS:
        return obj
    if typ in (list, tuple, set, frozenset):
        changed = False
        items = []
        for item in obj:
            new = item if type(item) in ATOMS else replace(item, swap)
            changed = changed or new is not item
            items.append(new)
        return typ(items) if changed else obj
    if typ is dict:
        changed = False
        out = {}
        for k, v in obj.items():
            new = v if type(v) in ATOMS else replace(v, swap)
            changed = changed or new is not v
            out[k] = new
        return out if changed else obj
    new = swap(obj)
    return obj if new is KEEP else new


def substitute(obj: Any, data: Mapping[str, Any]) -> Any:
    """Put the values of ``data`` where ``obj`` holds a :class:`KeyRef`."""

    def swap(leaf: Any) -> Any:
        return data[leaf.key] if type(leaf) is KeyRef else KEEP

    return replace(obj, swap)
