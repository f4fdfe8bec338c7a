"""Whether a function pickled by value would pickle as it did last time, without pickling it.

A function defined in ``__main__`` (a notebook, a script), a lambda or a
closure is pickled by value: cloudpickle writes its code, its defaults, its
closure's cells and the globals its code names.  The user may change any of
these between two submits, so the client cannot remember the pickle by the
function's identity.  Pickling it again on every ``submit`` is what it did,
and it cost 20 us for a one-line function and over 100 us for one that calls
other notebook functions: more than the rest of a submit.

A *fingerprint* is the list of every object that pickle would be made of,
down to objects whose pickle cannot change while they stay the same object:
numbers, strings, bytes, ``None``; tuples and frozensets of those; modules,
classes and functions pickled by reference (importable by name).  A function
of ``__main__`` that this one calls is followed into (its own code, globals
and cells); a cycle (a recursive function) stops at a function already being
followed.  Two fingerprints with the same objects in the same places, compared
by identity, mean the same pickle.  Anything else a function's pickle would
hold (a list, a dict, an array, an instance, a class of ``__main__``, more
than :data:`MAX_ITEMS` objects) may change in place, so such a function has no
fingerprint and is pickled every time, as before.

Functions are held weakly in a fingerprint: remembering a pickle keeps no
function alive.  An import anywhere (``len(sys.modules)``) changes every
fingerprint, since cloudpickle also records which submodules of the modules a
function uses are imported.
"""

from __future__ import annotations

import sys
import types
import weakref
from typing import Any

import cloudpickle

__all__ = ["MAX_ITEMS", "fingerprint", "pickled_by_reference", "same"]

#: Most objects one fingerprint lists; past it, the function is pickled every time.
MAX_ITEMS = 512

_MISSING = object()  # a name the code uses that its globals do not have (yet)
_ATOMS = frozenset({int, float, complex, str, bytes, bool, type(None), type(Ellipsis),
                    type(NotImplemented)})
#: Classes pickled by name though ``builtins`` has no attribute of that name.
_NAMED_TYPES = _ATOMS - {int, float, complex, str, bytes, bool}

#: Types whose equal values pickle the same (not float: -0.0 == 0.0).
_EQUAL_MEANS_SAME = frozenset({int, str, bytes})


class _Unstable(Exception):
    """Some part of the pickle may change without changing identity."""


def pickled_by_reference(obj: Any) -> bool:
    """Whether pickling a function or class records only its module and name."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if (not isinstance(module_name, str) or module_name == "__main__"
            or not isinstance(qualname, str) or "<" in qualname
            or _registered_by_value(module_name)):
        return False
    found: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is obj


def _registered_by_value(module_name: str) -> bool:
    """Whether cloudpickle was told to pickle this module (or its package) by value."""
    registered = cloudpickle.list_registry_pickle_by_value()
    if not registered:
        return False
    parts = module_name.split(".")
    return any(".".join(parts[:i]) in registered for i in range(1, len(parts) + 1))


def fingerprint(func: types.FunctionType) -> list[Any] | None:
    """The objects ``func``'s pickle is made of, or None if it could change in place.

    Neither ``func`` nor its code is in it: its pickle does not depend on
    which function object it is (lambdas made by one line in a loop share a
    fingerprint), and its code is what the caller files the fingerprint under.
    The functions it calls are in it, by weak reference, with their code and
    what else they are made of.
    """
    out: list[Any] = [len(sys.modules)]
    try:
        _function(func, out, set())
    except Exception:  # noqa: BLE001 - _Unstable, or user code (a metaclass's
        return None    # __getattr__) that raised: then it is pickled, as always
    return out


def same(old: list[Any], new: list[Any]) -> bool:
    """Whether two fingerprints list the same objects (functions by weak reference;
    equal ints, strings and bytes count as the same)."""
    if len(old) != len(new):
        return False
    for a, b in zip(old, new, strict=True):
        if a is b:
            continue
        kind = type(a)
        if kind is not type(b):
            return False
        if kind is weakref.ref:
            if a() is not b():
                return False
        elif kind not in _EQUAL_MEANS_SAME or a != b:
            return False
    return True


def _function(func: types.FunctionType, out: list[Any], following: set[int]) -> None:
    if id(func) in following:  # recursion: its content is being listed already
        return
    following.add(id(func))
    out.extend((func.__name__, func.__qualname__, func.__module__, func.__doc__,
                func.__defaults__))
    for value in func.__defaults__ or ():
        _value(value, out, following)
    _mapping(func.__kwdefaults__, out, following)
    _mapping(func.__annotations__, out, following)
    _mapping(func.__dict__, out, following)
    for cell in func.__closure__ or ():
        try:
            contents = cell.cell_contents
        except ValueError:  # a cell not filled yet
            contents = _MISSING
        _value(contents, out, following)
    namespace = func.__globals__
    for name in _global_names(func.__code__):
        _value(namespace.get(name, _MISSING), out, following)
    if len(out) > MAX_ITEMS:
        raise _Unstable


def _mapping(mapping: dict[str, Any] | None, out: list[Any], following: set[int]) -> None:
    """A dict attribute of the function: mutable, so its items are listed, not it."""
    if not mapping:
        out.append(None)
        return
    out.append(len(mapping))
    for key, value in mapping.items():
        if type(key) is not str:
            raise _Unstable
        out.append(key)
        _value(value, out, following)


def _value(value: Any, out: list[Any], following: set[int]) -> None:
    kind = type(value)
    if kind in _ATOMS or value is _MISSING:
        out.append(value)
    elif kind is tuple or kind is frozenset:
        out.append(value)
        if len(value) > MAX_ITEMS:
            raise _Unstable
        for item in value:
            _value(item, out, following)
    elif kind is types.FunctionType:
        if pickled_by_reference(value):
            out.append(value)
        else:
            out.extend((weakref.ref(value), value.__code__))
            _function(value, out, following)
    elif kind is types.GenericAlias or kind is types.UnionType:  # list[int], int | None
        out.append(value)
        for item in (value.__origin__, *value.__args__) if kind is types.GenericAlias \
                else value.__args__:
            _value(item, out, following)
    elif kind is types.ModuleType:
        name: str = value.__name__
        if sys.modules.get(name) is not value or _registered_by_value(name):
            raise _Unstable  # pickled by value
        out.append(value)
    elif _by_name(value, kind):
        out.append(value)
    else:
        raise _Unstable
    if len(out) > MAX_ITEMS:
        raise _Unstable


def _by_name(value: Any, kind: type) -> bool:
    """Whether ``value`` is a class or builtin pickled by its name alone, or one of
    numpy's ufuncs (``from numpy import sqrt``), which pickle by name too."""
    if kind is type and value in _NAMED_TYPES:
        return True
    ufunc = kind.__name__ == "ufunc" and kind.__module__ == "numpy"
    return ((isinstance(value, type) or kind is types.BuiltinFunctionType or ufunc)
            and pickled_by_reference(value))


_NAMES: weakref.WeakKeyDictionary[types.CodeType, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """Every name the code (and the code nested in it) may look up in its globals:
    all of ``co_names``, a superset of the globals cloudpickle keeps."""
    names = _NAMES.get(code)
    if names is None:
        found = dict.fromkeys(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                found.update(dict.fromkeys(_global_names(const)))
        names = _NAMES[code] = tuple(found)
    return names
