"""The worker's small HTTP server: ``/health``, ``/ready`` and ``/metrics``.

Started when the worker is given ``--http-port`` (0 picks a free port), so
Kubernetes can probe each worker pod (alive: ``/health``; registered with
the scheduler, so ready for work: ``/ready``) and Prometheus can scrape it.  The
address is sent to the scheduler when the worker registers, and the
scheduler's dashboard and ``scheduler_info`` show it.  Unknown paths and
methods get a 4xx with ``{"error": ...}``, as on the scheduler.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler

from ..comm import split_host_port
from ..comm._http import HttpAuth, LimitedBodyHandler, challenge, http_server, max_body_bytes
from ..comm._security import Security
from ._metrics import WorkerMetrics

if TYPE_CHECKING:
    from ._server import Worker

ALL_INTERFACES = ("0.0.0.0", "", "::", "[::]")
logger = logging.getLogger(__name__)


def log_request(handler: RequestHandler) -> None:
    """Quiet access log: Prometheus and probes poll; only errors are news."""
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.ERROR
    logger.log(level, "%d %s %s", status, handler.request.method, handler.request.uri)


class _Base(LimitedBodyHandler):
    def initialize(self, worker: Worker, metrics: WorkerMetrics) -> None:
        self.worker = worker
        self.metrics = metrics

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        challenge(self, status_code)
        exc = kwargs.get("exc_info", (None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))


class Health(_Base):
    access = "health"

    def get(self) -> None:
        if self.worker.status not in ("init", "running"):
            raise HTTPError(503, f"worker is {self.worker.status}")
        self.set_header("Content-Type", "text/plain")
        self.finish("ok")


class Ready(_Base):
    """Ready for work: registered with the scheduler (the pods' readiness probe)."""
    access = "health"

    def get(self) -> None:
        if not self.worker.registered:
            raise HTTPError(503, f"worker is {self.worker.status}, not registered with the "
                                 f"scheduler at {self.worker.scheduler_address}")
        self.set_header("Content-Type", "text/plain")
        self.finish("ok")


class Metrics(_Base):
    access = "metrics"

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.metrics.exposition())


class NotFound(_Base):
    def prepare(self) -> None:
        raise HTTPError(404, f"no such path: {self.request.path} (try /health, /ready or /metrics)")


def _shown_host(host: str) -> str:
    if host not in ALL_INTERFACES:
        return f"[{host}]" if ":" in host else host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


async def start_http(worker: Worker, port: int, body_limit: int | None = None,
                     security: Security | None = None) -> tuple[HTTPServer, str]:
    """Serve the worker's HTTP endpoints on the interface its comm listens on
    (HTTPS with the worker's certificate when TLS is on)."""
    security = security or Security()
    args = {"worker": worker, "metrics": WorkerMetrics(worker)}
    app = Application(
        [(r"/health", Health, args), (r"/ready", Ready, args), (r"/metrics", Metrics, args)],
        default_handler_class=NotFound, default_handler_args=args, log_function=log_request,
        max_body_bytes=max_body_bytes(body_limit), auth=HttpAuth(security),
    )
    host, _ = split_host_port(worker.address or worker.listen_address)
    context = security.http_server_context("worker")
    server = http_server(app, context)
    sockets = bind_sockets(port, address=None if host in ALL_INTERFACES else host)
    server.add_sockets(sockets)
    bound = sockets[0].getsockname()[1]
    return server, f"{'https' if context else 'http'}://{_shown_host(host)}:{bound}"
