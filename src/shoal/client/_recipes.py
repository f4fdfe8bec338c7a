"""Recipes: what the client keeps to make its keys again on a restarted scheduler.

A scheduler that restarts knows nothing; the client sends it again the
recipe of every key it holds a future for (see ``Client._resubmit``).  A
client may hold a million futures, so a recipe must cost little more than
the arguments it keeps:

* the tasks without inputs of one ``map`` call share one :class:`Column`:
  the call they have in common, and per task its key and its arguments,
  packed end to end in one ``bytes``; each key's state points at the column;
* any other task has a small tuple, ``(key, serialized arguments, call)``,
  and when it has inputs, their recipes and their keys (a tuple of strings,
  which the cyclic collector stops tracking) as a fourth and fifth item;
  ``call`` is ``(the task's other fields, its function)``, one tuple shared
  by every task of the function with no fields of its own (the client's
  function cache keeps it), or of the graph's common fields.  An input
  nobody holds a future for lives on inside the recipes of its dependents.

The functions here work on the client's dict of states by key and are run
under the client's lock.
"""

from __future__ import annotations

from array import array
from itertools import accumulate
from typing import TYPE_CHECKING, Any, NamedTuple

from ..protocol import Serialized

if TYPE_CHECKING:
    from ._future import FutureState

Recipe = tuple[Any, ...]
Call = tuple[dict[str, Any], Serialized]
#: The fields of a task message that are not the same for every task of a graph.
_OWN_FIELDS = ("key", "args", "deps")
_MISSING = object()
#: The states of keys not sent again: a failed or cancelled key stays so.
_NOT_WANTED = ("error", "cancelled")


class Packed(NamedTuple):
    """The keys of a column and their arguments: those of key ``i`` are
    ``blob[bounds[i]:bounds[i + 1]]``, or ``large[i]`` for arguments with
    out-of-band frames.  Never changed once made (see :meth:`Column.forget`)."""

    keys: list[str]
    blob: bytes
    bounds: array[int]
    large: dict[int, Serialized]

    def args(self, start: int, stop: int) -> list[Any]:
        """The arguments of keys ``start`` to ``stop``, as the wire carries them."""
        blob, bounds = self.blob, self.bounds
        out: list[Any] = [blob[a:b] for a, b in zip(bounds[start:stop], bounds[start + 1:stop + 1])]
        for i, ser in self.large.items():
            if start <= i < stop:
                out[i - start] = ser
        return out

    def subset(self, positions: list[int]) -> Packed:
        """A new one of the keys at ``positions`` alone."""
        blob, bounds, large = self.blob, self.bounds, self.large
        pieces = [blob[bounds[i]:bounds[i + 1]] for i in positions]
        new_bounds = array(bounds.typecode, [0])
        new_bounds.extend(accumulate(map(len, pieces)))
        return Packed([self.keys[i] for i in positions], b"".join(pieces), new_bounds,
                      {j: large[i] for j, i in enumerate(positions) if i in large} if large else {})


class ColumnBuilder:
    """Collects the keys and arguments of a column while a ``map`` call runs."""

    __slots__ = ("blob", "bounds", "keys", "large")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.blob = bytearray()
        self.bounds = array("I", [0])  # four bytes an offset, up to 4 GiB of arguments
        self.large: dict[int, Serialized] = {}

    def add(self, key: str, args: Any) -> None:
        if type(args) is bytes:
            self.blob += args
        else:
            self.large[len(self.keys)] = args
        try:
            self.bounds.append(len(self.blob))
        except OverflowError:
            self.bounds = array("Q", self.bounds)
            self.bounds.append(len(self.blob))
        self.keys.append(key)

    def packed(self) -> Packed:
        return Packed(self.keys, bytes(self.blob), self.bounds, self.large)


class Column:
    """The recipes of one ``map`` call's tasks without inputs.

    A held key costs a slot in ``keys`` and its arguments' own bytes here, no
    object of its own.  The states point at the column while the call runs;
    :meth:`fill` gives it its keys at the end.  Keys are only ever let go of
    then: once half of them are, :meth:`forget` packs those still held anew,
    so a column outlives its keys by at most their count again.
    """

    __slots__ = ("_index", "call", "dropped", "packed")

    def __init__(self, call: Call) -> None:
        self.call = call
        self.fill(ColumnBuilder().packed())

    def fill(self, packed: Packed) -> None:
        self.packed = packed
        self.dropped = 0  # keys let go of since the last packing (an upper bound)
        self._index: dict[str, int] | None = None  # made once a dependent asks

    def held(self, states: dict[str, FutureState]) -> list[int]:
        """The positions of the keys whose state still points here."""
        return [i for i, key in enumerate(self.packed.keys)
                if (state := states.get(key)) is not None and state.recipe is self]

    def forget(self, states: dict[str, FutureState]) -> None:
        """A state that pointed here was let go of (the client's lock is held)."""
        self.dropped += 1
        if 2 * self.dropped > len(self.packed.keys):
            self.fill(self.packed.subset(self.held(states)))

    def recipe(self, key: str) -> Recipe | None:
        """The recipe of one key as a tuple, for the recipe of a task depending on it."""
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.packed.keys)}
        i = self._index.get(key)
        return None if i is None else (key, self.packed.args(i, i + 1)[0], self.call)


def keep_recipes(states: dict[str, FutureState], tasks: list[dict], call: Call) -> None:
    """Remember how to make each key of a graph again: on its state, or (a task
    nobody holds a future for) inside its dependents' recipes.  ``call`` is
    the fields most of the tasks have (their function's token at least) and
    the function: the recipe of every task with just those shares it."""
    made: dict[str, Recipe] = {}
    shared, func = call
    for task in tasks:
        key = task["key"]
        deps = task.get("deps")
        if _only(task, shared, 2 if deps is None else 3):
            own = call
        else:
            own = ({k: v for k, v in task.items() if k not in _OWN_FIELDS}, func)
        recipe: Recipe
        if deps:
            found = (_recipe_of(states, d, made) for d in deps)
            recipe = (key, task["args"], own, tuple(r for r in found if r is not None),
                      tuple(deps))
        else:
            recipe = (key, task["args"], own)
        made[key] = recipe
        state = states.get(key)
        if state is not None:
            state.recipe = recipe


def _only(task: dict[str, Any], shared: dict[str, Any], own: int) -> bool:
    """Whether ``task``'s fields are ``shared`` and its ``own`` (key, args, deps)."""
    if len(task) - own != len(shared):
        return False
    for name, value in shared.items():
        if task.get(name, _MISSING) != value:
            return False
    return True


def _recipe_of(states: dict[str, FutureState], key: str, made: dict[str, Recipe]) -> Recipe | None:
    recipe = made.get(key)
    if recipe is None:
        state = states.get(key)
        recipe = state.recipe if state is not None else None
        if type(recipe) is Column:
            recipe = recipe.recipe(key)
    return recipe


def resubmission(states: dict[str, FutureState]
                 ) -> tuple[list[str], list[dict[str, Any]], dict[str, Serialized]]:
    """What to send a new scheduler: the keys still wanted, the task messages
    that make them (each after its inputs), and the functions those call."""
    wanted = [k for k, s in states.items() if s.status not in _NOT_WANTED]
    columns: dict[Column, None] = {}
    roots: list[Recipe] = []
    for key in wanted:
        recipe = states[key].recipe
        if type(recipe) is Column:
            columns[recipe] = None
        elif recipe is not None:
            roots.append(recipe)
    tasks: list[dict[str, Any]] = []
    functions: dict[str, Serialized] = {}
    seen: set[str] = set()
    for column in columns:  # no inputs: these go first
        fields, func = column.call
        packed = column.packed
        for i in column.held(states):
            key = packed.keys[i]
            if key not in seen and states[key].status not in _NOT_WANTED:
                seen.add(key)
                tasks.append({"key": key, "args": packed.args(i, i + 1)[0], **fields})
                functions[fields["func"]] = func
    stack: list[tuple[Recipe, bool]] = [(r, False) for r in reversed(roots)]
    while stack:  # depth first, each task after its inputs
        recipe, inputs_done = stack.pop()
        key, args, (fields, func) = recipe[:3]
        if key in seen:
            continue
        if inputs_done:
            seen.add(key)
            task = {"key": key, "args": args, **fields}
            if len(recipe) > 4:
                task["deps"] = list(recipe[4])
            tasks.append(task)
            functions[fields["func"]] = func
            continue
        stack.append((recipe, True))
        inputs = recipe[3] if len(recipe) > 3 else ()
        stack.extend((r, False) for r in inputs if r[0] not in seen)
    return wanted, tasks, functions
