"""Cheap estimates of how much memory a Python object holds.

Every task result is measured once, when it is stored: the worker reports the
size to the scheduler (which places work near the bytes) and the data store
uses it to decide what to spill.  That puts :func:`sizeof` on the hot path of
every task, so it must cost about a microsecond for small objects and must
never walk a huge container: lists, dicts and sets are *sampled* (a handful
of items, extrapolated to the full length) and recursion stops after a few
levels.  The numbers are estimates, good enough for placement and spilling,
not an accounting of every pointer.

Dispatch is by exact type through a dictionary, filled lazily: the first time
a type is seen its handler is chosen (numpy arrays, pandas-like objects,
containers, or :func:`sys.getsizeof`) and cached, so the common case is one
dictionary lookup and one call.  numpy and pandas are never imported here;
they are recognised from the module of the object's type.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from shoal.protocol._serialize import Serialized

__all__ = ["register_sizeof", "sizeof"]

#: Containers longer than this are sampled rather than walked.
SAMPLE_SIZE = 10

#: How many container levels are walked before falling back to getsizeof.
MAX_DEPTH = 3

#: pandas objects with more rows than this are measured without ``deep=True``
#: (which walks every Python string): cheap, but an underestimate for columns
#: of Python objects.
DEEP_MEMORY_USAGE_MAX_ROWS = 10_000

#: The answer for an object whose own size methods raise.
FALLBACK_SIZE = 64

_DATAFRAME_LIBRARIES = frozenset({"pandas", "modin", "geopandas", "cudf"})

_Handler = Callable[[Any, int], int]

_getsizeof = sys.getsizeof


def _flat(obj: Any, depth: int) -> int:
    return _getsizeof(obj)


def _memoryview(obj: memoryview, depth: int) -> int:
    return obj.nbytes + _getsizeof(obj)


def _serialized(obj: Serialized, depth: int) -> int:
    return obj.nbytes


def _sample(items: Any, length: int) -> list[Any]:
    """Up to SAMPLE_SIZE items spread evenly over an indexable sequence."""
    if length <= SAMPLE_SIZE:
        return list(items)
    step = length / SAMPLE_SIZE
    return [items[int(i * step)] for i in range(SAMPLE_SIZE)]


def _first(iterable: Any, length: int) -> list[Any]:
    """Up to SAMPLE_SIZE items of a non-indexable collection (a set)."""
    sample = []
    for item in iterable:
        sample.append(item)
        if len(sample) >= SAMPLE_SIZE:
            break
    return sample


def _extrapolate(sample: Any, length: int, depth: int) -> int:
    if not length:
        return 0
    total = 0
    for item in sample:
        total += _sizeof(item, depth + 1)
    if len(sample) == length:
        return total
    return int(total * length / len(sample))


def _sequence(obj: list[Any] | tuple[Any, ...], depth: int) -> int:
    size = _getsizeof(obj)
    if depth >= MAX_DEPTH:
        return size
    length = len(obj)
    items = obj if length <= SAMPLE_SIZE else _sample(obj, length)
    return size + _extrapolate(items, length, depth)


def _set(obj: set[Any] | frozenset[Any], depth: int) -> int:
    size = _getsizeof(obj)
    if depth >= MAX_DEPTH:
        return size
    length = len(obj)
    return size + _extrapolate(_first(obj, length), length, depth)


def _dict(obj: dict[Any, Any], depth: int) -> int:
    size = _getsizeof(obj)
    if depth >= MAX_DEPTH:
        return size
    length = len(obj)
    keys = _first(obj, length)
    values = [obj[k] for k in keys]
    return size + _extrapolate(keys, length, depth) + _extrapolate(values, length, depth)


def _numpy_array(obj: Any, depth: int) -> int:
    # getsizeof includes the data of an array that owns it, not of a view
    size = max(int(obj.nbytes), _getsizeof(obj))
    if obj.dtype.hasobject and depth < MAX_DEPTH:
        length = obj.size
        flat = obj.reshape(-1) if obj.flags.c_contiguous else obj.ravel()
        size += _extrapolate(_sample(flat, length), length, depth)
    return size


def _pandas(obj: Any, depth: int) -> int:
    columns = _pandas_columns(obj, depth)
    if columns is not None:
        return columns
    try:
        rows = len(obj)
    except TypeError:
        rows = 0
    deep = rows <= DEEP_MEMORY_USAGE_MAX_ROWS
    try:
        usage = obj.memory_usage(deep=deep)
    except (TypeError, ValueError, AttributeError):
        return _getsizeof(obj)
    total = usage.sum() if hasattr(usage, "sum") else usage
    try:
        # the object's own header only: pandas' getsizeof is its deep memory
        # usage again, which would count the data twice (and walk every string)
        return int(total) + object.__sizeof__(obj)
    except (TypeError, ValueError):
        return _getsizeof(obj)


def _pandas_columns(obj: Any, depth: int) -> int | None:
    """A pandas DataFrame or Series measured from its column arrays; None for
    other objects (an Index, another library's frame).

    ``memory_usage`` builds a Series of per-column answers, about half a
    millisecond for any frame, paid for every pandas result; reading each
    array's ``nbytes`` takes microseconds.  Columns of Python objects are
    sampled like object arrays, so large ones are counted, not walked.
    """
    arrays = getattr(getattr(obj, "_mgr", None), "arrays", None)
    if type(arrays) is not list:
        return None
    size = object.__sizeof__(obj) + _sizeof(obj.index, depth + 1)
    for array in arrays:
        if type(array).__module__ == "numpy":
            size += _numpy_array(array, depth + 1)
        else:  # an extension array (arrow, categorical, datetimes with a time zone)
            size += int(array.nbytes)
    return size


def _instance(obj: Any, depth: int) -> int:
    """A plain Python object: its header plus the attributes in its __dict__."""
    size = _getsizeof(obj)
    attrs = getattr(obj, "__dict__", None)
    if type(attrs) is dict and depth < MAX_DEPTH:
        size += _dict(attrs, depth + 1)
    return size


_HANDLERS: dict[type, _Handler] = {
    bytes: _flat,
    bytearray: _flat,
    str: _flat,
    int: _flat,
    float: _flat,
    complex: _flat,
    bool: _flat,
    type(None): _flat,
    memoryview: _memoryview,
    list: _sequence,
    tuple: _sequence,
    set: _set,
    frozenset: _set,
    dict: _dict,
    Serialized: _serialized,
}


def _choose_handler(cls: type) -> _Handler:
    """Pick a handler for a type seen for the first time."""
    for base in cls.__mro__:
        handler = _HANDLERS.get(base)
        if handler is not None:
            return handler
    roots = {base.__module__.partition(".")[0] for base in cls.__mro__}
    if "numpy" in roots and all(hasattr(cls, a) for a in ("nbytes", "dtype", "flags")):
        return _numpy_array
    if roots & _DATAFRAME_LIBRARIES and hasattr(cls, "memory_usage"):
        return _pandas
    if issubclass(cls, type):
        return _flat
    return _instance


def _sizeof(obj: Any, depth: int) -> int:
    cls = type(obj)
    handler = _HANDLERS.get(cls)
    if handler is None:
        handler = _HANDLERS[cls] = _choose_handler(cls)
    try:
        return handler(obj, depth)
    except Exception:  # noqa: BLE001 - user code (__len__, __sizeof__) must not fail a task
        try:
            return _getsizeof(obj)
        except Exception:  # noqa: BLE001 - same: any answer is better than an error
            return FALLBACK_SIZE


def sizeof(obj: Any) -> int:
    """Estimate the bytes of memory held by ``obj`` (and what it references)."""
    return _sizeof(obj, 0)


def register_sizeof(cls: type, handler: Callable[[Any], int]) -> None:
    """Teach :func:`sizeof` about a type (and its subclasses seen later)."""
    _HANDLERS[cls] = lambda obj, depth: handler(obj)
