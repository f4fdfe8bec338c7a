"""Using a Client where Python expects a scheduler or an executor.

* ``client.get(graph, keys)`` runs a dask task graph, so
  ``dask.compute(x, scheduler=client.get)`` (or ``dask.config.set(scheduler=client.get)``)
  computes dask collections on a shoal cluster. dask is not a dependency:
  it is imported only when a graph is run.
* ``client.get_executor()`` is a ``concurrent.futures.Executor``, for code
  written against the standard library.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._client import Client
    from ._future import Future


def key_name(key: Hashable) -> str:
    """A dask key as a shoal key: ``("x-abc", 0, 1)`` -> ``"x-abc-0-1"``."""
    if isinstance(key, tuple):
        return "-".join(str(part) for part in key)
    return str(key)


def _run_node(node: Any, inputs: dict[Hashable, Any]) -> Any:
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


def dask_get(client: Client, graph: Mapping[Hashable, Any], keys: Any, **_: Any) -> Any:
    """Run a dask graph on the cluster and return the values of ``keys`` (nested)."""
    try:
        from dask._task_spec import convert_legacy_graph
    except ImportError as exc:
        raise ImportError("running dask graphs needs dask installed (pip install dask)") from exc
    if not isinstance(graph, Mapping):  # newer dask hands over an expression
        graph = graph.__dask_graph__()
    nodes = convert_legacy_graph(dict(graph))
    futures: dict[Hashable, Future] = {}
    for key in _toposort(nodes):
        node = nodes[key]
        inputs = {dep: futures[dep] for dep in node.dependencies}
        futures[key] = client.submit(_run_node, node, inputs, key=key_name(key))

    def shape(k: Any) -> Any:
        return [shape(x) for x in k] if isinstance(k, list) else futures[k]

    return client.gather(shape(keys))


class ClientExecutor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` that runs on a shoal cluster."""

    def __init__(self, client: Client, **submit_kwargs: Any) -> None:
        self.client = client
        self.submit_kwargs = submit_kwargs
        self._futures: set[concurrent.futures.Future] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to an executor that was shut down")
            shoal_future = self.client.submit(fn, *args, pure=False, **self.submit_kwargs,
                                              **kwargs)
            cf: concurrent.futures.Future = concurrent.futures.Future()
            cf.set_running_or_notify_cancel()
            self._futures.add(cf)

        def copy(done: Future) -> None:
            self._futures.discard(cf)
            if done.status == "finished":
                self._resolve(done, cf)
            else:
                cf.set_exception(done._state.make_exception())

        shoal_future.add_done_callback(copy)
        return cf

    def _resolve(self, done: Future, cf: concurrent.futures.Future) -> None:
        """On the client's loop (where done-callbacks run): fetch, then hand over."""
        task = asyncio.ensure_future(self.client._result(done, None))

        def hand_over(t: asyncio.Future) -> None:
            if t.cancelled():
                cf.cancel()
            elif t.exception() is not None:
                cf.set_exception(t.exception())
            else:
                cf.set_result(t.result())

        task.add_done_callback(hand_over)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            for cf in pending:
                cf.cancel()
        if wait:
            concurrent.futures.wait(pending)
