"""The scheduler process's I/O shell around :class:`SchedulerState`.

Workers and clients each keep one batched stream to the scheduler.  Every
message that arrives becomes an event for the state machine; the messages it
returns are routed to the right stream.  Request/response operations
(``who_has``, ``scheduler_info``, ``retire_workers``, ...) are answered on
ordinary connections.  A worker that stops heart-beating for ``worker_ttl``
seconds is removed as if its connection had dropped.

Every message is checked against its op's shape (``protocol._ops``) where it
enters, before it becomes an event: a bad one is refused with an error
naming the field and affects only its sender (a task whose report is
refused errs; a graph that is refused fails its own futures), and a peer
that keeps sending them is disconnected.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import Any

from .._gc import collect_if_small
from .._logbuffer import get_logs
from .._logbuffer import install as install_log_buffer
from .._story import DEFAULT_STORY_SIZE, as_dicts
from ..comm import (
    BatchedSend,
    CommClosedError,
    CommLimits,
    ConnectionPool,
    RemoteError,
    RPCServer,
    Security,
    Strikes,
    spawn,
)
from ..comm._core import Comm
from ..protocol import Serialized, ToPickle, deserialize
from ..protocol._call import call_injecting
from ..protocol._ops import FROM_CLIENT, FROM_WORKER, SCHEDULER_OPEN, SCHEDULER_RPC, check_message
from ..protocol._schema import InvalidMessage
from ._adaptive import adaptive_target
from ._catch_up import CatchUp
from ._coordination import Coordination
from ._dashboard import BusyMeter, StreamJSON, recent_stream
from ._datasets import Datasets
from ._events import (
    AddClient,
    AddKeys,
    AddWorker,
    CancelKeys,
    ClientReleasesKeys,
    ClientUnfollowed,
    ClientWantsKeys,
    Event,
    Heartbeat,
    LongRunning,
    MissingData,
    RemoveClient,
    RemoveWorker,
    StealResponse,
    TaskErred,
    TaskFinished,
    TaskSpec,
    ToClient,
    ToWorker,
    UpdateData,
    UpdateGraph,
)
from ._holds import Holds
from ._model import key_prefix
from ._plugins import Plugins
from ._rebalance import rebalance
from ._replicate import replicate
from ._restart import restart
from ._retire import Retirement
from ._shared import Shared
from ._state import DEFAULT_ALLOWED_FAILURES, FIRE_AND_FORGET, REJOIN_HOLDER, SchedulerState

logger = logging.getLogger(__name__)

DEFAULT_WORKER_TTL = 10.0
#: A stream that delivered more events than this at once lets the others in.
YIELD_AFTER_EVENTS = 100
#: The most work (events, or tasks of a graph) handled in one loop turn for one
#: stream: a read of thousands is handled in slices, with the other streams,
#: heartbeats and HTTP requests served between them (some 10 ms of work each).
HANDLE_SLICE = 250
#: Keys of a departed client released per loop turn (and tasks looked through
#: for them): a client that held a million futures is let go of in slices,
#: not in one stall of seconds that ``/health`` and every other stream wait out.
RELEASE_SLICE = 2_000
#: Client ops the server handles itself rather than as state-machine events.
_INLINE_CLIENT_OPS = frozenset({"close-client", "publish-dataset", "variable-set", "queue-put",
                                "release-hold"})
#: Seconds the data a rejoining worker announces is kept for clients to claim
#: (a client reconnecting to a restarted scheduler resubmits what it wants).
DEFAULT_REJOIN_GRACE = 60.0


class Scheduler:
    """A scheduler: ``await Scheduler().start()``; ``address`` once started."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        http_port: int | None = None,
        worker_ttl: float = DEFAULT_WORKER_TTL,
        allowed_failures: int | None = None,
        listen_address: str | None = None,
        limits: CommLimits | None = None,
        http_max_body_bytes: int | None = None,
        story_size: int = DEFAULT_STORY_SIZE,
        rejoin_grace: float = DEFAULT_REJOIN_GRACE,
        security: Security | None = None,
    ) -> None:
        #: TLS credentials and HTTP token; without them plain tcp:// and open HTTP.
        self.security = security or Security()
        scheme = "tls" if self.security.tls else "tcp"
        self.listen_address = listen_address or f"{scheme}://{host}:{port}"
        self.http_max_body_bytes = http_max_body_bytes
        self.host = host
        self.http_port = http_port
        self.worker_ttl = worker_ttl
        self.state = SchedulerState(
            DEFAULT_ALLOWED_FAILURES if allowed_failures is None else allowed_failures,
            story_size=story_size,
        )
        self.rejoin_grace = rejoin_grace
        self.coordination = Coordination()
        self.holds = Holds(self)
        self.datasets = Datasets(self)
        self.shared = Shared(self)
        self.plugins = Plugins(self)
        self.catch_up = CatchUp(self)
        self.rpc = RPCServer(
            {
                "who_has": self.who_has,
                "scheduler_info": self.scheduler_info,
                "broadcast": self.broadcast,
                "gather": self.gather,
                "retire_workers": self.retire_workers,
                "adaptive_target": self.adaptive_target,
                "has_what": self.has_what,
                "replicate": lambda keys, n=None, timeout=30.0: replicate(self, keys, n, timeout),
                "rebalance": lambda keys=None, workers=None, timeout=30.0: rebalance(
                    self, keys, workers, timeout),
                "get_logs": get_logs,
                "get_task_stream": lambda since=0.0: recent_stream(self.task_stream,
                                                                   float(since)),
                "restart": lambda timeout=30.0: restart(self, timeout),
                "run_function": self.run_function,
                **self.coordination.handlers(),
                **self.shared.handlers(),
                **self.plugins.handlers(),
                "terminate": self.terminate,
                "get_dataset": lambda name, client: self.datasets.get(name, client),
                "list_datasets": lambda: self.datasets.names(),
                "unpublish_dataset": lambda name: self.datasets.unpublish(name),
                "story": self.story,
                "ping": lambda: "pong",
                "catch_up": self.catch_up.catch_up,
            },
            {"register-worker": self.add_worker, "register-client": self.add_client},
            schemas={**SCHEDULER_RPC, **SCHEDULER_OPEN},
            limits=limits,
            connection_args=self.security.connection_args("scheduler"),
        )
        self.pool = ConnectionPool(connection_args=self.security.connection_args("scheduler"))
        self.worker_streams: dict[str, BatchedSend] = {}
        self.client_streams: dict[str, BatchedSend] = {}
        #: clients whose keys are being released (set once that is done); a
        #: reconnection under the same id waits for it
        self._leaving: dict[str, asyncio.Event] = {}
        self.worker_info: dict[str, dict[str, Any]] = {}
        self.retirement = Retirement(self)
        self.address = ""
        self.http_address: str | None = None
        self.started = time.time()
        self.status = "init"
        self._ids = itertools.count()
        self._tasks: set[asyncio.Task] = set()
        self._http: Any = None
        self.task_stream: list[dict[str, Any]] = []
        self.busy = BusyMeter()  # each worker's recent time in tasks (the dashboard's)
        self.stream_json = StreamJSON()  # the dashboard's task stream, each entry encoded once
        self._closed = asyncio.Event()

    async def start(self) -> Scheduler:
        install_log_buffer()
        self.address = await self.rpc.listen(self.listen_address)
        if self.http_port is not None:
            from ._http import start_http

            self._http, self.http_address = await start_http(self, self.host, self.http_port,
                                                             self.http_max_body_bytes,
                                                             self.security)
        self.status = "running"
        self._spawn(self._check_heartbeats())
        logger.info("scheduler at %s", self.address)
        return self

    def _spawn(self, coro: Any) -> asyncio.Task:
        return spawn(coro, f"scheduler: {getattr(coro, '__name__', coro)}", self._tasks)

    def stimulus(self, what: str) -> str:
        return f"{what}-{next(self._ids)}"

    async def close(self) -> None:
        if self.status == "closed":
            return
        self.status = "closed"
        for stream in list(self.worker_streams.values()):
            try:
                stream.send({"op": "close"})
            except CommClosedError:
                pass
        await asyncio.gather(*(s.close(1.0) for s in self.worker_streams.values()),
                             return_exceptions=True)
        for stream in self.client_streams.values():
            stream.abort()
        self.rpc.stop()
        self.pool.close()
        if self._http is not None:
            self._http.stop()
        await self.plugins.close()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self._closed.set()

    async def finished(self) -> None:
        """Wait until the scheduler has closed (``Client.shutdown``, ``close``)."""
        await self._closed.wait()

    def terminate(self) -> dict[str, Any]:
        """``Client.shutdown``: close the workers and this scheduler, after answering."""
        logger.info("shutting down on a client's request")
        asyncio.get_running_loop().call_soon(lambda: self._spawn(self.close()))
        return {"status": "ok"}

    # ------------------------------------------------------------ routing

    def handle(self, *events: Event) -> None:
        try:
            instructions = self.state.handle(*events)
        except Exception:  # a bug in one event must not stop the others
            logger.exception("the state machine failed on %s",
                             ", ".join(type(ev).__name__ for ev in events[:5]))
            return
        for inst in instructions:
            if type(inst) is ToWorker:
                stream = self.worker_streams.get(inst.worker)
            elif type(inst) is ToClient:
                stream = self.client_streams.get(inst.client)
            else:
                continue
            if stream is not None:
                try:
                    stream.send(inst.msg)
                except CommClosedError:
                    pass
        if self.plugins.active:
            self.plugins.after(events)

    # ------------------------------------------------------------ workers

    async def add_worker(self, comm: Comm, address: str, name: str, nthreads: int,
                         memory_limit: int, resources: dict | None = None,
                         http_address: str | None = None, keys: dict | None = None,
                         **extra: Any) -> None:
        if address in self.state.workers or any(
            ws.name == name for ws in self.state.workers.values()
        ):
            await comm.write({"status": "error",
                              "message": f"a worker named {name!r} at {address} is registered"})
            comm.abort()
            return
        await comm.write({"status": "ok", **self.plugins.for_new_worker()})
        self.worker_streams[address] = BatchedSend(comm)
        self.worker_info[address] = {"http_address": http_address, **extra}
        reason = "connection lost"
        try:
            self.handle(AddWorker(self.stimulus("add-worker"), address, name, nthreads,
                                  memory_limit, resources or {}, http_address, keys or {}))
            logger.info("worker %s (%s) joined with %d threads%s", name, address, nthreads,
                        f", holding {len(keys)} keys" if keys else "")
            if keys:
                self._spawn(self._release_unclaimed(list(keys)))
            await self._read_worker(comm, address)
            reason = "closed"
        except CommClosedError:
            if self.status == "closed":  # we closed its stream ourselves
                reason = "the scheduler is closing"
        except Exception as exc:  # a bug or malformed stream: drop this worker only
            logger.exception("stream from worker %s failed", address)
            reason = f"stream failed: {exc!r}"
        self.remove_worker(address, reason)

    async def _read_worker(self, comm: Comm, address: str) -> None:
        state = self.state
        strikes = Strikes(f"worker {address}")
        while True:
            batch = await comm.read()
            ws = state.workers.get(address)
            if ws is None:
                return
            events: list[Event] = []
            for msg in batch if type(batch) is list else [batch]:
                if len(events) >= HANDLE_SLICE:
                    self.handle(*events)
                    events = []
                    await asyncio.sleep(0)  # the others in, between slices of a large read
                    if address not in state.workers:
                        return
                try:
                    op, fields = check_message(FROM_WORKER, msg)
                except InvalidMessage as exc:
                    events.extend(self._refused_report(address, msg, exc))
                    if strikes.refuse(exc):
                        self.handle(*events)
                        raise CommClosedError(f"too many bad messages from {address}") from exc
                    continue
                if op == "goodbye":
                    if events:
                        self.handle(*events)
                    return
                if op == "caught-up":  # handled after what came before it on this stream
                    if events:
                        self.handle(*events)
                        events = []
                    self.catch_up.caught_up(address, fields["token"])
                    continue
                try:
                    ev = self._worker_event(address, op, fields)
                except Exception:  # a bug reading one message: log it, read the next
                    logger.exception("reading %r from worker %s failed", op, address)
                    continue
                if ev is not None:
                    events.append(ev)
            if events:
                self.handle(*events)
                self.retirement.poke()
            if len(events) > YIELD_AFTER_EVENTS:  # let the others in before the next read
                await asyncio.sleep(0)

    def _refused_report(self, address: str, msg: Any, exc: InvalidMessage) -> list[Event]:
        """A refused report of a task fails that task (only if this worker runs it)."""
        if not isinstance(msg, dict) or msg.get("op") not in ("task-finished", "task-erred"):
            return []
        key = msg.get("key")
        if type(key) is not str:
            return []
        text = f"worker {address} sent an invalid report of this task: {exc}"
        return [TaskErred(self.stimulus("invalid-report"), address, key, None, "", text)]

    def _worker_event(self, address: str, op: str, msg: dict[str, Any]) -> Event | None:
        if op == "task-finished":
            self._record_task(address, msg)
            return TaskFinished(self.stimulus("task-finished"), address, msg["key"],
                                msg["nbytes"], msg.get("start") or 0.0, msg.get("stop") or 0.0,
                                msg.get("value"), tuple(msg.get("reported") or ()))
        if op == "task-erred":
            return TaskErred(self.stimulus("task-erred"), address, msg["key"],
                             msg.get("exception"), msg.get("traceback") or "",
                             msg.get("exception_text") or "")
        if op == "missing-data":
            return MissingData(self.stimulus("missing-data"), address, msg["key"],
                               msg["errant_worker"])
        if op == "add-keys":
            return AddKeys(self.stimulus("add-keys"), address, msg["keys"])
        if op == "steal-response":
            return StealResponse(self.stimulus("steal-response"), address, msg["key"],
                                 msg["state"])
        if op == "long-running":
            return LongRunning(self.stimulus("long-running"), address, msg["key"])
        if op == "task-output":  # shoal.print / shoal.warn in a task: for every client
            self._to_clients({"op": "task-output", "kind": str(msg.get("kind")),
                              "text": str(msg.get("text")), "worker": address,
                              "category": str(msg.get("category") or "UserWarning")})
            return None
        if op == "heartbeat":
            return Heartbeat(self.stimulus("heartbeat"), address, msg.get("metrics") or {})
        return None

    async def _release_unclaimed(self, keys: list[str]) -> None:
        """After the grace period, what a rejoining worker announced and no
        client claimed is released (a period, not a synchronisation)."""
        await asyncio.sleep(self.rejoin_grace)
        self.handle(ClientReleasesKeys(self.stimulus("rejoin-grace-over"), REJOIN_HOLDER, keys))

    def _record_task(self, address: str, msg: dict[str, Any]) -> None:
        stop = msg.get("stop")
        if stop:
            start = msg.get("start") or 0.0
            key = msg["key"]
            self.task_stream.append({"key": key, "prefix": key_prefix(key), "worker": address,
                                     "start": start, "stop": stop})
            self.busy.record(address, start, stop)
            if len(self.task_stream) > 10_000:
                del self.task_stream[:5_000]

    def remove_worker(self, address: str, reason: str) -> None:
        stream = self.worker_streams.pop(address, None)
        if stream is not None:
            stream.abort()
        self.worker_info.pop(address, None)
        self.busy.forget(address)
        self.pool.remove(address)
        self.catch_up.worker_gone(address)
        if address in self.state.workers:
            orderly = ("closed", "retired", "the scheduler is closing")
            log = logger.info if reason in orderly else logger.warning
            log("removing worker %s: %s", address, reason)
            self.handle(RemoveWorker(self.stimulus("remove-worker"), address, reason))

    async def _check_heartbeats(self) -> None:
        while self.status == "running":
            await asyncio.sleep(min(1.0, self.worker_ttl / 4))  # a period, not a sync
            now = time.time()
            for ws in list(self.state.workers.values()):
                if now - ws.last_seen > self.worker_ttl:
                    self.remove_worker(ws.address, f"no heartbeat for {self.worker_ttl}s")
            collect_if_small(len(self.state.tasks))

    # ------------------------------------------------------------ clients

    async def add_client(self, comm: Comm, client: str, **_: Any) -> None:
        leaving = self._leaving.get(client)
        if leaving is not None:  # the same client, back before it was let go of
            await leaving.wait()
        if client in self.client_streams:
            await comm.write({"status": "error", "message": f"client id {client!r} is in use"})
            comm.abort()
            return
        await comm.write({"status": "ok", "address": self.address})
        self.client_streams[client] = BatchedSend(comm)
        try:
            self.handle(AddClient(self.stimulus("add-client"), client))
            await self._read_client(comm, client)
        except CommClosedError:
            pass
        except Exception:  # a malformed stream: drop this client only
            logger.exception("stream from client %s failed", client)
        stream = self.client_streams.pop(client, None)
        if stream is not None:
            stream.abort()
        self._leaving[client] = left = asyncio.Event()
        try:
            await self._release_client_keys(client)
        finally:
            self.handle(RemoveClient(self.stimulus("remove-client"), client))
            self.holds.client_gone(client)
            del self._leaving[client]
            left.set()

    async def _release_client_keys(self, client: str) -> None:
        """Release what a departed client wanted, :data:`RELEASE_SLICE` tasks at a
        time with the other streams served in between (``RemoveClient`` then
        finds nothing left to release)."""
        tasks = list(self.state.tasks.values())
        for start in range(0, len(tasks), RELEASE_SLICE):
            keys = [ts.key for ts in tasks[start:start + RELEASE_SLICE]
                    if client in ts.who_wants]
            if keys:
                self.handle(ClientReleasesKeys(self.stimulus("remove-client"), client, keys))
            await asyncio.sleep(0)

    async def _read_client(self, comm: Comm, client: str) -> None:
        strikes = Strikes(f"client {client}")
        while True:
            batch = await comm.read()
            # the events of one read go to the state machine together; what is
            # handled here instead waits until the events before it are in
            events: list[Event] = []
            weight = 0
            try:
                for msg in batch if type(batch) is list else [batch]:
                    if weight >= HANDLE_SLICE:
                        self._flush(events)
                        weight = 0
                        await asyncio.sleep(0)  # the others in, between slices of a large read
                    if not self._client_message(client, msg, strikes, events):
                        return
                    weight += _weight(msg)
            finally:
                if events:
                    self.handle(*events)
            # the next read may already be here: let the others (workers, HTTP) in first
            await asyncio.sleep(0)

    def _client_message(self, client: str, msg: Any, strikes: Strikes,
                        events: list[Event]) -> bool:
        """Take one message from ``client`` (events into ``events``); False: stop reading."""
        try:
            op, fields = check_message(FROM_CLIENT, msg)
            if op == "update-graph" and fields.get("calls") is not None:
                _check_columns(fields["calls"])
        except InvalidMessage as exc:
            self._flush(events)
            self._refuse(client, msg, exc)
            return not strikes.refuse(exc)
        if op in _INLINE_CLIENT_OPS:
            self._flush(events)
        if op == "close-client":
            return False
        if op == "publish-dataset":
            self.datasets.publish(client, fields.get("name"), fields.get("data"),
                                  fields.get("keys"), bool(fields.get("override")),
                                  fields.get("request"))
        elif op in ("variable-set", "queue-put"):
            self.shared.store(client, msg)
        elif op == "release-hold":
            self.holds.release_for(client, fields.get("hold"))
        else:
            try:
                ev = self._client_event(client, op, fields)
            except Exception:  # a bug reading one message: log it, read the next
                logger.exception("reading %r from client %s failed", op, client)
                return True
            if ev is not None:
                events.append(ev)
        return True

    def _flush(self, events: list[Event]) -> None:
        if events:
            self.handle(*events)
            events.clear()

    def _client_event(self, client: str, op: str, msg: dict[str, Any]) -> Event | None:
        stim = self.stimulus(op)
        if op == "update-graph":
            tasks = [_task_spec(t) for t in msg["tasks"]]
            wanted = msg["wanted"]
            calls = msg.get("calls")
            if calls is not None:
                tasks.extend(_call_specs(calls))
                wanted = wanted + calls["keys"] if wanted else calls["keys"]
            return UpdateGraph(stim, client, tasks, msg.get("functions") or {}, wanted)
        if op == "client-releases-keys":
            return ClientReleasesKeys(stim, client, msg["keys"])
        if op == "client-wants-keys":
            return ClientWantsKeys(stim, client, msg["keys"])
        if op == "unfollowed":
            return ClientUnfollowed(stim, client, msg["worker"], msg["keys"])
        if op == "fire-and-forget":
            return ClientWantsKeys(stim, FIRE_AND_FORGET, msg["keys"])
        if op == "cancel-keys":
            return CancelKeys(stim, client, msg["keys"])
        if op == "update-data":
            return UpdateData(stim, client, msg["who_has"], msg["nbytes"])
        return None

    def confirm(self, client: str, request: Any, error: str | None) -> None:
        """Answer a request that came on ``client``'s stream, on that stream."""
        stream = self.client_streams.get(client)
        if stream is not None:
            try:
                stream.send({"op": "confirmed", "request": request, "error": error})
            except CommClosedError:
                pass

    def _to_clients(self, msg: dict[str, Any]) -> None:
        for stream in list(self.client_streams.values()):
            try:
                stream.send(msg)
            except CommClosedError:
                pass

    def _refuse(self, client: str, msg: Any, exc: InvalidMessage) -> None:
        """Tell the client what was wrong; a refused graph fails its own futures."""
        stream = self.client_streams.get(client)
        if stream is None:
            return
        op = msg.get("op") if isinstance(msg, dict) else None
        text = f"refused {op!r}: {exc}" if isinstance(op, str) else f"refused: {exc}"
        if op == "update-graph":
            self._keep_functions(client, msg)
        try:
            stream.send({"op": "error", "message": text, "field": exc.field})
            if op == "update-graph":
                for key in _graph_keys(msg):
                    stream.send({"op": "task-erred", "key": key, "exception": None,
                                 "traceback": "", "exception_text": text})
        except CommClosedError:
            pass

    # ------------------------------------------------------------ requests

    def who_has(self, keys: list[str]) -> dict[str, list[str]]:
        return self.state.who_has(keys)

    def has_what(self) -> dict[str, list[str]]:
        return {a: [ts.key for ts in ws.has_what] for a, ws in self.state.workers.items()}

    async def run_function(self, function: Serialized, args: Any = None,
                           kwargs: Any = None) -> dict[str, Any]:
        """``Client.run_on_scheduler``: call a client's function in this process."""
        result = call_injecting(deserialize(function), deserialize(args) if args else (),
                                deserialize(kwargs) if kwargs else {}, dask_scheduler=self)
        if asyncio.iscoroutine(result):
            result = await result
        return {"status": "ok", "result": ToPickle(result)}

    def scheduler_info(self) -> dict[str, Any]:
        workers = {}
        for address, ws in self.state.workers.items():
            info = ws.info()
            info.update(self.worker_info.get(address, {}))
            workers[address] = info
        return {
            "address": self.address, "http_address": self.http_address, "pid": os.getpid(),
            "started": self.started, "workers": workers,
            "tasks": len(self.state.tasks), "clients": len(self.client_streams),
            "counts": dict(self.state.counts), "stolen": self.state.stealing.count,
        }

    async def broadcast(self, worker_op: str, workers: list[str] | None = None,
                        **kwargs: Any) -> dict[str, Any]:
        targets = workers if workers is not None else list(self.state.workers)

        async def one(address: str) -> Any:
            if address not in self.state.workers:  # never relay to an arbitrary address
                return {"status": "error", "message": f"{address!r} is not a worker here"}
            try:
                return await self.pool.request(address, worker_op, **kwargs)
            except (CommClosedError, OSError, RemoteError) as exc:  # its entry in the answer
                return {"status": "error", "message": f"{type(exc).__name__}: {exc}"}

        answers = await asyncio.gather(*(one(a) for a in targets))
        return dict(zip(targets, answers))

    async def gather(self, keys: list[str]) -> dict[str, Any]:
        """Collect values for a client that cannot reach the workers itself.

        Each key is asked of its holders in turn, running workers first: a
        holder that is closing (retired, its data already copied) or cannot
        be reached is passed over for the next. A key no holder gave is
        ``missing``, for the client to ask again once it is recomputed.
        """
        todo = {key: holders for key, holders in self.state.who_has(keys).items() if holders}
        data: dict[str, Serialized] = {}
        errors: dict[str, str] = {}
        while todo:
            by_worker: dict[str, list[str]] = {}
            for key, holders in todo.items():
                by_worker.setdefault(holders.pop(0), []).append(key)
            answers = await asyncio.gather(*(self._get_data(a, ks) for a, ks in by_worker.items()))
            for got, failed in answers:
                data.update(got)
                errors.update(failed)
            todo = {k: h for k, h in todo.items() if h and k not in data and k not in errors}
        missing = [k for k in keys if k not in data and k not in errors]
        return {"status": "ok", "data": data, "errors": errors, "missing": missing}

    async def _get_data(self, address: str, keys: list[str]) -> tuple[dict, dict]:
        try:
            answer = await self.pool.request(address, "get_data", keys=keys)
        except (CommClosedError, OSError) as exc:
            logger.info("gather: worker %s is unreachable (%s); asking the next holder",
                        address, exc)
            return {}, {}
        return answer["data"], answer.get("errors", {})

    async def retire_workers(self, workers: list[str] | None = None, n: int | None = None,
                             close: bool = True) -> dict[str, Any]:
        retired = await self.retirement.retire(workers=workers, n=n, close=close)
        return {"status": "ok", "retired": retired}

    async def story(self, keys: list[str], workers: bool = True) -> list[dict[str, Any]]:
        """What happened to ``keys``, here and (``workers``) on every worker, by time."""
        entries = as_dicts(self.state.story(*keys), "scheduler")
        if workers and self.state.workers:
            answers = await self.broadcast("story", keys=keys)
            for address, answer in answers.items():
                if isinstance(answer, dict) and answer.get("status") == "ok":
                    entries.extend(as_dicts([tuple(e) for e in answer["story"]], address))
        entries.sort(key=lambda e: e["timestamp"])
        return entries

    def adaptive_target(self) -> dict[str, Any]:
        return {"status": "ok", "workers": adaptive_target(self.state)}


    def _keep_functions(self, client: str, msg: dict[str, Any]) -> None:
        """The client now takes a refused graph's functions as sent: keep them, if valid."""
        functions = msg.get("functions")
        try:
            FROM_CLIENT["update-graph"].fields["functions"].check(functions, "functions")
        except InvalidMessage:
            return
        if functions:
            self.handle(UpdateGraph(self.stimulus("refused-graph"), client, [], functions, []))


def _weight(msg: Any) -> int:
    """The work a client's message makes: the tasks of a graph, the keys released."""
    if type(msg) is not dict:
        return 1
    weight = 0
    for items in (msg.get("tasks"), msg.get("keys"), msg.get("calls")):
        if type(items) is dict:
            items = items.get("keys")
        if type(items) is list:
            weight += len(items)
    return max(1, weight)


def _check_columns(calls: dict[str, Any]) -> None:
    if len(calls["keys"]) != len(calls["args"]):
        raise InvalidMessage("calls", f"{len(calls['keys'])} keys but {len(calls['args'])} "
                             "arguments: one each")


#: The dependencies of every task of a map's columns (none; never changed).
_NO_DEPENDENCIES: list[str] = []


def _call_specs(calls: dict[str, Any]) -> list[TaskSpec]:
    func, priority = calls["func"], calls.get("priority") or 0
    workers, allow_other = calls.get("workers"), calls.get("allow_other_workers") or False
    resources, retries = calls.get("resources"), calls.get("retries") or 0
    return [TaskSpec(key, func, args, _NO_DEPENDENCIES, priority, workers, allow_other,
                     resources, retries)
            for key, args in zip(calls["keys"], calls["args"], strict=True)]


def _graph_keys(msg: dict[str, Any]) -> list[str]:
    """The keys a (refused) graph message names, as far as they are strings."""
    keys: dict[str, None] = {}
    tasks, wanted, calls = msg.get("tasks"), msg.get("wanted"), msg.get("calls")
    for task in tasks if type(tasks) is list else []:
        if type(task) is dict and type(task.get("key")) is str:
            keys[task["key"]] = None
    called = calls.get("keys") if type(calls) is dict else None
    for key in [*(wanted if type(wanted) is list else []),
                *(called if type(called) is list else [])]:
        if type(key) is str:
            keys[key] = None
    return list(keys)


def _task_spec(t: dict[str, Any]) -> TaskSpec:
    return TaskSpec(
        t["key"], t.get("func"), t.get("args"), t.get("deps") or [], t.get("priority") or 0,
        t.get("workers"), t.get("allow_other_workers") or False, t.get("resources"),
        t.get("retries") or 0,
    )
