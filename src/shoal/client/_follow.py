"""Following workers: small results straight from the worker that made them.

A client that can reach its workers (``direct_to_workers``) *follows* each
worker it hears of from the scheduler, up to :data:`MAX_FOLLOWED`: it opens
a stream to it (``client-reports``), and a worker that is otherwise idle
pushes on it the small results this client waits for the moment they are
computed, then tells the scheduler, which does not report those again (see
``worker/_reports.py``).  A ``submit(...).result()`` then waits for one hop
less, and not for the scheduler's handling of the result.

The scheduler hears of a pushed result a moment after the client does; a
question to the scheduler (``Client.ask_scheduler``) first has it catch up
with the workers that pushed, so ``who_has`` or the task stream right after
``result()`` shows that result.

Nothing is lost when a stream fails: the client tells the scheduler which
worker it no longer follows and which keys it still waits for
(``unfollowed``); the scheduler reports again those that are done, and no
longer takes that worker's word that it told this client.  A worker that
cannot be reached (behind a port-forward) is simply not followed; the
scheduler's reports come as always.

Everything a worker sends on the stream is checked (``TO_CLIENT``); a bad
message ends the stream, and that worker is not followed again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..comm import CommClosedError, connect, spawn
from ..protocol import FramingError, MessageError
from ..protocol._ops import TO_CLIENT, check_message
from ..protocol._schema import InvalidMessage
from ._future import FINAL

if TYPE_CHECKING:
    from ._client import Client

logger = logging.getLogger(__name__)

#: The most workers one client follows at a time.
MAX_FOLLOWED = 32
#: The most workers remembered as not to be followed again (then all forgotten).
MAX_NOT_AGAIN = 1024
#: How long opening a stream to a worker may take.
FOLLOW_TIMEOUT = 10.0
#: Keys per ``unfollowed`` message.
UNFOLLOWED_CHUNK = 10_000


class FollowedWorkers:
    """The report streams of one client, by worker address (on the client's loop)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.tasks: dict[str, asyncio.Task] = {}
        #: workers that refused, could not be reached or were followed: not again
        self.not_again: set[str] = set()
        #: results each worker pushed since the scheduler last caught up with it
        self.pushed: dict[str, int] = {}

    def heard_of(self, worker: str) -> None:
        """``worker`` holds a result of ours: follow it if we may."""
        if worker in self.tasks or worker in self.not_again or len(self.tasks) >= MAX_FOLLOWED:
            return
        client = self.client
        if not client.direct_to_workers or client.status != "running":
            return
        self.tasks[worker] = spawn(self._follow(worker), f"{client.id} following {worker}")

    async def _follow(self, worker: str) -> None:
        client = self.client
        comm = None
        established = False
        try:
            comm = await connect(worker, timeout=FOLLOW_TIMEOUT,
                                 connection_args=client.pool.connection_args)
            await comm.write({"op": "client-reports", "client": client.id})
            answer = await comm.read()
            if not isinstance(answer, dict) or answer.get("status") != "ok":
                logger.debug("worker %s will not report to %s: %.200r", worker, client.id,
                             answer)
                return
            established = True
            while True:
                batch = await comm.read()
                for msg in batch if type(batch) is list else [batch]:
                    if not self._take(worker, msg):
                        return
        except (CommClosedError, OSError, TimeoutError) as exc:
            logger.debug("following %s: %s", worker, exc)
        except (FramingError, MessageError) as exc:  # bytes that make no message
            logger.warning("worker %s sent what is no report (%s); no longer following it",
                           worker, exc)
        finally:
            if comm is not None:
                comm.abort()
            if self.tasks.get(worker) is asyncio.current_task():
                del self.tasks[worker]
            # never again: the scheduler no longer takes that worker's word
            # (below), and a worker that left does not come back
            if len(self.not_again) >= MAX_NOT_AGAIN:
                self.not_again.clear()
            self.not_again.add(worker)
            if established:
                self._unfollowed(worker)

    def _unfollowed(self, worker: str) -> None:
        """Tell the scheduler: what ``worker`` pushed may be lost, so it reports
        again what of ours is done (and takes no more of that worker's word)."""
        client = self.client
        if client.status != "running":
            return
        waiting = [key for key, state in list(client._states.items())
                   if state.status not in FINAL]
        # in slices, as releases are sent; one message even with no keys, for
        # the scheduler must stop taking that worker's word all the same
        for start in range(0, max(len(waiting), 1), UNFOLLOWED_CHUNK):
            keys = waiting[start:start + UNFOLLOWED_CHUNK]
            client._send({"op": "unfollowed", "worker": worker, "keys": keys},
                         weight=max(len(keys), 1))

    def _take(self, worker: str, msg: Any) -> bool:
        """One message from ``worker``; False: stop following it."""
        try:
            op, fields = check_message(TO_CLIENT, msg)
        except InvalidMessage as exc:
            logger.warning("worker %s sent a bad report (%s); no longer following it",
                           worker, exc)
            return False
        if op == "error":
            logger.warning("worker %s: %s", worker, fields["message"])
            return False
        client = self.client
        state = client._states.get(fields["key"])
        if state is not None and state.status not in FINAL:
            state.finish(client._holders([worker]), fields["nbytes"], fields["value"])
            self.pushed[worker] = self.pushed.get(worker, 0) + 1
        return True

    async def catch_up(self) -> None:
        """Have the scheduler hear of the results pushed to us so far, so that
        what it answers next shows them (see ``scheduler/_catch_up.py``)."""
        if not self.pushed:
            return
        seen = dict(self.pushed)
        client = self.client
        await client.pool.request(client.scheduler_address, "catch_up", workers=list(seen))
        for worker, count in seen.items():
            if self.pushed.get(worker) == count:  # none pushed meanwhile
                del self.pushed[worker]

    def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        self.tasks.clear()
