"""``Event``, ``Lock``, ``Semaphore`` and ``MultiLock``: coordination by name
across the cluster.

Each is a name on the scheduler (see ``scheduler/_coordination.py``); these
objects are handles that talk to it through a client: the one given, or
``get_client()`` (inside a task, its worker's client).  They pickle as their
name, so a task can be handed one.

A ``Semaphore`` (or ``Lock``) lease lasts ``lease_timeout`` seconds unless
its holder's client refreshes it, which it does every fifth of that while it
holds leases: the lease of a client or worker that died is taken back after
the timeout, as with dask.distributed.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any, Self

from ..comm import CommClosedError
from ._client import Client
from ._worker_client import get_client

#: dask.distributed's default (``distributed.scheduler.locks.lease-timeout``).
DEFAULT_LEASE_TIMEOUT = 30.0


class _Named:
    def __init__(self, name: str | None = None, client: Client | None = None) -> None:
        self.name = name or f"{type(self).__name__.lower()}-{uuid.uuid4().hex}"
        self._client = client

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = get_client()
        return self._client

    def _ask(self, op: str, **kwargs: Any) -> Any:
        client = self.client
        return client.sync(lambda: client.ask_scheduler(op, name=self.name, **kwargs))

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.name}>"


class _Held:
    """``with``: acquire on entry, release on exit."""

    def acquire(self) -> bool:
        raise NotImplementedError

    def release(self) -> Any:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Event(_Named):
    """A flag many can wait on: ``set``, ``clear``, ``wait(timeout)``, ``is_set``."""

    def set(self) -> None:
        self._ask("event_set")

    def clear(self) -> None:
        self._ask("event_clear")

    def is_set(self) -> bool:
        return bool(self._ask("event_is_set")["set"])

    def wait(self, timeout: float | None = None) -> bool:
        """True once the event is set; False if ``timeout`` passed first."""
        return bool(self._ask("event_wait", timeout=timeout)["set"])

    def __reduce__(self) -> Any:
        return (Event, (self.name,))


class Semaphore(_Held, _Named):
    """At most ``max_leases`` holders at once, cluster-wide; a lease whose holder
    stopped refreshing it (gone) is released after ``lease_timeout`` seconds
    (None: never)."""

    def __init__(self, max_leases: int = 1, name: str | None = None,
                 client: Client | None = None,
                 lease_timeout: float | None = DEFAULT_LEASE_TIMEOUT) -> None:
        super().__init__(name, client)
        if lease_timeout is not None and not lease_timeout > 0:
            raise ValueError(f"lease_timeout must be positive seconds or None, "
                             f"got {lease_timeout!r}")
        self.max_leases = max_leases
        self.lease_timeout = lease_timeout
        self._leases: list[str] = []
        self._refresher: Any = None
        self._refresh_lock = threading.Lock()

    def acquire(self, timeout: float | None = None) -> bool:
        """Take a lease (waiting up to ``timeout``); False if none became free."""
        lease = f"{self.name}-lease-{uuid.uuid4().hex}"
        answer = self._ask("semaphore_acquire", lease=lease, max_leases=self.max_leases,
                           timeout=timeout, lease_timeout=self.lease_timeout)
        if answer["acquired"]:
            with self._refresh_lock:
                self._leases.append(lease)
                self._keep_refreshing()
        return bool(answer["acquired"])

    def _keep_refreshing(self) -> None:
        """(Holding the refresh lock.) Refresh the leases while there are any."""
        if self.lease_timeout is None or self._refresher is not None:
            return
        client = self.client
        assert client.loop is not None
        if client._on_loop():
            self._refresher = client.loop.create_task(self._refresh(client))
        else:
            self._refresher = asyncio.run_coroutine_threadsafe(self._refresh(client),
                                                               client.loop)

    async def _refresh(self, client: Client) -> None:
        assert self.lease_timeout is not None
        while client.status in ("running", "reconnecting"):
            await asyncio.sleep(self.lease_timeout / 5)  # a period, not a synchronisation
            with self._refresh_lock:
                leases = list(self._leases)
                if not leases:
                    self._refresher = None
                    return
            try:
                await client.ask_scheduler("semaphore_refresh", name=self.name, leases=leases)
            except (CommClosedError, OSError):
                pass  # reconnecting: the next period tries again
        self._refresher = None

    def release(self) -> bool:
        with self._refresh_lock:
            if not self._leases:
                raise RuntimeError(f"{self!r} holds no lease to release")
            lease = self._leases.pop()
        self._ask("semaphore_release", lease=lease)
        return True

    def get_value(self) -> int:
        """How many leases are held."""
        return int(self._ask("semaphore_value")["value"])

    def __reduce__(self) -> Any:
        return (Semaphore, (self.max_leases, self.name, None, self.lease_timeout))


class Lock(Semaphore):
    """A cluster-wide mutual exclusion lock (not re-entrant), a semaphore of one lease."""

    def __init__(self, name: str | None = None, client: Client | None = None,
                 lease_timeout: float | None = DEFAULT_LEASE_TIMEOUT) -> None:
        super().__init__(1, name, client, lease_timeout)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:  # type: ignore[override]
        return super().acquire(timeout if blocking else 0)

    def locked(self) -> bool:
        return self.get_value() > 0

    def __reduce__(self) -> Any:
        return (Lock, (self.name, None, self.lease_timeout))


class MultiLock(_Held):
    """Several named locks taken together (all, or ``num_locks`` of them) or not at all."""

    def __init__(self, names: list[str] | None = None, client: Client | None = None) -> None:
        self.names = list(names or [])
        self._handle = _Named(None, client)
        self._lease: str | None = None

    def acquire(self, blocking: bool = True, timeout: float | None = None,
                num_locks: int | None = None) -> bool:
        if self._lease is not None:
            raise RuntimeError(f"{self!r} is already acquired")
        lease = f"multilock-{uuid.uuid4().hex}"
        client = self._handle.client
        answer = client.sync(lambda: client.ask_scheduler(
            "multilock_acquire", names=self.names, lease=lease,
            num_locks=num_locks, timeout=timeout if blocking else 0))
        if answer["acquired"]:
            self._lease = lease
        return bool(answer["acquired"])

    def release(self) -> None:
        if self._lease is None:
            raise RuntimeError(f"{self!r} holds no locks to release")
        lease, self._lease = self._lease, None
        client = self._handle.client
        client.sync(lambda: client.ask_scheduler("multilock_release", lease=lease))

    def locked(self) -> bool:
        """Whether any of the names is held (by anyone)."""
        client = self._handle.client
        answer = client.sync(lambda: client.ask_scheduler("multilock_held", names=self.names))
        return bool(answer["held"])

    def __reduce__(self) -> Any:
        return (MultiLock, (self.names,))

    def __repr__(self) -> str:
        return f"<MultiLock: {self.names}>"
