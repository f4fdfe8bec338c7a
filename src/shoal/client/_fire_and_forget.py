"""``fire_and_forget``: run tasks to completion whatever happens to their futures.

The scheduler holds such keys for a pseudo-client until they finish (or
fail), then lets them go: a task started for its side effects completes
even when its futures are dropped or the client leaves.
"""

from __future__ import annotations

from typing import Any

from ._dask import futures_of


def fire_and_forget(obj: Any) -> None:
    """Keep computing the futures in ``obj`` (a future, containers, a persisted collection)."""
    by_client: dict[int, tuple[Any, list[str]]] = {}
    for future in futures_of(obj):
        by_client.setdefault(id(future.client), (future.client, []))[1].append(future.key)
    for client, keys in by_client.values():
        # on the client's loop, behind the graph that made these keys
        client._call_on_loop(client._send, {"op": "fire-and-forget", "keys": keys})
