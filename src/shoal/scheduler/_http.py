"""The scheduler's HTTP server: health, the JSON API, metrics, dashboard.

The Kubernetes operator and external tools use only this API (documented in
docs/http-api.md).  Bad requests get a 4xx status with ``{"error": ...}``,
unknown paths included; bodies over the limit get 413 before they are read
(:mod:`shoal.comm._http`).  ``/metrics`` is Prometheus exposition built at
scrape time (:mod:`._metrics`); ``/`` is the live dashboard, a static page
that polls ``/api/v1/dashboard`` (:mod:`._dashboard`).
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler, StaticFileHandler

from ..comm._http import (
    HttpAuth,
    LimitedBodyHandler,
    authorize,
    challenge,
    http_server,
    max_body_bytes,
)
from ..comm._security import Security
from . import _dashboard
from ._adaptive import adaptive_target
from ._metrics import SchedulerMonitor

if TYPE_CHECKING:
    from ._server import Scheduler

logger = logging.getLogger(__name__)


def log_request(handler: RequestHandler) -> None:
    """Quiet access log: the dashboard polls twice a second; only errors are news."""
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.ERROR
    request = handler.request
    logger.log(level, "%d %s %s (%s) %.1fms", status, request.method, request.uri,
               request.remote_ip, 1000 * request.request_time())


class _Base(LimitedBodyHandler):
    def initialize(self, scheduler: Scheduler, monitor: SchedulerMonitor) -> None:
        self.scheduler = scheduler
        self.monitor = monitor

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        challenge(self, status_code)
        exc = kwargs.get("exc_info", (None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.write_json({"error": message}, status_code)


class Health(_Base):
    access = "health"

    def get(self) -> None:
        if self.scheduler.status != "running":
            raise HTTPError(503, f"scheduler is {self.scheduler.status}")
        self.set_header("Content-Type", "text/plain")
        self.finish("ok")


class Workers(_Base):
    def get(self) -> None:
        workers = []
        for ws in self.scheduler.state.workers.values():
            info = ws.info()
            info["ready"] = ws.status == "running"
            info.pop("metrics", None)
            workers.append(info)
        self.write_json({"workers": workers})


class AdaptiveTarget(_Base):
    def get(self) -> None:
        self.write_json({"workers": adaptive_target(self.scheduler.state)})


class Idle(_Base):
    def get(self) -> None:
        since = self.scheduler.state.idle_since
        self.write_json({"idle": since is not None, "idle_since": since})


class RetireWorkers(_Base):
    async def post(self) -> None:
        body = await self.json_body()
        workers, n = body.get("workers"), body.get("n")
        if workers is None and n is None:
            raise HTTPError(400, 'give "n" (a count) or "workers" (addresses or names)')
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise HTTPError(400, f'"n" must be a non-negative integer, got {n!r}')
        if workers is not None and (
            not isinstance(workers, list) or not all(isinstance(w, str) for w in workers)
        ):
            raise HTTPError(400, '"workers" must be a list of addresses or names')
        try:
            retired = await self.scheduler.retirement.retire(workers=workers, n=n)
        except ValueError as exc:
            raise HTTPError(409, str(exc)) from exc
        self.write_json({"retired": retired})


class Story(_Base):
    async def get(self, key: str) -> None:
        self.write_json({"key": key, "story": await self.scheduler.story([key])})


class Metrics(_Base):
    access = "metrics"

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.monitor.exposition())


class DashboardPage(_Base):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.finish(_dashboard.page())


class DashboardData(_Base):
    def get(self) -> None:
        raw = self.get_query_argument("since", "0")
        try:
            since = float(raw)
        except ValueError:
            raise HTTPError(400, f'"since" must be a number of unix seconds, got {raw!r}') from None
        if not math.isfinite(since):
            raise HTTPError(400, f'"since" must be a finite number, got {raw!r}')
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Content-Type", "application/json")
        self.finish(_dashboard.snapshot_json(self.scheduler, self.monitor, since,
                                             self.scheduler.stream_json))


class Redirect(_Base):
    def get(self) -> None:
        self.redirect("/")


class Static(StaticFileHandler):
    """The dashboard's script and style sheet; errors as JSON like everywhere else."""

    def prepare(self) -> None:
        authorize(self, "read")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        challenge(self, status_code)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": f"no such file: {self.request.path}"
                                if status_code == 404 else self._reason}))


class NotFound(_Base):
    def prepare(self) -> None:
        raise HTTPError(404, f"no such path: {self.request.path}")


def routes(scheduler: Scheduler,
           monitor: SchedulerMonitor) -> list[tuple[str, type, dict[str, Any]]]:
    args = {"scheduler": scheduler, "monitor": monitor}
    return [
        (r"/", DashboardPage, args),
        (r"/status", Redirect, args),
        (r"/health", Health, args),
        (r"/metrics", Metrics, args),
        (r"/api/v1/workers", Workers, args),
        (r"/api/v1/adaptive_target", AdaptiveTarget, args),
        (r"/api/v1/idle", Idle, args),
        (r"/api/v1/retire_workers", RetireWorkers, args),
        (r"/api/v1/dashboard", DashboardData, args),
        (r"/api/v1/story/(.+)", Story, args),
        (r"/static/(.*)", Static, {"path": _dashboard.STATIC_DIRECTORY}),
    ]


async def start_http(scheduler: Scheduler, host: str, port: int,
                     body_limit: int | None = None,
                     security: Security | None = None) -> tuple[HTTPServer, str]:
    """Serve on ``host:port``: HTTPS with the scheduler's certificate when TLS is on."""
    security = security or Security()
    monitor = SchedulerMonitor(scheduler)
    monitor.start()
    app = Application(
        routes(scheduler, monitor),  # type: ignore[arg-type]
        default_handler_class=NotFound,
        default_handler_args={"scheduler": scheduler, "monitor": monitor},
        log_function=log_request,
        max_body_bytes=max_body_bytes(body_limit),
        auth=HttpAuth(security),
    )
    context = security.http_server_context("scheduler")
    server = http_server(app, context)
    sockets = bind_sockets(port, address=host)
    server.add_sockets(sockets)
    bound = sockets[0].getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return server, f"{'https' if context else 'http'}://{shown}:{bound}"
