"""dask collections on a shoal cluster.

A dask graph is turned into shoal tasks (one per graph node, in dependency
order) and sent to the scheduler as *one* ``update-graph`` message that
wants only the keys asked for: the intermediates are released by the
scheduler as soon as nothing needs them, and nothing on this side keeps a
reference to them.  This module holds what ``client.get``,
``client.compute``, ``client.persist`` and :func:`futures_of` share, and the
dask configuration that makes a Client dask's default scheduler.

dask is not a dependency: it is imported when a graph is run, or when a
Client makes itself the default (only if dask is installed).
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .._gc import collection_paused
from ..protocol._task import KEEP, KeyRef, replace
from ._future import Future

if TYPE_CHECKING:
    from ._client import Client


def key_name(key: Hashable) -> str:
    """A dask key as a shoal key: ``("x-abc", 0, 1)`` -> ``"x-abc-0-1"``."""
    if isinstance(key, tuple):
        return "-".join(str(part) for part in key)
    return str(key)


def run_node(node: Any, inputs: dict[Hashable, Any]) -> Any:
    """On a worker: evaluate one dask graph node given its inputs' values."""
    return node(inputs)


def _toposort(graph: Mapping[Hashable, Any]) -> list[Hashable]:
    order: list[Hashable] = []
    state: dict[Hashable, int] = {}  # 1: on the stack, 2: done
    for root in graph:
        if state.get(root):
            continue
        state[root] = 1
        stack: list[tuple[Hashable, Iterator[Hashable]]] = [(root, iter(graph[root].dependencies))]
        while stack:
            key, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                state[key] = 2
                order.append(key)
            elif dep in graph and not state.get(dep):
                state[dep] = 1
                stack.append((dep, iter(graph[dep].dependencies)))
            elif state.get(dep) == 1:
                raise ValueError(f"the graph has a cycle through {dep!r}")
    return order


def _task_nodes(graph: Any) -> dict[Hashable, Any]:
    try:
        from dask._task_spec import convert_legacy_graph
    except ImportError as exc:
        raise ImportError("running dask graphs needs dask installed (pip install dask)") from exc
    if not isinstance(graph, Mapping):  # newer dask hands over an expression
        graph = graph.__dask_graph__()
    return convert_legacy_graph(dict(graph))


_RESTRICTIONS = ("workers", "allow_other_workers", "retries", "priority", "resources")


def submit_graph(client: Client, graph: Any, wanted: list[Hashable],
                 restrictions: dict[str, Any] | None = None) -> dict[Hashable, Future]:
    """Send a whole dask graph in one message; futures for the ``wanted`` keys.

    ``restrictions`` (``workers=``, ``retries=``, ...) apply to every task,
    under what ``dask.annotate`` set per key.  A Future of this client in
    the graph (a persisted collection's pieces) is an input read by its key.
    """
    with collection_paused():  # a large graph: thousands of objects, none garbage
        return _submit_graph(client, graph, wanted, restrictions)


def _submit_graph(client: Client, graph: Any, wanted: list[Hashable],
                  restrictions: dict[str, Any] | None) -> dict[Hashable, Future]:
    from ._client import _restrict

    nodes = _task_nodes(graph)
    annotations = annotations_of(graph)
    names: dict[Hashable, str] = {}
    held: list[Future] = []
    tasks: list[dict[str, Any]] = []
    call = client._functions.get(run_node)
    token = call[0]["func"]
    for key in _toposort(nodes):
        node = nodes[key]
        names[key] = key_name(key)
        inputs = {dep: KeyRef(names[dep] if dep in names else _held_key(client, dep))
                  for dep in node.dependencies}
        task, found = client._task(token, (node, inputs), {}, names[key], True)
        held.extend(found)
        deps = list(dict.fromkeys([*task.get("deps", ()), *(r.key for r in inputs.values())]))
        if deps:
            task["deps"] = deps
        opts = {**(restrictions or {}),
                **{name: annotations[name][key] for name in _RESTRICTIONS
                   if key in annotations.get(name, {})}}
        if opts:
            _restrict(task, opts.get("workers"), bool(opts.get("allow_other_workers")),
                      int(opts.get("retries") or 0), int(opts.get("priority") or 0),
                      opts.get("resources"))
        tasks.append(task)
    missing = [k for k in wanted if k not in names]
    if missing:
        raise KeyError(f"keys not in the graph: {missing[:5]}")
    futures = {k: Future(names[k], client) for k in wanted}
    client._send_graph(tasks, call,
                       list(dict.fromkeys(names[k] for k in wanted)), held)
    return futures


def annotations_of(graph: Any) -> dict[str, dict[Hashable, Any]]:
    """``{annotation: {key: value}}`` as ``dask.annotate`` left them on the graph."""
    get = getattr(graph, "__dask_annotations__", None)
    return dict(get()) if get is not None else {}


def _held_key(client: Client, key: Hashable) -> str:
    """A dependency from outside the graph: it must be a key this client holds."""
    if not isinstance(key, str) or key not in client._states:
        raise KeyError(f"the graph depends on {key!r}, which is neither in it nor a future "
                       "of this client")
    return key


def _flatten(keys: Any) -> list[Hashable]:
    if isinstance(keys, list):
        return [k for sub in keys for k in _flatten(sub)]
    return [keys]


def _nest(keys: Any, values: Mapping[Hashable, Any]) -> Any:
    if isinstance(keys, list):
        return [_nest(k, values) for k in keys]
    return values[keys]


def dask_get(client: Client, graph: Any, keys: Any, **_: Any) -> Any:
    """Run a dask graph on the cluster and return the values of ``keys`` (nested)."""
    futures = submit_graph(client, graph, _flatten(keys))
    return client.gather(_nest(keys, futures))


# ------------------------------------------------------------ collections


def compute(client: Client, collections: list[Any], optimize_graph: bool = True,
            restrictions: dict[str, Any] | None = None) -> list[Future]:
    """One future per collection, holding its finalized value."""
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr

    futures = []
    for coll in collections:
        expr = FinalizeCompute(collections_to_expr([coll], optimize_graph)).optimize()
        (key,) = _flatten(expr.__dask_keys__())
        futures.append(submit_graph(client, expr, [key], restrictions)[key])
    return futures


def persist(client: Client, collections: list[Any], optimize_graph: bool = True,
            restrictions: dict[str, Any] | None = None) -> list[Any]:
    """Each collection rebuilt over futures of its output keys, computing on the cluster."""
    from dask._expr import CompositeExpr, _ExprSequence
    from dask.base import _rebuild_composite_collection, collections_to_expr

    expr = collections_to_expr(list(collections), optimize_graph)
    exprs = list(expr.operands) if isinstance(expr, _ExprSequence) else [expr]
    expr = expr.optimize()
    if any(isinstance(e, CompositeExpr) for e in exprs):  # as dask.persist does
        exprs = list(expr.operands) if isinstance(expr, _ExprSequence) else [expr]
    per_collection = [_flatten(k) for k in expr.__dask_keys__()]
    wanted = [k for keys in per_collection for k in keys]
    futures = submit_graph(client, expr, wanted, restrictions)
    out = []
    for coll, sub, keys in zip(collections, exprs, per_collection, strict=True):
        mine = {k: futures[k] for k in keys}
        if isinstance(sub, CompositeExpr):
            out.append(_rebuild_composite_collection(coll, sub, mine, cull_to_child_keys=True))
        else:
            rebuild, state = coll.__dask_postpersist__()
            out.append(rebuild(mine, *state))
    return out


def futures_of(obj: Any) -> list[Future]:
    """The futures inside ``obj``: a future, containers of them, or a persisted collection."""
    found: dict[str, Future] = {}

    def collect(leaf: Any) -> Any:
        if type(leaf) is Future:
            found.setdefault(leaf.key, leaf)
        elif _is_collection(leaf):
            for value in dict(leaf.__dask_graph__()).values():
                if type(value) is Future:
                    found.setdefault(value.key, value)
        return KEEP

    replace([obj], collect)
    return list(found.values())


# ------------------------------------------------------------ the default scheduler


class _ClientGet:
    """What dask's ``scheduler`` setting holds for a default Client.

    Callable like ``client.get`` and with ``persist`` (which ``dask.persist``
    looks for), but holding the client weakly, so the global configuration
    does not keep a forgotten client alive.
    """

    __slots__ = ("_client",)

    def __init__(self, client: Client) -> None:
        self._client = weakref.ref(client)

    def client(self) -> Client:
        client = self._client()
        if client is None or client.status != "running":
            raise RuntimeError("dask's default scheduler is a shoal Client that was closed")
        return client

    def __call__(self, graph: Any, keys: Any, **kwargs: Any) -> Any:
        return self.client().get(graph, keys, **kwargs)

    def persist(self, collections: Any, **kwargs: Any) -> Any:
        return self.client().persist(collections, **kwargs)


_defaults: list[_ClientGet] = []  # clients that made themselves the default, oldest first
_saved: list[Any] = []  # the configuration they replaced (a dask.config.set context)


def set_default(client: Client) -> None:
    """Make ``client`` dask's default scheduler, as creating a dask.distributed Client does."""
    try:
        import dask.config
    except ImportError:  # dask is optional: nothing to configure
        return
    handle = _ClientGet(client)
    # "tasks": dask's disk shuffle writes to this machine's disk, which
    # workers on other machines cannot read.
    context = dask.config.set({"dataframe.shuffle.method": "tasks"}, scheduler=handle)
    if not _defaults:
        _saved.append(context)
    _defaults.append(handle)


def unset_default(client: Client) -> None:
    """Undo :func:`set_default`: the previous default client, or dask's own setting."""
    mine = [h for h in _defaults if h._client() is client]
    if not mine:
        return
    import dask.config

    current = dask.config.get("scheduler", None)
    for handle in mine:
        _defaults.remove(handle)
    if current not in mine:  # the user set another scheduler since: leave it
        return
    live = [h for h in _defaults if (c := h._client()) is not None and c.status == "running"]
    if live:
        dask.config.set(scheduler=live[-1])
    else:
        _defaults.clear()
        _saved.pop().__exit__(None, None, None)


# ------------------------------------------------------------ Client.compute / Client.persist


def _is_collection(obj: Any) -> bool:
    return hasattr(obj, "__dask_graph__") and not isinstance(obj, type)


def _check_restrictions(restrictions: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(restrictions) - set(_RESTRICTIONS))
    if unknown:
        raise TypeError(f"unexpected keyword arguments {unknown}; accepted: {list(_RESTRICTIONS)}")
    return restrictions


def _each_collection(collections: Any, run: Any) -> tuple[list[Any], bool]:
    """``run`` over the dask collections in ``collections``; other items pass through."""
    single = not isinstance(collections, (list, tuple))
    items = [collections] if single else list(collections)
    colls = [c for c in items if _is_collection(c)]
    results = iter(run(colls) if colls else [])
    return [next(results) if _is_collection(c) else c for c in items], single


def compute_collections(client: Client, collections: Any, sync: bool, optimize_graph: bool,
                        restrictions: dict[str, Any]) -> Any:
    """``client.compute``: a future per collection (a list for a list)."""
    _check_restrictions(restrictions)
    out, single = _each_collection(
        collections, lambda colls: compute(client, colls, optimize_graph, restrictions))
    if sync:
        out = client.gather(out)
    return out[0] if single else out


def persist_collections(client: Client, collections: Any, optimize_graph: bool,
                        restrictions: dict[str, Any]) -> Any:
    """``client.persist``: each collection backed by futures (a list for a list)."""
    _check_restrictions(restrictions)
    out, single = _each_collection(
        collections, lambda colls: persist(client, colls, optimize_graph, restrictions))
    return out[0] if single else out
