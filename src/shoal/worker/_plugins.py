"""Worker plugins on one worker: ``setup``, ``teardown`` and ``transition``.

The scheduler relays plugins registered by clients (``plugin_add``) and hands
a registering worker those registered before it joined, which it sets up
before reading its first task.  ``transition`` hooks are called by the
worker's shell after the state machine handled an event, from a copy of the
story log's record call that is put in place only while some plugin has
that hook: a worker without one pays one attribute test per batch of events.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .._plugins import TransitionTap, call_hook, start_plugin
from ..protocol import Serialized

if TYPE_CHECKING:
    from ._server import Worker

logger = logging.getLogger(__name__)

#: How often a joining worker says it is alive while it sets up plugins.
SETUP_HEARTBEAT_INTERVAL = 1.0


class WorkerPlugins:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.plugins: dict[str, Any] = {}
        #: transitions not yet shown to the plugins (see the module docs)
        self.tap = TransitionTap()

    def handlers(self) -> dict[str, Any]:
        return {"plugin_add": self.add, "plugin_remove": self.remove}

    async def add(self, plugin: Serialized | bytes, name: str) -> dict[str, Any]:
        """Set a plugin up (replacing one of the same name); its error is the answer."""
        obj, failure = await start_plugin(plugin, name, "setup", worker=self.worker)
        if failure is not None:
            return failure
        await self.remove(name)
        self.plugins[name] = obj
        self._rewire()
        return {"status": "ok"}

    async def add_all(self, plugins: dict[str, Any]) -> None:
        """On joining: the plugins registered before (those not set up already).

        A setup may take long (``PipInstall``): the worker is not heart-beating
        yet, so it says it is alive meanwhile, lest the scheduler drop it.
        """
        todo = {name: p for name, p in plugins.items() if name not in self.plugins}
        if not todo:
            return

        async def alive() -> None:
            while True:
                await asyncio.sleep(SETUP_HEARTBEAT_INTERVAL)  # a period, not a sync
                self.worker._send({"op": "heartbeat"})

        beating = asyncio.get_running_loop().create_task(alive())
        try:
            for name, plugin in todo.items():
                await self.add(plugin, name)
        finally:
            beating.cancel()

    async def remove(self, name: str) -> dict[str, Any]:
        old = self.plugins.pop(name, None)
        if old is not None:
            self._rewire()
            result = call_hook(old, "teardown", worker=self.worker)
            if result is not None:
                await result
        return {"status": "ok"}

    async def close(self) -> None:
        for name in list(self.plugins):
            await self.remove(name)

    def _rewire(self) -> None:
        self.tap.wire(self.worker.state, self.plugins.values())

    def flush(self) -> None:
        """Show the plugins the transitions of the events just handled."""
        for key, start, finish, stimulus_id, _time in self.tap.take():
            for plugin in list(self.plugins.values()):
                result = call_hook(plugin, "transition", key, start, finish,
                                   stimulus_id=stimulus_id)
                if result is not None:
                    self.worker._spawn(result)
