"""Variables and queues by name: values (futures inside them too) shared
between clients and tasks, as with dask.distributed's ``Variable`` and
``Queue``.

Values arrive pickled by the client (futures recorded as keys, see
``client/_datasets.py``) on the client's ordered stream, behind the graph
that made their futures, and are confirmed on it.  Each stored value holds
its keys (see ``_holds.py``); a value handed out is held for the receiving
client until it has taken its own hold.  ``get`` waits here, bounded by the
caller's timeout.  A queue with a ``maxsize`` holds a put that finds it
full (its value held meanwhile) until a get makes room, in the order the
puts came, and confirms it then; or refuses it when its timeout passes.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._server import Scheduler

Value = tuple[Any, list[str]]  # pickled data, keys of the futures inside


class _WaitingPut:
    """A put into a full queue: its item (held), whom to confirm, its timer."""

    __slots__ = ("client", "item", "request", "timer")

    def __init__(self, item: tuple[Value, str], client: str, request: Any) -> None:
        self.item, self.client, self.request = item, client, request
        self.timer: asyncio.TimerHandle | None = None


def _check(name: Any, data: Any, keys: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return "a variable or queue needs a non-empty string name"
    if not isinstance(data, bytes) or not isinstance(keys, list) or not all(
            isinstance(k, str) for k in keys):
        return "a value needs pickled bytes and a list of string keys"
    return None


class Shared:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.variables: dict[str, tuple[Value, str]] = {}  # name -> value, its hold
        self.queues: dict[str, collections.deque[tuple[Value, str]]] = {}
        self.maxsizes: dict[str, int] = {}
        self.waiting_puts: dict[str, collections.deque[_WaitingPut]] = {}
        self._changed: dict[str, asyncio.Condition] = {}

    def _condition(self, name: str) -> asyncio.Condition:
        return self._changed.setdefault(name, asyncio.Condition())

    def handlers(self) -> dict[str, Any]:
        return {"variable_get": self.variable_get, "variable_delete": self.variable_delete,
                "queue_get": self.queue_get, "queue_size": self.queue_size}

    # ---------------------------------------------------------- from client streams

    def store(self, client: str, msg: dict[str, Any]) -> None:
        """``variable-set`` or ``queue-put``: store (and hold, before the stream's next
        message is read), confirm on the stream, then wake the waiting getters."""
        name, data, keys = msg.get("name"), msg.get("data"), msg.get("keys")
        error = _check(name, data, keys)
        if error is None:
            assert isinstance(name, str) and isinstance(keys, list)
            holds = self.scheduler.holds
            if msg.get("op") == "variable-set":
                old = self.variables.get(name)
                self.variables[name] = ((data, keys), holds.hold(keys, "variable"))
                if old is not None:
                    holds.release(old[1])
            else:
                item = ((data, keys), holds.hold(keys, "queue"))
                if msg.get("maxsize"):
                    self.maxsizes[name] = msg["maxsize"]
                if self._full(name) or self.waiting_puts.get(name):
                    self._wait_for_room(name, _WaitingPut(item, client, msg.get("request")),
                                        msg.get("timeout"))
                    return  # confirmed once there is room
                self.queues.setdefault(name, collections.deque()).append(item)
            self.scheduler._spawn(self._wake(name))
        self.scheduler.confirm(client, msg.get("request"), error)

    def _full(self, name: str) -> bool:
        maxsize = self.maxsizes.get(name, 0)
        return maxsize > 0 and len(self.queues.get(name, ())) >= maxsize

    def _wait_for_room(self, name: str, put: _WaitingPut, timeout: float | None) -> None:
        self.waiting_puts.setdefault(name, collections.deque()).append(put)
        if timeout is not None:
            put.timer = asyncio.get_running_loop().call_later(
                timeout, self._put_timed_out, name, put, timeout)

    def _put_timed_out(self, name: str, put: _WaitingPut, timeout: float) -> None:
        waiting = self.waiting_puts.get(name)
        if waiting is None or put not in waiting:
            return
        waiting.remove(put)
        self.scheduler.holds.release(put.item[1])
        self.scheduler.confirm(put.client, put.request,
                               f"full: queue {name!r} had no room within timeout={timeout}s")

    def _admit(self, name: str) -> None:
        """A get made room: the waiting puts go in, oldest first."""
        waiting = self.waiting_puts.get(name)
        while waiting and not self._full(name):
            put = waiting.popleft()
            if put.timer is not None:
                put.timer.cancel()
            self.queues.setdefault(name, collections.deque()).append(put.item)
            self.scheduler.confirm(put.client, put.request, None)
            self.scheduler._spawn(self._wake(name))

    async def _wake(self, name: str) -> None:
        async with self._condition(name):
            self._condition(name).notify_all()

    # ---------------------------------------------------------- requests

    def _hand_out(self, value: Value, client: str) -> dict[str, Any]:
        data, keys = value
        hold = self.scheduler.holds.hold(keys, "transfer", for_client=client)
        return {"status": "ok", "found": True, "data": data, "keys": keys, "hold": hold}

    async def variable_get(self, name: str, client: str,
                           timeout: float | None = None) -> dict[str, Any]:
        condition = self._condition(name)
        try:
            async with asyncio.timeout(timeout), condition:
                await condition.wait_for(lambda: name in self.variables)
        except TimeoutError:
            return {"status": "ok", "found": False}
        return self._hand_out(self.variables[name][0], client)

    def variable_delete(self, name: str) -> dict[str, Any]:
        entry = self.variables.pop(name, None)
        if entry is not None:
            self.scheduler.holds.release(entry[1])
        return {"status": "ok"}

    async def queue_get(self, name: str, client: str,
                        timeout: float | None = None) -> dict[str, Any]:
        condition = self._condition(name)
        try:
            async with asyncio.timeout(timeout), condition:
                await condition.wait_for(lambda: bool(self.queues.get(name)))
                value, hold = self.queues[name].popleft()
        except TimeoutError:
            return {"status": "ok", "found": False}
        self._admit(name)
        answer = self._hand_out(value, client)
        self.scheduler.holds.release(hold)
        return answer

    def queue_size(self, name: str) -> dict[str, Any]:
        return {"status": "ok", "size": len(self.queues.get(name, ()))}

    def clear(self) -> None:
        self.variables.clear()
        self.queues.clear()
        for waiting in self.waiting_puts.values():
            for put in waiting:
                if put.timer is not None:
                    put.timer.cancel()
        self.waiting_puts.clear()
