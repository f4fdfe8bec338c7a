"""Published datasets: named data that outlives the client that made it.

A client publishes a name with some data (pickled by the client, futures
inside it replaced by their keys) and the keys it needs.  The scheduler keeps
the bytes and holds the keys for a pseudo-client ``dataset-<name>``, so the
results stay in memory after the publisher leaves; any client can fetch the
bytes by name and take its own hold on the keys.  Unpublishing drops the
hold.  Publishing travels on the client's ordered stream, after the graph
that made the keys, and is confirmed on it (``dataset-published``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._events import ClientReleasesKeys, ClientWantsKeys

if TYPE_CHECKING:
    from ._server import Scheduler


def holder(name: str) -> str:
    """The pseudo-client that holds a dataset's keys."""
    return f"dataset-{name}"


class Datasets:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.published: dict[str, tuple[Any, list[str]]] = {}

    def publish(self, client: str, name: Any, data: Any, keys: Any,
                override: bool = False) -> None:
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
            self.published[name] = (data, keys)
            self.scheduler.handle(ClientWantsKeys(self.scheduler.stimulus("publish"),
                                                  holder(name), keys))
        stream = self.scheduler.client_streams.get(client)
        if stream is not None:
            stream.send({"op": "dataset-published", "name": name, "error": error})

    def get(self, name: str) -> dict[str, Any]:
        if name not in self.published:
            return {"status": "missing"}
        data, keys = self.published[name]
        return {"status": "ok", "data": data, "keys": keys}

    def names(self) -> list[str]:
        return sorted(self.published)

    def unpublish(self, name: str) -> dict[str, Any]:
        if name not in self.published:
            return {"status": "missing"}
        self._release(name)
        return {"status": "ok"}

    def _release(self, name: str) -> None:
        _, keys = self.published.pop(name)
        self.scheduler.handle(ClientReleasesKeys(self.scheduler.stimulus("unpublish"),
                                                 holder(name), keys))
