"""``Variable`` and ``Queue``: values shared by name across the cluster.

Handles on a name kept by the scheduler (see ``scheduler/_shared.py``),
through the given client or ``get_client()``; values may hold futures (also
persisted collections), which the receiver gets as its own.  They pickle as
their name, so tasks can be given one.
"""

from __future__ import annotations

from typing import Any

from .._exceptions import ShoalTimeoutError
from . import _datasets
from ._client import Client
from ._coordination import _Named


class _Shared(_Named):
    def _store(self, op: str, value: Any) -> None:
        client = self.client
        client.sync(lambda: _datasets.store(client, op, self.name, value))

    def _receive(self, op: str, timeout: float | None, missing: str) -> Any:
        client = self.client

        async def get() -> Any:
            answer = await client.ask_scheduler(op, name=self.name,
                                                client=client.id, timeout=timeout)
            if not answer["found"]:
                raise ShoalTimeoutError(f"{self!r}: {missing} within timeout={timeout}s")
            return _datasets.receive(client, answer)

        return client.sync(get)

    def __reduce__(self) -> Any:
        return (type(self), (self.name,))


class Variable(_Shared):
    """One value by name: ``set``, ``get(timeout)`` (waits until set), ``delete``."""

    def set(self, value: Any) -> None:
        self._store("variable-set", value)

    def get(self, timeout: float | None = None) -> Any:
        return self._receive("variable_get", timeout, "no value was set")

    def delete(self) -> None:
        self._ask("variable_delete")


class Queue(_Shared):
    """A first-in first-out queue by name: ``put``, ``get(timeout)``, ``qsize``;
    with ``maxsize`` (0: unbounded), ``put`` waits while it is full."""

    def __init__(self, name: str | None = None, client: Client | None = None,
                 maxsize: int = 0) -> None:
        super().__init__(name, client)
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be a non-negative integer, got {maxsize!r}")
        self.maxsize = maxsize

    def put(self, value: Any, timeout: float | None = None) -> None:
        """Add ``value``; if the queue is full, wait up to ``timeout`` for room."""
        client = self.client
        try:
            client.sync(lambda: _datasets.store(client, "queue-put", self.name, value,
                                                maxsize=self.maxsize, timeout=timeout))
        except ValueError as exc:
            if str(exc).startswith("full: "):
                raise ShoalTimeoutError(f"{self!r}: {str(exc)[6:]}") from None
            raise

    def get(self, timeout: float | None = None, batch: bool | int = False) -> Any:
        """The oldest item (waiting up to ``timeout``); ``batch=n``: a list of n."""
        if batch is False:
            return self._receive("queue_get", timeout, "no item arrived")
        count = self.qsize() if batch is True else int(batch)
        return [self._receive("queue_get", timeout, "no item arrived") for _ in range(count)]

    def qsize(self) -> int:
        return int(self._ask("queue_size")["size"])

    def __reduce__(self) -> Any:
        return (Queue, (self.name, None, self.maxsize))
