"""Named events, semaphores (locks are semaphores of one) and multi-locks
on the scheduler.

Clients and tasks anywhere in the cluster coordinate through them by name,
as with dask.distributed's ``Event``, ``Lock`` and ``Semaphore``.  A waiting
request waits here (bounded by the caller's timeout), not in a polling loop.
A lease is named by its holder.  A semaphore acquired with a
``lease_timeout`` keeps each lease only while its holder refreshes it
(``semaphore_refresh``, which the client does every fifth of the timeout):
a lease not refreshed for that long (its client or worker died) is taken
back, when someone waits for it or asks for the value.  Without one, a
holder that disappears keeps its lease.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"a name must be a non-empty string, got {value!r}")
    return value


def _timeout(value: Any) -> float | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TypeError(f"timeout must be a number of seconds or None, got {value!r}")
    return value


class _Semaphore:
    __slots__ = ("changed", "holders", "max_leases")

    def __init__(self, max_leases: int) -> None:
        self.max_leases = max_leases
        #: lease -> (seconds it lasts unrefreshed or None, when it expires or None)
        self.holders: dict[str, tuple[float | None, float | None]] = {}
        self.changed = asyncio.Condition()

    def expire(self, now: float) -> bool:
        """Take back the leases not refreshed in time; whether any were."""
        stale = [lease for lease, (_, until) in self.holders.items()
                 if until is not None and until <= now]
        for lease in stale:
            del self.holders[lease]
        return bool(stale)

    def next_expiry(self) -> float | None:
        times = [until for _, until in self.holders.values() if until is not None]
        return min(times) if times else None


class Coordination:
    """The RPC handlers: ``event_*`` and ``semaphore_*``."""

    def __init__(self) -> None:
        self.events: dict[str, asyncio.Event] = {}
        self.semaphores: dict[str, _Semaphore] = {}
        self.multilocks: dict[str, str] = {}  # name -> the lease holding it
        self._multilock_leases: dict[str, list[str]] = {}  # lease -> names it holds
        self._multilock_changed = asyncio.Condition()
        self._notifying: set[asyncio.Task] = set()

    def handlers(self) -> dict[str, Any]:
        return {"event_set": self.event_set, "event_clear": self.event_clear,
                "event_wait": self.event_wait, "event_is_set": self.event_is_set,
                "semaphore_acquire": self.semaphore_acquire,
                "semaphore_release": self.semaphore_release,
                "semaphore_refresh": self.semaphore_refresh,
                "semaphore_value": self.semaphore_value,
                "multilock_acquire": self.multilock_acquire,
                "multilock_release": self.multilock_release,
                "multilock_held": self.multilock_held}

    def _event(self, name: Any) -> asyncio.Event:
        return self.events.setdefault(_name(name), asyncio.Event())

    def event_set(self, name: str) -> dict[str, Any]:
        self._event(name).set()
        return {"status": "ok"}

    def event_clear(self, name: str) -> dict[str, Any]:
        self._event(name).clear()
        return {"status": "ok"}

    def event_is_set(self, name: str) -> dict[str, Any]:
        return {"status": "ok", "set": self._event(name).is_set()}

    async def event_wait(self, name: str, timeout: float | None = None) -> dict[str, Any]:
        event = self._event(name)
        try:
            async with asyncio.timeout(_timeout(timeout)):
                await event.wait()
        except TimeoutError:
            pass
        return {"status": "ok", "set": event.is_set()}

    def _semaphore(self, name: Any, max_leases: Any) -> _Semaphore:
        if isinstance(max_leases, bool) or not isinstance(max_leases, int) or max_leases < 1:
            raise TypeError(f"max_leases must be a positive integer, got {max_leases!r}")
        sem = self.semaphores.setdefault(_name(name), _Semaphore(max_leases))
        if sem.max_leases != max_leases:
            raise ValueError(f"semaphore {name!r} has {sem.max_leases} leases, not {max_leases}")
        return sem

    async def semaphore_acquire(self, name: str, lease: str, max_leases: int = 1,
                                timeout: float | None = None,
                                lease_timeout: float | None = None) -> dict[str, Any]:
        sem = self._semaphore(name, max_leases)
        lease = _name(lease)
        timeout, lease_timeout = _timeout(timeout), _timeout(lease_timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        async with sem.changed:
            while True:
                now = time.monotonic()
                sem.expire(now)
                if len(sem.holders) < sem.max_leases:
                    until = None if lease_timeout is None else now + lease_timeout
                    sem.holders[lease] = (lease_timeout, until)
                    return {"status": "ok", "acquired": True}
                wake = [t for t in (deadline, sem.next_expiry()) if t is not None]
                if deadline is not None and now >= deadline:
                    return {"status": "ok", "acquired": False}
                try:
                    await asyncio.wait_for(sem.changed.wait(),
                                           max(0.0, min(wake) - now) if wake else None)
                except TimeoutError:
                    pass  # a deadline or an expiry: look again
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # lost by 3.11's wait_for
                    raise asyncio.CancelledError

    def semaphore_refresh(self, name: str, leases: list[str]) -> dict[str, Any]:
        """The holder of ``leases`` is alive: they last another lease timeout."""
        sem = self.semaphores.get(_name(name))
        now = time.monotonic()
        lost = []
        for lease in leases:
            held = sem.holders.get(lease) if sem is not None else None
            if held is None:
                lost.append(lease)
            elif held[0] is not None:
                sem.holders[lease] = (held[0], now + held[0])  # type: ignore[union-attr]
        return {"status": "ok", "lost": lost}

    async def semaphore_release(self, name: str, lease: str) -> dict[str, Any]:
        sem = self.semaphores.get(_name(name))
        if sem is None or lease not in sem.holders:
            return {"status": "error", "message": f"{lease!r} holds no lease of {name!r}"}
        async with sem.changed:
            sem.holders.pop(lease, None)
            sem.changed.notify()
        return {"status": "ok"}

    def semaphore_value(self, name: str) -> dict[str, Any]:
        sem = self.semaphores.get(_name(name))
        if sem is not None and sem.expire(time.monotonic()):
            self._spawn_notify(sem)
        return {"status": "ok", "value": len(sem.holders) if sem is not None else 0}

    def _spawn_notify(self, sem: _Semaphore) -> None:
        async def notify() -> None:
            async with sem.changed:
                sem.changed.notify_all()

        task = asyncio.get_running_loop().create_task(notify())
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

    async def multilock_acquire(self, names: list[str], lease: str, num_locks: int | None = None,
                                timeout: float | None = None) -> dict[str, Any]:
        """Take ``num_locks`` (all if None) of ``names`` at once, or none of them."""
        wanted = [_name(n) for n in names] if isinstance(names, list) else []
        if not wanted:
            raise TypeError("a MultiLock needs a list of names")
        count = len(wanted) if num_locks is None else num_locks
        if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= len(wanted):
            raise TypeError(f"num_locks must be between 1 and {len(wanted)}, got {num_locks!r}")
        lease = _name(lease)

        def free() -> list[str]:
            return [n for n in wanted if n not in self.multilocks]

        try:
            async with asyncio.timeout(_timeout(timeout)), self._multilock_changed:
                await self._multilock_changed.wait_for(lambda: len(free()) >= count)
                taken = free()[:count]
                for name in taken:
                    self.multilocks[name] = lease
                self._multilock_leases[lease] = taken
        except TimeoutError:
            return {"status": "ok", "acquired": False}
        return {"status": "ok", "acquired": True}

    async def multilock_release(self, lease: str) -> dict[str, Any]:
        names = self._multilock_leases.pop(_name(lease), None)
        if names is None:
            return {"status": "error", "message": f"{lease!r} holds no multi-lock"}
        async with self._multilock_changed:
            for name in names:
                self.multilocks.pop(name, None)
            self._multilock_changed.notify_all()
        return {"status": "ok"}

    def multilock_held(self, names: list[str]) -> dict[str, Any]:
        return {"status": "ok", "held": [n for n in names if n in self.multilocks]}
