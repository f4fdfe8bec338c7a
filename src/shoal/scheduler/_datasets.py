"""Published datasets: named data that outlives the client that made it.

A client publishes a name with some data (pickled by the client, futures
inside it replaced by their keys) and the keys it needs.  The scheduler keeps
the bytes and holds the keys (see ``_holds.py``), so the results stay in
memory after the publisher leaves; any client can fetch the bytes by name
and take its own hold on the keys.  Unpublishing drops the hold.  Publishing
travels on the client's ordered stream, after the graph that made the keys,
and is confirmed on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._server import Scheduler


class Datasets:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.published: dict[str, tuple[Any, list[str], str]] = {}  # data, keys, hold

    def publish(self, client: str, name: Any, data: Any, keys: Any,
                override: bool = False, request: Any = None) -> None:
        """From a client's stream: publish, then confirm (or refuse) on the stream."""
        error = None
        if not isinstance(name, str) or not isinstance(keys, list) or not all(
                isinstance(k, str) for k in keys):
            error = "publish-dataset needs a string name and a list of string keys"
        elif name in self.published and not override:
            error = f"a dataset named {name!r} is already published (override=True replaces it)"
        else:
            if name in self.published:
                self._release(name)
            self.published[name] = (data, keys, self.scheduler.holds.hold(keys, "dataset"))
        self.scheduler.confirm(client, request, error)

    def get(self, name: str, client: str) -> dict[str, Any]:
        if name not in self.published:
            return {"status": "ok", "found": False}
        data, keys, _ = self.published[name]
        hold = self.scheduler.holds.hold(keys, "transfer", for_client=client)
        return {"status": "ok", "found": True, "data": data, "keys": keys, "hold": hold}

    def names(self) -> list[str]:
        return sorted(self.published)

    def unpublish(self, name: str) -> dict[str, Any]:
        if name not in self.published:
            return {"status": "missing"}
        self._release(name)
        return {"status": "ok"}

    def _release(self, name: str) -> None:
        self.scheduler.holds.release(self.published.pop(name)[2])
