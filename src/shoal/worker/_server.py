"""The worker process's I/O shell around :class:`WorkerState`.

It keeps one batched stream to the scheduler, serves its results to peers
and clients (``get_data``), fetches inputs from peers, and runs tasks on its
executor.  All decisions are the state machine's; this module only carries
them out.

When the scheduler goes away the worker drops everything it holds (the
scheduler has already rescheduled it) and tries to reconnect until
``death_timeout`` passes, then exits: under a nanny or Kubernetes it is
simply started again.

Messages are checked against their op's shape (``protocol._ops``) where they
enter: requests by the RPC server, the scheduler's stream here.  An error
handling one message is logged and the next one is served.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from .._exceptions import ShoalTimeoutError, TLSError
from .._gc import collect_if_small
from .._logbuffer import get_logs
from .._logbuffer import install as install_log_buffer
from .._story import DEFAULT_STORY_SIZE
from ..comm import (
    BatchedSend,
    CommClosedError,
    CommLimits,
    ConnectionPool,
    RPCServer,
    Security,
    Strikes,
    connect,
    spawn,
    wait_event,
)
from ..comm._core import Comm
from ..comm._pool import bound as bound_buffer_pool
from ..protocol import SerializationError, Serialized, ToPickle, deserialize, serialize
from ..protocol._call import call_injecting
from ..protocol._ops import FROM_SCHEDULER, MAX_NTHREADS, WORKER_RPC, check_message
from ..protocol._schema import InvalidMessage
from ._actors import ActorHost
from ._allocator import tune_allocator
from ._context import as_actor_call, run_in_context, task_worker, wake_rejoins
from ._execute import WARM_IMPORTS, Executor, Outcome, run_task, start_warm_imports
from ._memory import MemoryThresholds, memory_limit_for, process_memory
from ._monitor import DEFAULT_STUCK_TIMEOUT, MemoryCheck, MemoryMonitor
from ._nanny import NANNY_PID_ENV
from ._plugins import WorkerPlugins
from ._profile import Profiler
from ._reports import ClientReports
from ._sizeof import sizeof
from ._state import (
    AcquireReplicas,
    AddData,
    ComputeTask,
    Execute,
    ExecuteFailure,
    ExecuteSuccess,
    FailReady,
    Forget,
    FreeKeys,
    Gather,
    GatherDone,
    Rejoined,
    SchedulerLost,
    Send,
    SetPaused,
    StealRequest,
    WorkerState,
    WTask,
)
from ._store import DataStore
from ._workspace import WORKER_DIRECTORY_ENV, WorkerDirectory

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 0.5
DEFAULT_DEATH_TIMEOUT = 60.0
INLINE_RESULT_BYTES = 16 * 1024
#: How long a closing worker waits for the scheduler to close the connection
#: after its goodbye (see ``close``).
GOODBYE_WAIT = 2.0
#: Share of the memory limit that idle receive buffers may keep (comm/_pool.py):
#: a container's memory limit counts them, the RSS the monitor reads does not;
#: and the free space each of the allocator's heaps may keep at its top
#: (worker/_allocator.py), which the RSS counts until it is given back.
BUFFER_POOL_SHARE = 1 / 8
#: Exit status of a worker restarted on request (any non-zero makes its nanny restart it).
EXIT_RESTART = 75


_current_worker: list[Worker] = []


def get_worker() -> Worker:
    """The worker running this task (or of this process, in a ``Client.run`` call)."""
    worker = task_worker()
    if worker is not None:
        return worker
    if not _current_worker:
        raise ValueError("get_worker() is only available inside a shoal worker")
    return _current_worker[-1]


class Worker:
    """A worker: ``await Worker(scheduler_address).start()``.

    ``own_process``: the worker is its process's only user (``shoal worker``),
    so with a memory limit it may tune the process's allocator to keep freed
    memory for reuse (``_allocator.py``); a worker inside someone else's
    process (``LocalCluster(processes=False)``) leaves it alone.
    """

    def __init__(
        self,
        scheduler_address: str,
        *,
        nthreads: int = 1,
        name: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        memory_limit: str | float | None = "auto",
        resources: dict[str, float] | None = None,
        death_timeout: float = DEFAULT_DEATH_TIMEOUT,
        memory_thresholds: MemoryThresholds | None = None,
        local_directory: str | None = None,
        listen_address: str | None = None,
        http_port: int | None = None,
        limits: CommLimits | None = None,
        http_max_body_bytes: int | None = None,
        story_size: int = DEFAULT_STORY_SIZE,
        memory_stuck_timeout: float = DEFAULT_STUCK_TIMEOUT,
        security: Security | None = None,
        warm_imports: Iterable[str] = WARM_IMPORTS,
        own_process: bool = False,
    ) -> None:
        if type(nthreads) is not int or not 1 <= nthreads <= MAX_NTHREADS:
            raise ValueError(f"nthreads must be an integer from 1 to {MAX_NTHREADS}, "
                             f"got {nthreads!r}")
        self.http_port = http_port
        self.http_max_body_bytes = http_max_body_bytes
        self.limits = limits
        self.story_size = story_size
        self.http_address: str | None = None
        self._http: Any = None
        self.scheduler_address = scheduler_address
        self.nthreads = nthreads
        self.name = name
        #: TLS credentials (worker role) and HTTP token; none: plain tcp://.
        self.security = security or Security()
        scheme = "tls" if self.security.tls else "tcp"
        self.listen_address = listen_address or f"{scheme}://{host}:{port}"
        self.connection_args = self.security.connection_args("worker")
        self.memory_limit = memory_limit_for(memory_limit, 1)
        self.resources = dict(resources or {})
        self.death_timeout = death_timeout
        self.local_directory = local_directory
        self.directory: str | None = None  # where spill files go (see _workspace.py)
        self._own_directory: WorkerDirectory | None = None
        self.thresholds = memory_thresholds or MemoryThresholds()
        self.memory_stuck_timeout = memory_stuck_timeout
        #: Modules imported in the background at start (see _execute.WARM_IMPORTS).
        self.warm_imports = tuple(warm_imports)
        self.own_process = own_process
        self.address = ""
        self.actors = ActorHost(self)
        self.plugins = WorkerPlugins(self)
        #: thread id -> key of the task (or actor) it runs, for the profiler
        self.running_threads: dict[int, str] = {}
        self.profiler = Profiler(self.running_threads,
                                 frozenset({run_task.__code__, as_actor_call.__code__}))
        self.reports = ClientReports()
        self.rpc = RPCServer(
            {
                "get_data": self.get_data,
                "update_data": self.update_data,
                "run": self.run_function,
                "ping": lambda: "pong",
                "info": self.info,
                "get_logs": get_logs,
                "story": self.story,
                "remove_replicas": self.remove_replicas,
                "profile": lambda start=None, stop=None, key=None: {
                    "status": "ok", "profile": self.profiler.profile(start, stop, key)},
                **self.actors.handlers(),
                **self.plugins.handlers(),
            },
            {"client-reports": self.reports.serve},
            schemas=WORKER_RPC,
            limits=limits,
            connection_args=self.connection_args,
        )
        self.pool = ConnectionPool(connection_args=self.connection_args)
        self.functions: dict[str, Any] = {}
        self.rejoin_waiters: dict[str, Any] = {}  # key -> threading.Event (see _context)
        #: called (in a thread) when the worker closes, e.g. to close the
        #: client its tasks used (blocking calls: not on this loop)
        self.on_close: list[Callable[[], Any]] = []
        self.data: DataStore
        self.state: WorkerState
        self.stream: BatchedSend | None = None
        self._scheduler_gone: asyncio.Event | None = None  # set when a read loop ends
        self.status = "init"
        self.bytes_served = 0
        self.memory: MemoryMonitor
        self._process = psutil.Process()
        self.bytes_fetched = 0
        #: Inputs fetched from peers that cannot be unpickled here, with the reason.
        self._undecodable: dict[str, str] = {}
        self._tasks: set[asyncio.Task] = set()
        self._stopped = asyncio.Event()
        self._ids = itertools.count()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> Worker:
        install_log_buffer()
        start_warm_imports(self.warm_imports)
        self.address = await self.rpc.listen(self.listen_address)
        if self.name is None:
            self.name = self.address
        target = self.thresholds.bytes_for("target", self.memory_limit)
        self.directory = self._take_directory()
        self.data = DataStore(target, self.directory)
        self.memory = MemoryMonitor(str(self.name), self.memory_limit, self.thresholds,
                                    self.data, process_memory,
                                    stuck_timeout=self.memory_stuck_timeout)
        if self.memory_limit:
            share = int(self.memory_limit * BUFFER_POOL_SHARE)
            if self.own_process:  # freed memory kept for reuse; the monitor gives it back
                tune_allocator(share)
            bound_buffer_pool(share)
        self.state = WorkerState(self.address, self.nthreads, self.resources, self.story_size)
        self.executor = Executor(self.nthreads, self._executed, name=str(self.name))
        self.profiler.start()
        if self.http_port is not None:  # health and metrics (worker/_http.py)
            from ._http import start_http

            self._http, self.http_address = await start_http(self, self.http_port,
                                                             self.http_max_body_bytes,
                                                             self.security)
        await self._connect_scheduler()
        self.status = "running"
        _current_worker.append(self)
        self._spawn(self._heartbeat())
        return self

    @property
    def registered(self) -> bool:
        """Running and connected to the scheduler (not between a lost scheduler and the next)."""
        gone = self._scheduler_gone
        return self.status == "running" and gone is not None and not gone.is_set()

    def _take_directory(self) -> str:
        """The nanny's directory for this process if it made one, else one of our own."""
        given = os.environ.pop(WORKER_DIRECTORY_ENV, None)  # not for processes we start
        if given and os.environ.get(NANNY_PID_ENV) == str(os.getppid()):
            return given
        self._own_directory = WorkerDirectory(self.local_directory)
        return str(self._own_directory.path)

    async def _connect_scheduler(self) -> None:
        deadline = time.monotonic() + self.death_timeout
        delay = 0.05
        tls_warned = False
        while True:
            try:
                comm = await connect(self.scheduler_address, timeout=5, limits=self.limits,
                                     connection_args=self.connection_args)
                await comm.write(self._registration())
                answer = await comm.read()
                break
            except (CommClosedError, OSError) as exc:
                if isinstance(exc, TLSError) and not tls_warned:  # retried: certs may rotate in
                    logger.warning("worker %s: %s", self.name, exc)
                    tls_warned = True
                if time.monotonic() > deadline:
                    raise ShoalTimeoutError(
                        f"worker {self.name} could not reach the scheduler at "
                        f"{self.scheduler_address} within death_timeout={self.death_timeout}s: "
                        f"{exc}"
                    ) from exc
                await asyncio.sleep(delay)  # back off between connection attempts
                delay = min(delay * 2, 1.0)
        if not isinstance(answer, dict) or answer.get("status") != "ok":
            comm.abort()
            raise RuntimeError(f"the scheduler refused worker {self.name}: {answer}")
        self.stream = BatchedSend(comm)
        await self.plugins.add_all(answer.get("plugins") or {})
        self._scheduler_gone = gone = asyncio.Event()
        self._spawn(self._read_scheduler(comm, gone))

    def _registration(self) -> dict[str, Any]:
        return {
            "op": "register-worker",
            "address": self.address,
            "name": self.name,
            "nthreads": self.nthreads,
            "memory_limit": self.memory_limit,
            "resources": self.resources,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "keys": self.state.held(),
            "http_address": self.http_address,
            "nanny": NANNY_PID_ENV in os.environ,
        }

    async def _read_scheduler(self, comm: Comm, gone: asyncio.Event) -> None:
        # ops that become state-machine events: those of one read are handled
        # together (one pass of the state machine, one hand-over to the executor)
        to_event: dict[str, Callable[..., Any]] = {
            "compute-task": self._compute_task,
            "free-keys": lambda keys: FreeKeys(keys, self._stimulus("free-keys")),
            "acquire-replicas": lambda who_has, nbytes: AcquireReplicas(
                who_has, nbytes, self._stimulus("acquire-replicas")),
            "steal-request": lambda key: StealRequest(key, self._stimulus("steal-request")),
        }
        handlers: dict[str, Callable[..., None]] = {
            "close": self._close_request,
            "restart": self._restart_request,
            "error": self._error_from_scheduler,
            # after every report sent before it: see scheduler/_catch_up.py
            "catch-up": lambda token: self._send({"op": "caught-up", "token": token}),
        }
        strikes = Strikes(f"the scheduler at {self.scheduler_address}")
        try:
            while True:
                batch = await comm.read()
                events: list[Any] = []
                for msg in batch if type(batch) is list else [batch]:
                    try:
                        op, fields = check_message(FROM_SCHEDULER, msg)
                    except InvalidMessage as exc:
                        if strikes.refuse(exc):
                            comm.abort()
                            raise CommClosedError("too many bad messages") from exc
                        continue
                    try:
                        make = to_event.get(op)
                        if make is not None:
                            ev = make(**fields)
                            if ev is not None:
                                events.append(ev)
                            continue
                        self._handle_events(events)  # what came before goes first
                        events = []
                        handlers[op](**fields)
                    except Exception:  # one message's failure stops no other
                        logger.exception("handling %r from the scheduler failed", op)
                self._handle_events(events)
        except CommClosedError:
            pass
        gone.set()
        if self.status == "running":
            logger.warning("worker %s lost its scheduler; reconnecting", self.name)
            self._reset()
            try:
                await self._connect_scheduler()
            except (TimeoutError, RuntimeError) as exc:
                logger.error("%s; shutting down", exc)
                self._spawn(self.close())

    def _reset(self) -> None:
        """Keep the results (announced to the scheduler on rejoining), drop the rest."""
        self._handle(SchedulerLost(self._stimulus("scheduler-lost")))
        for key in list(self.data):
            if key not in self.state.tasks:
                self.data.discard(key)
        self.functions.clear()
        wake_rejoins(self)  # their tasks are forgotten: nothing will grant a slot
        self._undecodable.clear()

    def _stimulus(self, what: str) -> str:
        return f"{what}-{next(self._ids)}"

    def _spawn(self, coro: Any) -> None:
        spawn(coro, f"worker: {getattr(coro, '__name__', coro)}", self._tasks)

    async def close(self, timeout: float = 5.0) -> None:
        if self.status in ("closing", "closed"):
            return
        self.status = "closing"
        self.rpc.stop()
        self.reports.close()
        if self._http is not None:
            self._http.stop()
        if self.stream is not None:
            self._send({"op": "goodbye"})
            # The scheduler closes the connection once it has read the goodbye;
            # until then keep reading.  Closing first would have the kernel answer
            # what the scheduler sends meanwhile with a reset, which can lose the
            # goodbye (the scheduler then logs the worker as lost).
            if (self._scheduler_gone is not None
                    and not await wait_event(self._scheduler_gone, min(timeout, GOODBYE_WAIT))):
                logger.debug("worker %s: the scheduler did not close after the goodbye",
                             self.name)
            await self.stream.close(timeout)
        wake_rejoins(self)
        await self.plugins.close()
        loop = asyncio.get_running_loop()
        for hook in self.on_close:
            await loop.run_in_executor(None, hook)
        self.executor.shutdown()
        self.profiler.stop()
        self.actors.close()
        self.pool.close()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        self.data.close()
        if self._own_directory is not None:
            self._own_directory.remove()
        if self in _current_worker:
            _current_worker.remove(self)
        self.status = "closed"
        self._stopped.set()

    async def finished(self) -> None:
        await self._stopped.wait()

    def _close_request(self, **_: Any) -> None:
        self._spawn(self.close())

    def _restart_request(self, **_: Any) -> None:
        """``Client.restart``: exit so that the nanny starts a fresh process."""
        if NANNY_PID_ENV not in os.environ:  # the scheduler only asks workers with a nanny
            logger.warning("asked to restart, but no nanny would start this worker again")
            return

        async def restart() -> None:
            await self.close()
            os._exit(EXIT_RESTART)  # non-zero: the nanny restarts it

        self._spawn(restart())
    def _error_from_scheduler(self, message: str, **_: Any) -> None:
        logger.error("the scheduler refused a message of worker %s: %s", self.name, message)

    # ------------------------------------------------------------ messages in

    def _compute_task(
        self,
        key: str,
        func: str,
        args: Serialized | None,
        priority: list,
        function: Serialized | None = None,
        who_has: dict | None = None,
        nbytes: dict | None = None,
        resources: dict | None = None,
        report: list[str] | None = None,
    ) -> ComputeTask | None:
        """The event of a compute-task message, or None if the task errs at once."""
        if function is not None and func not in self.functions:
            try:
                self.functions[func] = deserialize(function)
            except SerializationError as exc:
                self._refuse_task(key, exc)
                return None
        if resources:
            unknown = sorted(set(resources) - set(self.resources))
            if unknown:
                self._refuse_task(key, ValueError(f"worker {self.name} has no resource {unknown}"))
                return None
        return ComputeTask(key, func, args, tuple(priority), who_has or {}, nbytes or {},
                           resources, tuple(report or ()), self._stimulus("compute-task"))

    def _refuse_task(self, key: str, exc: Exception) -> None:
        """A task this worker cannot even start: it errs at once."""
        self._send({"op": "task-erred", "key": key, "exception": serialize(exc),
                    "traceback": "", "exception_text": str(exc)})

    def _handle_events(self, events: list[Any]) -> None:
        if events:
            try:
                self._handle(*events)
            except Exception:  # a bug on one batch must not stop the stream
                logger.exception("the state machine failed on %d events from the scheduler",
                                 len(events))

    # ------------------------------------------------------------ instructions

    def _handle(self, *events: Any) -> None:
        runs: list[Callable[[], Outcome]] = []
        for inst in self.state.handle(*events):
            kind = type(inst)
            if kind is Send:
                self._send(inst.msg)
            elif kind is Execute:
                run = self._prepare(inst.key)
                if run is not None:
                    runs.append(run)
            elif kind is Gather:
                self._spawn(self._gather(inst))
            elif kind is Forget:
                self.data.discard(inst.key)
                self._undecodable.pop(inst.key, None)
                self.actors.release(inst.key)
            elif kind is Rejoined:
                wake_rejoins(self, [inst.key])
        if runs:
            self.executor.submit_many(runs)
        if self.plugins.tap.pending:
            self.plugins.flush()

    def _send(self, msg: dict[str, Any]) -> None:
        if self.stream is not None:
            try:
                self.stream.send(msg)
            except CommClosedError:
                pass

    def _prepare(self, key: str) -> Callable[[], Outcome] | None:
        """What an executor thread will call to run task ``key``."""
        ts = self.state.tasks[key]
        func = self.functions.get(ts.func)  # type: ignore[arg-type]
        args = ts.args
        if func is None:
            self._cannot_run(key, RuntimeError("function missing"),
                             "the worker never received this task's function",
                             "function-missing")
            return None
        inputs: dict[str, Any] = {}
        if ts.dependencies:  # (most tasks of a map have none: no pass to make)
            bad = next((d.key for d in ts.dependencies if d.key in self._undecodable), None)
            if bad is not None:
                reason = self._undecodable[bad]
                self._cannot_run(key, SerializationError(reason),
                                 f"input {bad!r} of {key!r} cannot be used here: {reason}",
                                 "input-undecodable")
                return None
            inputs = {dep.key: self.data[dep.key] for dep in ts.dependencies}
        return lambda: run_in_context(self, key, func, args, inputs)

    def _cannot_run(self, key: str, exc: Exception, text: str, what: str) -> None:
        self._handle(ExecuteFailure(key, serialize(exc), "", text, self._stimulus(what)))

    def _executed(self, outcomes: list[Outcome]) -> None:
        events: list[Any] = []
        # a lone result with nothing else to run: the client waits on this worker
        push = bool(self.reports.streams) and len(outcomes) == 1 and not self.state.ready
        executed = self._stimulus("executed")  # one batch, one stimulus
        for o in outcomes:
            if o.ok:
                self.data.set_with_size(o.key, o.value, o.nbytes)
                refusal = self.memory.refusal(o.key, o.nbytes)
                if refusal is not None:  # it fits nowhere: fail it rather than be killed
                    self.data.discard(o.key)
                    logger.warning("%s", refusal)
                    events.append(ExecuteFailure(o.key, serialize(refusal), "",
                                                 f"{type(refusal).__name__}: {refusal}",
                                                 self._stimulus("memory-refused")))
                    continue
                ts = self.state.tasks.get(o.key)
                inline = self._inline(ts, o.value, o.nbytes)
                reported: tuple[str, ...] = ()
                if push and inline is not None:  # before the report to the scheduler
                    assert ts is not None  # it has a result to go inline
                    reported = self.reports.push(ts.report, o.key, o.nbytes, inline)
                events.append(ExecuteSuccess(o.key, o.nbytes, o.start, o.stop, inline, reported,
                                             executed))
            else:
                events.append(ExecuteFailure(o.key, o.exception, o.traceback, o.exception_text,
                                             executed))
        self.memory.task_ended()
        self._handle(*events)

    def _inline(self, ts: WTask | None, value: Any,
                nbytes: int) -> Serialized | bytes | memoryview | None:
        """A small result a client waits for travels with the report, saving a fetch."""
        if ts is None or not ts.report or nbytes > INLINE_RESULT_BYTES:
            return None
        try:
            ser = serialize(value)
        except SerializationError:
            return None  # the client's fetch will report the error
        if ser.nbytes > INLINE_RESULT_BYTES:
            return None
        return ser.compact()

    async def _gather(self, inst: Gather) -> None:
        """Fetch inputs from a peer; whatever happens, the state machine hears how it went."""
        received: dict[str, int] = {}
        gone = False
        try:
            answer = await self.pool.request(inst.worker, "get_data", keys=inst.keys)
            data = answer.get("data") if type(answer) is dict else None
            if type(data) is not dict:
                raise InvalidMessage("data", f"{inst.worker} answered get_data with "
                                     f"{str(answer)[:80]!r}")
            for key in inst.keys:
                ser = data.get(key)
                ts = self.state.tasks.get(key)
                if isinstance(ser, (Serialized, bytes)) and ts is not None and ts.state == "flight":
                    received[key] = self._store_fetched(key, ser, inst.worker)
        except (CommClosedError, OSError, ValueError) as exc:
            # ValueError: a bad answer (InvalidMessage), or an address that is not one
            logger.info("fetching %d keys from %s failed: %s", len(inst.keys), inst.worker, exc)
            gone = not isinstance(exc, InvalidMessage)
        finally:
            missing = [k for k in inst.keys if k not in received]
            self._handle(GatherDone(inst.worker, received, missing, gone,
                                    self._stimulus("gather-done")))

    def _store_fetched(self, key: str, ser: Serialized | bytes, peer: str) -> int:
        """Keep a fetched input; one that cannot be unpickled here fails its dependents."""
        try:
            value = deserialize(ser)
        except SerializationError as exc:
            logger.warning("input %r fetched from %s cannot be unpickled: %s", key, peer, exc)
            self._undecodable[key] = f"fetched from {peer}, {exc}"
            return len(ser) if isinstance(ser, bytes) else ser.nbytes
        nbytes = sizeof(value)
        self.data.set_with_size(key, value, nbytes)
        self.bytes_fetched += len(ser) if isinstance(ser, bytes) else ser.nbytes
        return nbytes

    # ------------------------------------------------------------ served ops

    def get_data(self, keys: list[str]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for key in keys:
            if key not in self.data:
                continue
            try:
                ser = self.data.get_serialized(key)
            except SerializationError as exc:
                errors[key] = f"the result of {key!r} cannot be sent: {exc}"
                continue
            self.bytes_served += ser.nbytes
            data[key] = ser
        return {"status": "ok", "data": data, "errors": errors}

    def update_data(self, data: dict[str, Serialized]) -> dict[str, Any]:
        """Keep scattered values: all of them, or (if one cannot be unpickled) none."""
        values = {key: deserialize(ser) for key, ser in data.items()}
        nbytes = {}
        for key, value in values.items():
            nbytes[key] = sizeof(value)
            self.data.set_with_size(key, value, nbytes[key])
        self._handle(AddData(nbytes, self._stimulus("update-data")))
        return {"status": "ok", "nbytes": nbytes}

    def remove_replicas(self, keys: list[str]) -> dict[str, Any]:
        """``rebalance``: drop these copies (held elsewhere too), except an actor's
        and the inputs of work started here; answer which were dropped."""
        dropped = []
        for key in keys:
            ts = self.state.tasks.get(key)
            if ts is None or ts.state != "memory" or key in self.actors.actors:
                continue
            if any(d.state in ("waiting", "ready", "executing") for d in ts.dependents):
                continue
            dropped.append(key)
        if dropped:
            self._handle(FreeKeys(dropped, self._stimulus("remove-replicas")))
        return {"status": "ok", "dropped": dropped}

    def story(self, keys: list[str]) -> dict[str, Any]:
        return {"status": "ok", "story": self.state.story(*keys)}

    async def run_function(self, function: Serialized, args: Any = None,
                           kwargs: Any = None) -> dict[str, Any]:
        func = deserialize(function)
        call_args = deserialize(args) if args is not None else ()
        call_kwargs = deserialize(kwargs) if kwargs is not None else {}
        result = call_injecting(func, call_args, call_kwargs, dask_worker=self)
        if asyncio.iscoroutine(result):
            result = await result
        return {"status": "ok", "result": ToPickle(result)}

    def info(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "nthreads": self.nthreads,
            "memory_limit": self.memory_limit,
            "pid": os.getpid(),
            "memory_managed": self.data.memory_bytes,
            "memory_spilled": self.data.spilled_bytes,
            "tasks": {
                s: sum(1 for t in self.state.tasks.values() if t.state == s)
                for s in ("waiting", "ready", "executing", "memory", "fetch", "flight")
            },
        }

    # ------------------------------------------------------------ heartbeat

    async def _heartbeat(self) -> None:
        while self.status == "running":
            await asyncio.sleep(HEARTBEAT_INTERVAL)  # a period, not a synchronisation
            self._send_heartbeat(self.check_memory(report_pause=False))
            collect_if_small(len(self.state.tasks))

    def _send_heartbeat(self, check: MemoryCheck) -> None:
        self._send(
            {
                "op": "heartbeat",
                "metrics": {
                    "memory_process": check.rss,
                    "memory_managed": self.data.memory_bytes,
                    "memory_unmanaged": check.unmanaged,
                    "memory_spilled": self.data.spilled_bytes,
                    "executing": len(self.state.executing),
                    "bytes_served": self.bytes_served,
                    "bytes_fetched": self.bytes_fetched,
                    "paused": self.state.paused,
                    "memory_state": check.state,
                    "memory_stuck": check.stuck,
                    # paused for good: the scheduler fails what no worker can take
                    "memory_stuck_failure": self._stuck_failure(check),
                    "spill_error": self.data.spill_error,
                    "cpu": self._process.cpu_percent(),
                },
            }
        )

    def _stuck_failure(self, check: MemoryCheck) -> str | None:
        failure = self.memory.stuck_failure() if check.paused else None
        return str(failure) if failure is not None else None

    def check_memory(self, report_pause: bool = True) -> MemoryCheck:
        """Spill, give memory back and pause or resume as the memory monitor finds.

        A pause or resume is reported to the scheduler at once (``report_pause``),
        so that it stops or starts giving this worker work without waiting for
        the next heartbeat."""
        check = self.memory.check()
        if check.paused != self.state.paused:
            self._handle(SetPaused(check.paused, self._stimulus("memory-pause")))
            if report_pause:
                self._send_heartbeat(check)
        if check.paused and self.state.ready and not self.state.executing:
            failure = self.memory.stuck_failure()
            if failure is not None:  # they would wait for ever: their clients hear why
                logger.warning("%s; failing the %d tasks waiting to start", failure,
                               len(self.state.ready))
                self._handle(FailReady(serialize(failure), f"{type(failure).__name__}: {failure}",
                                       self._stimulus("memory-stuck")))
        return check
