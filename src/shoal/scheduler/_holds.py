"""Keys held on the scheduler for something that is not a client.

A published dataset, a Variable's value, an item in a Queue, and a value on
its way to the client that asked for it: each holds the keys of the futures
inside it, as a pseudo-client with its own id, so their results stay in
memory exactly as long as that thing exists.  A value given to a client is
held until that client says (on its ordered stream, after it took its own
hold) that it no longer needs the scheduler's, or until it disconnects.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from ._events import ClientReleasesKeys, ClientWantsKeys

if TYPE_CHECKING:
    from ._server import Scheduler


class Holds:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.keys: dict[str, list[str]] = {}
        self._for_client: dict[str, set[str]] = {}
        self._ids = itertools.count()

    def hold(self, keys: list[str], what: str, for_client: str | None = None) -> str:
        """Hold ``keys`` (may be empty); returns the hold's id."""
        hold = f"{what}-hold-{next(self._ids)}"
        self.keys[hold] = keys
        if for_client is not None:
            self._for_client.setdefault(for_client, set()).add(hold)
        if keys:
            self.scheduler.handle(ClientWantsKeys(self.scheduler.stimulus("hold"), hold, keys))
        return hold

    def release(self, hold: str) -> None:
        keys = self.keys.pop(hold, None)
        for holds in self._for_client.values():
            holds.discard(hold)
        if keys:
            self.scheduler.handle(ClientReleasesKeys(self.scheduler.stimulus("release-hold"),
                                                     hold, keys))

    def release_for(self, client: str, hold: object) -> None:
        """``client`` took its own hold on a value given to it."""
        if isinstance(hold, str) and hold in self._for_client.get(client, ()):
            self.release(hold)

    def client_gone(self, client: str) -> None:
        """Values that were on their way to ``client`` are not needed any more."""
        for hold in self._for_client.pop(client, set()):
            self.release(hold)

    def clear(self) -> None:
        self.keys.clear()
        self._for_client.clear()
