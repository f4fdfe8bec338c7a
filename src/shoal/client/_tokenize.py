"""Task keys and the one-time serialization of functions.

``pure=True`` keys are derived from the function and the arguments, so the
same call submitted twice (by one client or several) names the same result
and is computed once.  A function is pickled once per client and named by
the hash of its bytes; workers cache it under that name, which is what makes
``map`` pay for the function once.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from typing import Any

from ..protocol import Serialized, serialize

_MAX_CACHED_FUNCTIONS = 512


def funcname(func: Any) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    return name.replace("<", "").replace(">", "") or "task"


class FunctionCache:
    """Pickled functions by identity, with their content tokens."""

    def __init__(self) -> None:
        self._cache: OrderedDict[int, tuple[Any, str, Serialized]] = OrderedDict()

    def get(self, func: Any) -> tuple[str, Serialized]:
        entry = self._cache.get(id(func))
        if entry is not None and entry[0] is func:
            self._cache.move_to_end(id(func))
            return entry[1], entry[2]
        ser = serialize(func)  # raises SerializationError with the function's name
        digest = hashlib.sha1(usedforsecurity=False)
        for frame in ser.frames:
            digest.update(frame)
        token = f"{funcname(func)}-{digest.hexdigest()}"
        self._cache[id(func)] = (func, token, ser)  # holding func keeps its id unique
        if len(self._cache) > _MAX_CACHED_FUNCTIONS:
            self._cache.popitem(last=False)
        return token, ser


def task_key(func_token: str, args: Serialized, pure: bool) -> str:
    """``name-<hash>``: deterministic when pure, unique otherwise."""
    name = func_token.rsplit("-", 1)[0]
    if not pure:
        return f"{name}-{uuid.uuid4().hex}"
    digest = hashlib.sha1(func_token.encode(), usedforsecurity=False)
    for frame in args.frames:
        digest.update(frame)
    return f"{name}-{digest.hexdigest()}"
