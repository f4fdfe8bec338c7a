"""Plugins on the scheduler, and the plugins it keeps for workers and nannies.

Scheduler plugins live here; their hooks are called by the I/O shell after
the state machine handled an event (:meth:`Plugins.after`), never from inside
it.  Transitions reach them through a copy of the story log's record call,
put in place only while some plugin has a ``transition`` hook: with no
plugin, ``Scheduler.handle`` pays one attribute test.

Worker and nanny plugins are kept pickled: worker plugins are relayed to
every worker now and handed to each worker that registers later (in the
answer to its registration, so they are set up before it reads a task);
nannies ask for theirs before they start a worker process.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .._plugins import TransitionTap, call_hook, start_plugin
from ..protocol import Serialized
from ._events import AddClient, AddWorker, Event, RemoveClient, RemoveWorker, UpdateGraph

if TYPE_CHECKING:
    from ._server import Scheduler

logger = logging.getLogger(__name__)

Blob = Serialized | bytes


class Plugins:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.plugins: dict[str, Any] = {}
        self.worker_plugins: dict[str, Blob] = {}
        self.nanny_plugins: dict[str, Blob] = {}
        #: any scheduler plugin registered (read by ``Scheduler.handle``)
        self.active = False
        self._tap = TransitionTap()

    def handlers(self) -> dict[str, Any]:
        return {"register_scheduler_plugin": self.register,
                "register_worker_plugin": self.register_worker_plugin,
                "register_nanny_plugin": self.register_nanny_plugin,
                "unregister_plugin": self.unregister,
                "nanny_plugins": lambda: {"status": "ok", "plugins": self.nanny_plugins}}

    # ---------------------------------------------------------- scheduler plugins

    async def register(self, plugin: Blob, name: str, idempotent: bool = False) -> dict:
        if idempotent and name in self.plugins:
            return {"status": "ok"}
        obj, failure = await start_plugin(plugin, name, "start", self.scheduler)
        if failure is not None:
            return failure
        await self._drop(name)
        self.plugins[name] = obj
        self._rewire()
        return {"status": "ok"}

    async def _drop(self, name: str) -> bool:
        old = self.plugins.pop(name, None)
        if old is None:
            return False
        self._rewire()
        result = call_hook(old, "close")
        if result is not None:
            await result
        return True

    def _rewire(self) -> None:
        """Copy transitions for the plugins only while one of them wants them."""
        self.active = bool(self.plugins)
        self._tap.wire(self.scheduler.state, self.plugins.values())

    def after(self, events: tuple[Event, ...]) -> None:
        """Tell the plugins what ``events`` did (called after they were handled)."""
        scheduler = self.scheduler
        for ev in events:
            if isinstance(ev, AddWorker):
                self._call("add_worker", scheduler=scheduler, worker=ev.address)
            elif isinstance(ev, RemoveWorker):
                self._call("remove_worker", scheduler=scheduler, worker=ev.address,
                           stimulus_id=ev.stimulus_id)
            elif isinstance(ev, AddClient):
                self._call("add_client", scheduler=scheduler, client=ev.client)
            elif isinstance(ev, RemoveClient):
                self._call("remove_client", scheduler=scheduler, client=ev.client)
            elif isinstance(ev, UpdateGraph) and ev.tasks:
                self._call("update_graph", scheduler, client=ev.client, keys=set(ev.wanted),
                           tasks=[t.key for t in ev.tasks], stimulus_id=ev.stimulus_id)
        if self._tap.pending:
            for key, start, finish, stimulus_id, _time in self._tap.take():
                self._call("transition", key, start, finish, stimulus_id=stimulus_id)

    def _call(self, hook: str, *args: Any, **kwargs: Any) -> None:
        for plugin in list(self.plugins.values()):
            result = call_hook(plugin, hook, *args, **kwargs)
            if result is not None:
                self.scheduler._spawn(result)

    async def close(self) -> None:
        for name in list(self.plugins):
            await self._drop(name)

    # ---------------------------------------------------------- worker and nanny plugins

    async def register_worker_plugin(self, plugin: Blob, name: str,
                                     idempotent: bool = False) -> dict:
        if idempotent and name in self.worker_plugins:
            return {"status": "ok", "workers": {}}
        self.worker_plugins[name] = plugin
        answers = await self.scheduler.broadcast("plugin_add", plugin=plugin, name=name)
        return {"status": "ok", "workers": answers}

    def for_new_worker(self) -> dict[str, Any]:
        """What a registering worker is told to set up first."""
        return {"plugins": dict(self.worker_plugins)} if self.worker_plugins else {}

    async def register_nanny_plugin(self, plugin: Blob, name: str, idempotent: bool = False,
                                    restart: bool = False) -> dict:
        if idempotent and name in self.nanny_plugins:
            return {"status": "ok", "workers": []}
        self.nanny_plugins[name] = plugin
        if not restart:
            return {"status": "ok", "workers": []}
        from ._restart import restart_workers

        return await restart_workers(self.scheduler)

    async def unregister(self, name: str) -> dict:
        found = await self._drop(name)
        if self.worker_plugins.pop(name, None) is not None:
            found = True
            await self.scheduler.broadcast("plugin_remove", name=name)
        if self.nanny_plugins.pop(name, None) is not None:
            found = True
        return {"status": "ok", "found": found}
