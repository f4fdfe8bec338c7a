"""A small language for the shape of messages, checked where they enter.

A peer can send anything msgpack can carry.  Each op's message is described
by a :class:`Spec` tree (``Record``, ``ListOf``, ``Int(lo=1)``...) and
checked before any state machine sees it, so a wrong type or a negative
size is refused with an :class:`InvalidMessage` naming the field
(``tasks[3].retries``) instead of failing somewhere deep inside.  The specs
are plain data so that tests can generate valid and invalid messages from
them (``tests/fuzz``).

Every message is asked ``ok`` before anything else, so that answer is
compiled: a spec tree becomes one Python function per map or list in it
(:func:`compiled`), with the leaves' tests written inline, instead of a walk
over spec objects calling one method per field.  ``check``, which only runs
for a refused message, stays the plain walk that names the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._messages import MessageError
from ._serialize import Serialized

__all__ = [
    "AnyOf",
    "Anything",
    "Blob",
    "Bool",
    "Int",
    "InvalidMessage",
    "ListOf",
    "MapOf",
    "Nullable",
    "Num",
    "Record",
    "Spec",
    "Str",
]


class InvalidMessage(MessageError):
    """A message of the right encoding but the wrong shape; ``field`` says where."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class Spec:
    """The shape of one value.

    ``ok`` answers whether a value fits, building nothing (it runs for every
    message, so it must cost little); ``check`` raises InvalidMessage naming
    the field and the problem, or returns None.  The two agree on every value
    (tests/protocol/test_schema.py holds them to it): ``check_message`` asks
    ``ok`` first, and only a refused value pays for the explanation.
    """

    __slots__ = ()

    def ok(self, value: Any) -> bool:
        try:
            self.check(value, "")
        except InvalidMessage:
            return False
        return True

    def check(self, value: Any, path: str) -> None:
        raise NotImplementedError

    def expression(self, var: str, env: _Env) -> str:
        """A Python expression, true when the value named ``var`` fits; names
        it needs go into ``env``.  By default: a call of this spec's ``ok``."""
        return f"{env.name(self.ok)}({var})"

    def describe(self) -> str:
        raise NotImplementedError


class Anything(Spec):
    """Any value (relayed as it is, e.g. a broadcast's arguments)."""

    __slots__ = ()

    def ok(self, value: Any) -> bool:
        return True

    def check(self, value: Any, path: str) -> None:
        return None

    def expression(self, var: str, env: _Env) -> str:
        return "True"

    def describe(self) -> str:
        return "anything"


class Str(Spec):
    __slots__ = ("max_length", "min_length")

    def __init__(self, max_length: int = 64 * 1024, min_length: int = 0) -> None:
        self.max_length = max_length
        self.min_length = min_length

    def ok(self, value: Any) -> bool:
        return type(value) is str and self.min_length <= len(value) <= self.max_length

    def expression(self, var: str, env: _Env) -> str:
        return f"(type({var}) is str and {self.min_length} <= len({var}) <= {self.max_length})"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not str:
            raise InvalidMessage(path, f"expected a string, got {_shown(value)}")
        if not self.min_length <= len(value) <= self.max_length:
            raise InvalidMessage(path, f"a string of {len(value)} characters is outside "
                                 f"{self.min_length}..{self.max_length}")

    def describe(self) -> str:
        return "a string"


class Bool(Spec):
    __slots__ = ()

    def ok(self, value: Any) -> bool:
        return type(value) is bool

    def expression(self, var: str, env: _Env) -> str:
        return f"type({var}) is bool"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not bool:
            raise InvalidMessage(path, f"expected true or false, got {_shown(value)}")

    def describe(self) -> str:
        return "a boolean"


class Int(Spec):
    """An integer (never a boolean) within ``lo``..``hi``."""

    __slots__ = ("hi", "lo")

    def __init__(self, lo: int | None = None, hi: int | None = None) -> None:
        self.lo = lo
        self.hi = hi

    def ok(self, value: Any) -> bool:
        return type(value) is int and (self.lo is None or value >= self.lo) and (
            self.hi is None or value <= self.hi)

    def expression(self, var: str, env: _Env) -> str:
        return "(" + " and ".join([f"type({var}) is int", *_bounds(var, self.lo, self.hi, env)]) + ")"

    def check(self, value: Any, path: str) -> None:
        if type(value) is not int:
            raise InvalidMessage(path, f"expected {self.describe()}, got {_shown(value)}")
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise InvalidMessage(path, f"expected {self.describe()}, got {value}")

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"an integer from {self.lo} to {self.hi}"
        if self.lo is not None:
            return f"an integer of at least {self.lo}"
        return "an integer"


class Num(Spec):
    """A finite number (integer or float, never a boolean) within ``lo``..``hi``."""

    __slots__ = ("hi", "lo")

    def __init__(self, lo: float | None = None, hi: float | None = None) -> None:
        self.lo = lo
        self.hi = hi

    def ok(self, value: Any) -> bool:
        kind = type(value)
        if kind is not float and kind is not int:
            return False
        if kind is float and not math.isfinite(value):
            return False
        return (self.lo is None or value >= self.lo) and (self.hi is None or value <= self.hi)

    def expression(self, var: str, env: _Env) -> str:
        kind = (f"(type({var}) is int or (type({var}) is float and "
                f"{env.name(math.isfinite)}({var})))")
        return "(" + " and ".join([kind, *_bounds(var, self.lo, self.hi, env)]) + ")"

    def check(self, value: Any, path: str) -> None:
        kind = type(value)
        if kind is not float and kind is not int:
            raise InvalidMessage(path, f"expected {self.describe()}, got {_shown(value)}")
        if (kind is float and not math.isfinite(value)) or (
            (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi)
        ):
            raise InvalidMessage(path, f"expected {self.describe()}, got {value}")

    def describe(self) -> str:
        if self.lo is not None:
            return f"a finite number of at least {self.lo:g}"
        return "a finite number"


_BLOB_TYPES = (Serialized, bytes, memoryview)


class Blob(Spec):
    """Serialized data: out-of-band frames or plain bytes."""

    __slots__ = ()

    def ok(self, value: Any) -> bool:
        return isinstance(value, _BLOB_TYPES)

    def expression(self, var: str, env: _Env) -> str:
        return f"isinstance({var}, {env.name(_BLOB_TYPES)})"

    def check(self, value: Any, path: str) -> None:
        if not isinstance(value, _BLOB_TYPES):
            raise InvalidMessage(path, f"expected serialized data, got {_shown(value)}")

    def describe(self) -> str:
        return "serialized data"


class Nullable(Spec):
    __slots__ = ("spec",)

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def ok(self, value: Any) -> bool:
        return value is None or self.spec.ok(value)

    def expression(self, var: str, env: _Env) -> str:
        return f"({var} is None or {self.spec.expression(var, env)})"

    def check(self, value: Any, path: str) -> None:
        if value is not None:
            self.spec.check(value, path)

    def describe(self) -> str:
        return f"{self.spec.describe()} or null"


class AnyOf(Spec):
    __slots__ = ("specs",)

    def __init__(self, *specs: Spec) -> None:
        self.specs = specs

    def ok(self, value: Any) -> bool:
        return any(spec.ok(value) for spec in self.specs)

    def expression(self, var: str, env: _Env) -> str:
        return "(" + " or ".join(spec.expression(var, env) for spec in self.specs) + ")"

    def check(self, value: Any, path: str) -> None:
        for spec in self.specs:
            try:
                spec.check(value, path)
                return
            except InvalidMessage:
                continue
        raise InvalidMessage(path, f"expected {self.describe()}, got {_shown(value)}")

    def describe(self) -> str:
        return " or ".join(s.describe() for s in self.specs)


class _Compiled(Spec):
    """A map or list spec: its ``ok`` is a function generated for it (made on first use)."""

    __slots__ = ("_fast",)
    _fast: Callable[[Any], bool]

    def ok(self, value: Any) -> bool:
        try:
            fast = self._fast
        except AttributeError:  # the first time
            fast = self._fast = compiled(self)
        return fast(value)

    def expression(self, var: str, env: _Env) -> str:
        return f"{env.function(self)}({var})"

    def source(self, name: str, env: _Env) -> str:
        """The definition of the function ``name`` testing this spec."""
        raise NotImplementedError


class ListOf(_Compiled):
    __slots__ = ("item", "max_length", "min_length")

    def __init__(self, item: Spec, min_length: int = 0, max_length: int | None = None) -> None:
        self.item = item
        self.min_length = min_length
        self.max_length = max_length

    def source(self, name: str, env: _Env) -> str:
        high = "" if self.max_length is None else f" or len(v) > {self.max_length}"
        return (f"def {name}(v):\n"
                f"    if type(v) is not list or len(v) < {self.min_length}{high}:\n"
                f"        return False\n"
                f"    for x in v:\n"
                f"        if not {self.item.expression('x', env)}:\n"
                f"            return False\n"
                f"    return True\n")

    def check(self, value: Any, path: str) -> None:
        if type(value) is not list:
            raise InvalidMessage(path, f"expected a list, got {_shown(value)}")
        if len(value) < self.min_length or (
            self.max_length is not None and len(value) > self.max_length
        ):
            raise InvalidMessage(path, f"a list of {len(value)} items is outside "
                                 f"{self.min_length}..{self.max_length or 'any'}")
        check = self.item.check
        if type(self.item) is Str:  # the common case, inlined: lists of keys
            lo, hi = self.item.min_length, self.item.max_length
            for i, item in enumerate(value):
                if type(item) is not str or not lo <= len(item) <= hi:
                    check(item, f"{path}[{i}]")
            return
        for i, item in enumerate(value):
            check(item, f"{path}[{i}]")

    def describe(self) -> str:
        return f"a list of {self.item.describe()}"


class MapOf(_Compiled):
    __slots__ = ("key", "value")

    def __init__(self, key: Spec, value: Spec) -> None:
        self.key = key
        self.value = value

    def source(self, name: str, env: _Env) -> str:
        return (f"def {name}(v):\n"
                f"    if type(v) is not dict:\n"
                f"        return False\n"
                f"    for k, x in v.items():\n"
                f"        if not ({self.key.expression('k', env)} and "
                f"{self.value.expression('x', env)}):\n"
                f"            return False\n"
                f"    return True\n")

    def check(self, value: Any, path: str) -> None:
        if type(value) is not dict:
            raise InvalidMessage(path, f"expected a map, got {_shown(value)}")
        check_key, check_value = self.key.check, self.value.check
        for k, v in value.items():
            check_key(k, f"{path} key {_shown(k)}")
            check_value(v, f"{path}[{_shown(k)}]")

    def describe(self) -> str:
        return f"a map of {self.key.describe()} to {self.value.describe()}"


class Record(_Compiled):
    """A map with named fields; ``optional`` ones may be missing (or null).

    Fields not declared are refused, unless ``extra`` gives their shape.
    """

    __slots__ = ("extra", "fields", "optional")

    def __init__(self, fields: Mapping[str, Spec], optional: Sequence[str] = (),
                 extra: Spec | None = None) -> None:
        self.fields = dict(fields)
        self.optional = frozenset(optional)
        self.extra = extra
        unknown = self.optional - set(self.fields)
        if unknown:
            raise ValueError(f"optional fields {sorted(unknown)} are not declared")

    @property
    def required(self) -> frozenset[str]:
        return frozenset(self.fields) - self.optional

    def source(self, name: str, env: _Env) -> str:
        known = env.name(frozenset(self.fields))
        lines = [f"def {name}(v):", "    if type(v) is not dict:", "        return False"]
        if self.extra is None:
            lines += [f"    if not {known}.issuperset(v):", "        return False"]
        else:
            lines += [f"    for k in v.keys() - {known}:",
                      f"        if type(k) is not str or not {self.extra.expression('v[k]', env)}:",
                      "            return False"]
        missing = env.name(_MISSING)
        for field, spec in self.fields.items():
            lines.append(f"    x = v.get({field!r}, {missing})")
            if field in self.optional:
                test = spec.expression("x", env)
                lines += [f"    if x is not {missing} and x is not None and not {test}:",
                          "        return False"]
            else:
                lines += [f"    if x is {missing} or not {spec.expression('x', env)}:",
                          "        return False"]
        return "\n".join([*lines, "    return True", ""])

    def check(self, value: Any, path: str) -> None:
        if type(value) is not dict:
            raise InvalidMessage(path, f"expected a map, got {_shown(value)}")
        fields = self.fields
        seen = 0
        for name, item in value.items():
            spec = fields.get(name)
            if spec is None:
                if type(name) is not str:
                    raise InvalidMessage(path, f"field names must be strings, got {_shown(name)}")
                if self.extra is None:
                    raise InvalidMessage(_join(path, name), "unknown field")
                self.extra.check(item, _join(path, name))
                continue
            seen += 1
            if item is not None or name not in self.optional:
                spec.check(item, _join(path, name))
        if seen < len(fields):
            for name in fields:
                if name not in value and name not in self.optional:
                    raise InvalidMessage(_join(path, name), "missing")

    def describe(self) -> str:
        return "a map of " + ", ".join(sorted(self.fields))


# ---------------------------------------------------------------- compiling ``ok``

_MISSING = object()


def _bounds(var: str, lo: float | None, hi: float | None, env: _Env) -> list[str]:
    def literal(bound: float) -> str:
        return repr(bound) if type(bound) is int else env.name(bound)

    return ([] if lo is None else [f"{var} >= {literal(lo)}"]) + (
        [] if hi is None else [f"{var} <= {literal(hi)}"])


class _Env:
    """The names generated code refers to, and the functions it defines."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sources: list[str] = []
        self._functions: dict[int, str] = {}

    def name(self, value: Any) -> str:
        name = f"_v{len(self.values)}"
        self.values[name] = value
        return name

    def function(self, spec: _Compiled) -> str:
        """The name of the function testing ``spec`` (defined once per spec object)."""
        name = self._functions.get(id(spec))
        if name is None:
            name = self._functions[id(spec)] = f"_f{len(self._functions)}"
            self.sources.append(spec.source(name, self))
        return name


def compiled(spec: _Compiled) -> Any:
    """``spec.ok`` as one generated function."""
    env = _Env()
    top = env.function(spec)
    namespace = dict(env.values)
    exec("\n".join(env.sources), namespace)  # noqa: S102 - our own specs' code
    return namespace[top]
