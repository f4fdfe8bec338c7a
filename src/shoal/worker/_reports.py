"""Small results straight to the clients that wait for them.

A client may *follow* a worker it has results on: it opens a stream to it
(the ``client-reports`` op) and the worker sends on it the small results
(those that travel inline, see ``Worker._inline``) that client waits for,
as soon as they are computed.  The report to the scheduler follows, naming
the clients already told (``reported``), and the scheduler reports to the
others only.  A task's round trip then skips the scheduler's handling of
the result and one hop (client -> scheduler -> worker -> client).  If the
stream breaks, the client has the scheduler report again what it may have
missed (see ``client/_follow.py``).

The worker pushes only while it is latency-bound: a lone result with nothing
else ready to run.  Under a flood of tasks the results go only through the
scheduler, batched, as the client would otherwise handle each one twice.
"""

from __future__ import annotations

import logging
from typing import Any

from ..comm import BatchedSend, Comm, CommClosedError

logger = logging.getLogger(__name__)


class ClientReports:
    """The streams of the clients that follow this worker, by client id."""

    def __init__(self) -> None:
        self.streams: dict[str, BatchedSend] = {}
        self.pushed = 0  # results sent to clients directly

    async def serve(self, comm: Comm, client: str) -> None:
        """The ``client-reports`` stream handler: serve ``client`` until it goes."""
        if client in self.streams:
            await comm.write({"status": "error",
                              "message": f"client {client!r} follows this worker already"})
            return
        await comm.write({"status": "ok"})
        stream = self.streams[client] = BatchedSend(comm)
        try:
            await comm.read()
            # a client sends nothing on this stream: whatever it sent is refused
            logger.warning("client %s sent a message on its report stream; closing it", client)
            stream.send({"op": "error", "message": "a report stream takes no messages"})
            await stream.close(timeout=1.0)
        except CommClosedError:
            pass
        finally:
            if self.streams.get(client) is stream:
                del self.streams[client]
            stream.abort()

    def push(self, clients: tuple[str, ...], key: str, nbytes: int,
             value: Any) -> tuple[str, ...]:
        """Send the result ``value`` of ``key`` to those of ``clients`` that
        follow; returns those it was sent to."""
        sent = []
        for client in clients:
            stream = self.streams.get(client)
            if stream is not None:
                try:
                    stream.send({"op": "key-in-memory", "key": key, "nbytes": nbytes,
                                 "value": value})
                except CommClosedError:
                    continue  # it is going: the scheduler's report reaches the client
                sent.append(client)
        self.pushed += len(sent)
        return tuple(sent)

    def close(self) -> None:
        for stream in list(self.streams.values()):
            stream.abort()
        self.streams.clear()
