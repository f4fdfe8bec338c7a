"""Task keys and the serialization of functions.

``pure=True`` keys are derived from the function and the arguments, so the
same call submitted twice (by one client or several) names the same result
and is computed once.  A function is named by the hash of its pickled bytes;
workers cache it under that name, which is what makes ``map`` pay for the
function once.

A function that pickles *by reference* (importable by module and name) is
remembered by identity: its bytes cannot change.  A function pickled by value
(defined in ``__main__``, a lambda, a closure) carries the globals and cells
it reads, which the user may change between two submits: it is remembered
with its fingerprint (:mod:`._fingerprint`), the objects its pickle is made
of, and pickled again whenever one of them is not the same object as last
time, or when it holds anything that could change in place.  The cache holds
functions weakly and is bounded in bytes: it keeps nothing alive.
"""

from __future__ import annotations

import hashlib
import types
import uuid
import weakref
from collections import OrderedDict
from typing import Any

from ..protocol import Serialized, serialize
from ._fingerprint import fingerprint, pickled_by_reference, same
from ._recipes import Call

#: Upper bound of the pickled bytes the identity cache keeps.
MAX_CACHED_FUNCTION_BYTES = 16 * 2**20


def funcname(func: Any) -> str:
    name = getattr(func, "__name__", None) or type(func).__name__
    return name.replace("<", "").replace(">", "") or "task"


def _token(func: Any, ser: Serialized) -> str:
    digest = hashlib.sha1(usedforsecurity=False)
    for frame in ser.frames:
        digest.update(frame)
    return f"{funcname(func)}-{digest.hexdigest()}"


class FunctionCache:
    """Pickled functions with their content tokens (see the module docstring).

    An importable function's entry is filed under its own id; a function
    pickled by value's, under its code's, with the fingerprint that must
    match (lambdas made by one line share one entry).
    """

    def __init__(self, max_bytes: int = MAX_CACHED_FUNCTION_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._cache: OrderedDict[int, tuple[weakref.ref, list[Any] | None, Call]] = \
            OrderedDict()

    def get(self, func: Any) -> Call:
        """``func``'s call: its task fields (``{"func": token}``, never to be changed)
        and its pickle; one pair per remembered function, shared by the recipes
        of all its tasks."""
        entry = self._cache.get(id(func))
        if entry is not None and entry[0]() is func:
            self._cache.move_to_end(id(func))
            return entry[2]
        prints = None
        if type(func) is types.FunctionType and not pickled_by_reference(func):
            prints = fingerprint(func)
            if prints is not None:
                entry = self._cache.get(id(func.__code__))
                if (entry is not None and entry[0]() is func.__code__ and entry[1] is not None
                        and same(entry[1], prints)):
                    self._cache.move_to_end(id(func.__code__))
                    return entry[2]
        ser = serialize(func)  # raises SerializationError with the function's name
        call = ({"func": _token(func, ser)}, ser)
        if prints is not None:
            self._remember(func.__code__, prints, call)
        elif pickled_by_reference(func):
            self._remember(func, None, call)
        return call

    def _remember(self, owner: Any, prints: list[Any] | None, call: Call) -> None:
        nbytes = call[1].nbytes
        if nbytes > self.max_bytes:
            return
        key = id(owner)
        try:  # a dead entry goes at once: nothing it lists stays alive
            ref = weakref.ref(owner, self._dropper(key))
        except TypeError:  # not weakly referenceable: not cached
            return
        self._forget(key)
        self._cache[key] = (ref, prints, call)
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes:
            self._forget(next(iter(self._cache)))

    def _dropper(self, key: int) -> Any:
        me = weakref.ref(self)

        def drop(ref: weakref.ref) -> None:
            cache = me()
            if cache is not None:
                entry = cache._cache.get(key)
                if entry is not None and entry[0] is ref:
                    cache._forget(key)
        return drop

    def _forget(self, key: int) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None:
            self.nbytes -= entry[2][1].nbytes

    def __len__(self) -> int:
        return len(self._cache)


#: Per function token: its name, and the hash of the token to go on from (a map
#: names a million keys after one function).
_KEY_STARTS: dict[str, tuple[str, Any]] = {}
MAX_KEY_STARTS = 1_000


def task_key(func_token: str, args: Serialized, pure: bool) -> str:
    """``name-<hash>``: deterministic when pure, unique otherwise."""
    start = _KEY_STARTS.get(func_token)
    if start is None:
        if len(_KEY_STARTS) >= MAX_KEY_STARTS:
            _KEY_STARTS.clear()
        start = _KEY_STARTS[func_token] = (
            func_token.rsplit("-", 1)[0] + "-",
            hashlib.sha1(func_token.encode(), usedforsecurity=False))
    name, token_hash = start
    if not pure:
        return name + uuid.uuid4().hex
    digest = token_hash.copy()
    for frame in args.frames:
        digest.update(frame)
    return name + digest.hexdigest()
