"""The Client: submit work to a shoal cluster and get results back.

The API follows dask.distributed's so Dask users feel at home.  A blocking
client runs its connection on a background loop (see :mod:`._loop`); an
``asynchronous=True`` client runs on the caller's loop and its methods
return awaitables.

The client keeps the recipe (see :mod:`._recipes`) of every key it holds a
future for.  When the connection to the scheduler drops, it reconnects with
a bounded backoff for up to ``reconnect_timeout`` seconds and resubmits
those recipes, so a restarted scheduler learns again what this client
wants; keys that rejoining workers still hold are reused.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Self

from .._exceptions import (
    ClientClosedError,
    DataUnavailableError,
    RemoteError,
    SchedulerLostError,
    SchedulerRefusedError,
    ShoalTimeoutError,
    TLSError,
)
from .._gc import collection_paused
from ..comm import BatchedSend, CommClosedError, ConnectionPool, Security, connect, spawn
from ..comm._core import Comm
from ..protocol import SerializationError, Serialized, deserialize, serialize, serialize_call
from ..protocol._task import KEEP, KeyRef, replace
from . import _dask
from ._actor import Actor, actor_maker
from ._cluster import ClusterCalls
from ._datasets import DatasetCalls, abandon, confirm
from ._follow import FollowedWorkers
from ._future import FINAL, Future, FutureState, wait_final_threadsafe
from ._integrations import ClientExecutor
from ._joblib import register_if_available as register_joblib_backend
from ._loop import LoopRunner, bounded
from ._output import show_task_output
from ._recipes import Call, Column, ColumnBuilder, Packed, keep_recipes, resubmission
from ._tokenize import FunctionCache, task_key

logger = logging.getLogger(__name__)

#: Tasks per graph message a large ``map`` is sent in (see BatchedSend's weights).
MAP_CHUNK = 250
#: A large ``map``'s tasks without inputs go out this many at a time while the
#: call goes on building the rest: the cluster starts on the first ones at once
#: instead of idling until the last is built (a million took the caller 6-10 s).
MAP_SEND_TASKS = 10_000
#: While Futures keep being released, their releases are sent this often
#: (see Client._release_future).
RELEASE_INTERVAL = 0.01
#: Distinct sets of workers remembered as shared tuples (see ``Client._holders``).
MAX_HOLDER_TUPLES = 10_000

DEFAULT_TIMEOUT = 30.0
#: How long a client tries to reconnect to a scheduler that went away.
DEFAULT_RECONNECT_TIMEOUT = 60.0
#: Backoff between reconnection attempts: doubled from the first to the most.
RECONNECT_FIRST_DELAY = 0.05
RECONNECT_MAX_DELAY = 1.0
#: After reconnecting, how long to wait for the workers that held this
#: client's results to rejoin before resubmitting (so their data is reused).
REJOIN_WAIT = 5.0
_current: list[Client] = []


class Client(ClusterCalls, DatasetCalls):
    """Connect to a scheduler (or start a LocalCluster) and run work on it.

    ``Client()`` starts a LocalCluster sized to this machine and closes it on
    close; ``Client("tcp://host:8786")`` connects to a running scheduler;
    ``Client(cluster)`` connects to anything with a ``scheduler_address``.

    ``security`` gives TLS credentials (a :class:`shoal.Security`); without it
    the client uses the cluster's (a LocalCluster's own), or for a
    ``tls://`` address those of the environment (``SHOAL_TLS_*``, see
    :meth:`Security.from_env`).  ``Client(security=True)`` starts a
    LocalCluster with temporary certificates.
    """

    def __init__(
        self,
        address: Any = None,
        asynchronous: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        name: str | None = None,
        direct_to_workers: bool = True,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
        set_as_default: bool = True,
        security: Security | bool | None = None,
        **cluster_kwargs: Any,
    ) -> None:
        self.id = f"{name or 'Client'}-{uuid.uuid4().hex}"
        self.asynchronous = asynchronous
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self.direct_to_workers = direct_to_workers
        self._set_as_default = set_as_default
        self.cluster: Any = None
        self._own_cluster = False
        self._address_arg = address
        self._cluster_kwargs = cluster_kwargs
        self._security_arg = security
        self.security = security if isinstance(security, Security) else Security()
        self.scheduler_address = ""
        self.status = "newly-created"
        self._states: dict[str, FutureState] = {}
        #: the workers a result is on, one shared tuple per worker (see _holders)
        self._holder_tuples: dict[Any, tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self._released: collections.deque[str] = collections.deque()
        self._release_scheduled = False
        self._release_ticking = False  # see _release_future
        #: calls for the loop made from other threads, run in order (see _call_on_loop)
        self._loop_calls: collections.deque[tuple[Callable[..., Any], tuple]] = (
            collections.deque())
        self._loop_calls_scheduled = False
        #: held while a call runs on the loop, and while another thread sends
        #: straight to the scheduler (see _send_graph): nothing overtakes a call
        self._calls_lock = threading.RLock()
        self._functions = FunctionCache()
        self._functions_sent: set[str] = set()  # the scheduler keeps these for us
        self._stream: BatchedSend | None = None
        self._comm: Comm | None = None
        self.pool = ConnectionPool()
        self._runner: LoopRunner | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._reader: asyncio.Task | None = None
        self._reconnecting: asyncio.Task | None = None
        self._counter = itertools.count()
        self._confirmations: dict[str, asyncio.Future] = {}  # see _datasets.store
        self._followed = FollowedWorkers(self)
        if asynchronous:
            self._started: Any = None
        else:
            self._runner = LoopRunner(f"shoal-client-{self.id[-8:]}")
            self.loop = self._runner.loop
            self._loop_thread = self._runner.thread.ident
            try:
                self.sync(self._start, timeout=None)
            except BaseException:
                self._runner.stop()
                raise

    # ------------------------------------------------------------ lifecycle

    def __await__(self) -> Any:
        async def start() -> Client:
            if self.status != "running":
                self.loop = asyncio.get_running_loop()
                self._loop_thread = threading.get_ident()
                await self._start()
            return self

        return start().__await__()

    async def _start(self) -> None:
        address = self._address_arg
        if address is None:
            from ..cluster import LocalCluster

            kwargs = dict(self._cluster_kwargs)
            if self._security_arg is not None:
                kwargs["security"] = self._security_arg
            self.cluster = await LocalCluster(asynchronous=True, **kwargs)
            self._own_cluster = True
            address = self.cluster.scheduler_address
        elif not isinstance(address, str):
            self.cluster = address
            address = address.scheduler_address
        self.security = self._choose_security(address)
        self.pool.connection_args = self.security.connection_args("client")
        self.scheduler_address = address
        await self._first_register(self.timeout)
        # once per client, not per connection (_register runs again on reconnecting)
        self.status = "running"
        _current.append(self)
        if self._set_as_default and not self.asynchronous:
            _dask.set_default(self)
        register_joblib_backend()

    def _choose_security(self, address: str) -> Security:
        """The one given, else the cluster's, else for tls:// the environment's."""
        if isinstance(self._security_arg, Security):
            return self._security_arg
        own = getattr(self.cluster, "security", None)
        if isinstance(own, Security):
            return own
        if address.startswith("tls://"):
            return Security.from_env()
        return Security()

    async def _first_register(self, timeout: float) -> None:
        """Register, waiting up to ``timeout`` for a scheduler that is not up yet.

        A scheduler that is still starting (a new pod whose Service has no
        endpoint yet, a name not in DNS yet, a process binding its port)
        refuses connections for a moment: retry with a bounded backoff, as
        dask's Client does, instead of failing at the first refusal.
        """
        deadline = time.monotonic() + timeout
        delay = RECONNECT_FIRST_DELAY
        while True:
            try:
                await self._register(max(deadline - time.monotonic(), RECONNECT_FIRST_DELAY))
                return
            except TLSError:
                raise  # refused credentials do not get better by waiting
            except (CommClosedError, OSError) as exc:
                if time.monotonic() + delay >= deadline:
                    raise CommClosedError(
                        f"could not connect to the scheduler at {self.scheduler_address} "
                        f"within timeout={timeout}s: {exc}") from exc
                logger.debug("connecting to %s: %s", self.scheduler_address, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    async def _register(self, timeout: float) -> None:
        address = self.scheduler_address
        comm = await connect(address, timeout=timeout,
                             connection_args=self.pool.connection_args)
        await comm.write({"op": "register-client", "client": self.id})
        answer = await comm.read()
        if not isinstance(answer, dict) or answer.get("status") != "ok":
            comm.abort()
            raise SchedulerRefusedError(f"the scheduler at {address} refused this client: {answer}")
        self._comm = comm
        self._stream = BatchedSend(comm)
        self._reader = spawn(self._read_scheduler(comm), f"{self.id} reading its scheduler")

    def close(self, timeout: float = 10.0) -> Any:
        if self.asynchronous:
            return self._close()
        if self.status == "closed":
            return None
        try:
            self.sync(self._close, timeout=timeout)
        finally:
            if self._runner is not None:
                self._runner.stop()
        return None

    async def _close(self) -> None:
        if self.status == "closed":
            return
        self.status = "closed"
        if self in _current:
            _current.remove(self)
        _dask.unset_default(self)
        if self._stream is not None:
            try:
                self._stream.send({"op": "close-client"})
            except CommClosedError:
                pass
            await self._stream.close(2.0)
        for task in (self._reader, self._reconnecting):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._followed.close()
        self.pool.close()
        for state in self._states.values():
            if state.status not in FINAL:
                state.cancel()
        abandon(self, ClientClosedError(f"client {self.id} closed before the scheduler "
                                        "confirmed the request"))
        if self._own_cluster and self.cluster is not None:
            await self.cluster._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return await self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    def __del__(self) -> None:
        if self.status == "running" and not self.asynchronous:
            try:
                self.close(timeout=2)
            except Exception:  # noqa: BLE001, S110 - at interpreter shutdown anything goes
                pass

    # ------------------------------------------------------------ loop plumbing

    def sync(self, func: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run a coroutine function on the client's loop and wait for it."""
        if self.asynchronous:
            return func()
        assert self._runner is not None
        return self._runner.run(func, timeout)

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _call_on_loop(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback`` on the client's loop, in the order of the calls.

        From another thread the calls queue up and one wake-up of the loop
        runs all that are queued by then: a loop of ``submit`` calls costs a
        wake-up (a write to the loop's self-pipe) per batch, not per task, and
        what they send leaves together.
        """
        if self._on_loop():
            callback(*args)
            return
        self._loop_calls.append((callback, args))
        self._wake_once("_loop_calls_scheduled", self._run_loop_calls)

    def _wake_once(self, flag: str, callback: Callable[[], None]) -> None:
        """Have the loop call ``callback`` unless the ``flag`` attribute says it will."""
        if not getattr(self, flag) and self.loop is not None and not self.loop.is_closed():
            setattr(self, flag, True)
            try:
                self.loop.call_soon_threadsafe(callback)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _run_loop_calls(self) -> None:
        self._loop_calls_scheduled = False  # first: a call queued from now on schedules anew
        calls = self._loop_calls
        while calls:
            with self._calls_lock:
                callback, args = calls.popleft()
                try:
                    callback(*args)
                except Exception:  # one failed call must not drop the ones queued after it
                    logger.exception("a call on the client's loop failed")

    def _send(self, msg: dict[str, Any], weight: int = 1) -> None:
        if self._stream is None or self.status != "running":
            return
        try:
            self._stream.send(msg, weight=weight)
        except CommClosedError:
            pass

    async def ask_scheduler(self, op: str, **fields: Any) -> Any:
        """A request to the scheduler, answered after it has heard of every
        result the workers pushed to this client (see ``scheduler/_catch_up.py``)."""
        await self._followed.catch_up()
        return await self.pool.request(self.scheduler_address, op, **fields)

    # ------------------------------------------------------------ futures bookkeeping

    def _register_future(self, key: str, state: FutureState | None) -> FutureState:
        with self._lock:
            existing = self._states.get(key)
            if existing is not None and existing.status != "cancelled":
                existing.refs += 1
                return existing
            state = state or FutureState(key)
            if existing is not None:  # submitted again after a cancel: a new life
                state.refs = existing.refs
            state.refs += 1
            self._states[key] = state
            return state

    def _release_future(self, key: str) -> None:
        """A Future was garbage-collected (from ``__del__``, on any thread).

        It takes no lock here: a collection can run inside a section that
        holds one.  The key is queued and counted down on the client's loop,
        where the releases queued by then leave as one message (see
        ``_tick_releases``).
        """
        self._released.append(key)
        if not self._release_ticking:
            self._wake_once("_release_scheduled", self._tick_releases)

    def _tick_releases(self) -> None:
        """On the loop: send the releases queued, and come back in
        RELEASE_INTERVAL while they keep coming.

        Meanwhile releasing a Future wakes nothing: waking the loop from
        another thread costs that thread a system call (here 30-40 us, the
        wake-up of a thread on another CPU), and a Future dropped right
        after its result, as in a loop of ``submit(...).result()``, would
        pay it on every turn.  The releases wait at most RELEASE_INTERVAL.
        """
        self._release_scheduled = False
        self._release_ticking = bool(self._released)
        self._process_releases()
        if not self._release_ticking and self._released:  # one came as we stopped
            self._release_ticking = True
        if self._release_ticking and self.loop is not None and not self.loop.is_closed():
            self.loop.call_later(RELEASE_INTERVAL, self._tick_releases)

    def _process_releases(self) -> None:
        forgotten = []
        states = self._states
        with self._lock:
            while self._released:
                key = self._released.popleft()
                state = states.get(key)
                if state is not None:
                    state.refs -= 1
                    if state.refs > 0:
                        continue
                    del states[key]
                    if type(state.recipe) is Column:
                        state.recipe.forget(states)
                forgotten.append(key)
        for start in range(0, len(forgotten), MAP_CHUNK):  # slices, as graphs are sent
            keys = forgotten[start:start + MAP_CHUNK]
            self._send({"op": "client-releases-keys", "keys": keys}, weight=len(keys))

    async def _read_scheduler(self, comm: Comm) -> None:
        try:
            while True:
                batch = await comm.read()
                for msg in batch if isinstance(batch, list) else [batch]:
                    try:
                        self._handle_report(msg)
                    except Exception:  # one bad report must not stop the others
                        logger.exception("cannot handle %.200r from the scheduler", msg)
        except CommClosedError:
            comm.abort()  # its descriptors go now, not when it is collected
        except asyncio.CancelledError:
            return
        if self.status == "running":
            logger.warning("client %s lost its scheduler at %s; reconnecting", self.id,
                           self.scheduler_address)
            self.status = "reconnecting"
            abandon(self, SchedulerLostError(
                f"lost the connection to the scheduler at {self.scheduler_address} before "
                "it confirmed the request"))
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Reconnect with a bounded backoff, then resubmit what is still wanted."""
        deadline = time.monotonic() + self.reconnect_timeout
        delay = RECONNECT_FIRST_DELAY
        self.pool.remove(self.scheduler_address)
        while self.status == "reconnecting":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._give_up()
                return
            try:
                await self._register(min(remaining, self.timeout))
            except (CommClosedError, OSError, SchedulerRefusedError) as exc:
                logger.debug("reconnecting to %s: %s", self.scheduler_address, exc)
                await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, RECONNECT_MAX_DELAY)  # bounded backoff
                continue
            await self._await_rejoining_workers(deadline)
            if self.status != "reconnecting":
                return
            if self._comm is None or self._comm.closed():
                continue  # lost again while waiting: start over
            with self._calls_lock:  # no graph sent from another thread before the resubmission
                self.status = "running"
                self._resubmit()
            logger.warning("client %s reconnected to %s", self.id, self.scheduler_address)

    def _give_up(self) -> None:
        self.status = "disconnected"
        logger.error("client %s could not reconnect to %s within reconnect_timeout=%ss",
                     self.id, self.scheduler_address, self.reconnect_timeout)
        for state in list(self._states.values()):
            if state.status not in FINAL:
                error = SchedulerLostError(
                    f"lost the connection to the scheduler at {self.scheduler_address} "
                    f"before {state.key!r} finished, and could not reconnect within "
                    f"reconnect_timeout={self.reconnect_timeout}s")
                state.fail(serialize(error), "", str(error))

    async def _await_rejoining_workers(self, deadline: float) -> None:
        """Give the workers that hold finished results a moment to rejoin (bounded)."""
        holders = {w for s in self._states.values() if s.status == "finished" for w in s.workers}
        until = min(deadline, time.monotonic() + REJOIN_WAIT)
        delay = RECONNECT_FIRST_DELAY
        while holders and time.monotonic() < until:
            try:
                info = await self.pool.request(self.scheduler_address, "scheduler_info")
            except (CommClosedError, OSError):
                return  # the stream's reader notices a lost scheduler
            if holders <= set(info["workers"]):
                return
            await asyncio.sleep(delay)  # a bounded poll: rejoining is not announced to clients
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    def _resubmit(self) -> None:
        """Send the new scheduler the recipes of every key still wanted, inputs first."""
        with self._lock:
            wanted, tasks, functions = resubmission(self._states)
        self._functions_sent = set(functions)
        self._send({"op": "update-graph", "tasks": tasks, "functions": functions,
                    "wanted": wanted})

    def _handle_report(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "key-in-memory":  # nearly every report: first, and no pass over keys
            state = self._states.get(msg["key"])
            if state is not None:
                workers = msg["workers"]
                state.finish(self._holders(workers), msg["nbytes"], msg.get("value"))
                if len(workers) == 1:
                    self._followed.heard_of(workers[0])
            return
        if op == "error":
            logger.error("scheduler: %s", msg.get("message"))
            return
        if op == "confirmed":
            confirm(self, msg)
            return
        if op == "task-output":
            show_task_output(msg)
            return
        if op not in ("task-erred", "cancelled-keys", "lost-key"):
            logger.warning("unknown message from the scheduler: %r", op)
            return
        keys: list[str] = msg["keys"] if op == "cancelled-keys" else [msg["key"]]
        for key in keys:
            state = self._states.get(key)
            if state is None:
                continue
            if op == "task-erred":
                state.fail(msg.get("exception"), msg.get("traceback") or "",
                           msg.get("exception_text") or "")
            elif op == "cancelled-keys":
                state.cancel()
            elif op == "lost-key":
                state.lose()

    def _holders(self, workers: list[str]) -> tuple[str, ...]:
        """``workers`` as a tuple shared by every result on them: a million results
        on two workers hold two tuples, not a million lists of fresh strings."""
        cache = self._holder_tuples
        index: Any = workers[0] if len(workers) == 1 else tuple(workers)
        holders = cache.get(index)
        if holders is None:
            if len(cache) >= MAX_HOLDER_TUPLES:
                cache.clear()
            holders = cache[index] = tuple(workers)
        return holders

    # ------------------------------------------------------------ submitting

    def submit(self, func: Callable[..., Any], *args: Any, key: str | None = None,
               pure: bool = True, workers: Iterable[str] | str | None = None,
               allow_other_workers: bool = False, retries: int = 0, priority: int = 0,
               resources: dict[str, float] | None = None, **kwargs: Any) -> Future:
        """Run ``func(*args, **kwargs)`` on the cluster; futures in args become inputs."""
        if not callable(func):
            raise TypeError(f"submit needs a callable, got {type(func).__name__}")
        if _wants_actor(kwargs):
            func, pure = actor_maker(func), False
        call = self._functions.get(func)
        task, deps_futures = self._task(call[0]["func"], args, kwargs, key, pure)
        _restrict(task, workers, allow_other_workers, retries, priority, resources)
        future = Future(task["key"], self)
        self._send_graph([task], call, [task["key"]], deps_futures)
        return future

    def map(self, func: Callable[..., Any], *iterables: Iterable[Any], key: str | list | None = None,
            pure: bool = True, workers: Iterable[str] | str | None = None,
            allow_other_workers: bool = False, retries: int = 0, priority: int = 0,
            resources: dict[str, float] | None = None, batch_size: int | None = None,
            **kwargs: Any) -> list[Future]:
        """``submit`` for each element of the iterables, shipping ``func`` once."""
        if not callable(func):
            raise TypeError(f"map needs a callable, got {type(func).__name__}")
        if _wants_actor(kwargs):
            func, pure = actor_maker(func), False
        call = self._functions.get(func)
        token = call[0]["func"]
        # a sequence as it is (a range makes each number as it goes), anything else listed
        columns = [it if isinstance(it, (list, tuple, range)) else list(it) for it in iterables]
        common: dict[str, Any] = {}  # the restrictions, the same for every task
        _restrict(common, workers, allow_other_workers, retries, priority, resources)
        if common:  # their own call; else the function's, shared with its other tasks
            call = ({**call[0], **common}, call[1])
        with collection_paused():  # a million futures: nothing for the collector to find
            futures, tasks, deps, sent = self._map_tasks(
                token, call, zip(*columns), key, kwargs, pure)
        # the tasks with inputs in graphs of MAP_CHUNK too; their inputs held until the last
        for start in range(0, len(tasks) if tasks or sent else 1, MAP_CHUNK):
            self._send_graph(tasks[start:start + MAP_CHUNK], call,
                             [t["key"] for t in tasks[start:start + MAP_CHUNK]],
                             deps if start + MAP_CHUNK >= len(tasks) else [])
        return futures

    def _map_tasks(self, token: str, call: Call,
                   calls: Iterable[tuple], key: str | list | None, kwargs: dict, pure: bool,
                   ) -> tuple[list[Future], list[dict[str, Any]], list[Future], bool]:
        """``map``'s futures, built call by call: the tasks without inputs sent as
        columns of MAP_SEND_TASKS meanwhile; those with inputs returned as task
        messages, with the futures they take; and whether any went as columns."""
        keys = key if isinstance(key, list) else None
        common = call[0]
        column, plain = Column(call), ColumnBuilder()
        tasks: list[dict[str, Any]] = []
        futures, deps = [], []
        sent = False
        for i, call_args in enumerate(calls):
            task_key_ = keys[i] if keys else (f"{key}-{i}" if isinstance(key, str) else None)
            task_key_, ser_args, task_deps = self._call(token, call_args, kwargs, task_key_, pure)
            future = Future(task_key_, self)
            if task_deps:
                tasks.append({"key": task_key_, "args": ser_args,
                              "deps": list(dict.fromkeys(f.key for f in task_deps)), **common})
                deps.extend(task_deps)
            else:
                plain.add(task_key_, ser_args)
                future._state.recipe = column
                if len(plain.keys) == MAP_SEND_TASKS:
                    self._send_calls(column, plain.packed())
                    column, plain, sent = Column(call), ColumnBuilder(), True
            futures.append(future)
        if plain.keys:
            self._send_calls(column, plain.packed())
            sent = True
        return futures, tasks, deps, sent

    def _new_function(self, token: str, ser: Serialized) -> dict[str, Serialized]:
        """The function to send with a graph: only if this client never sent it."""
        if token in self._functions_sent:
            return {}
        self._functions_sent.add(token)
        return {token: ser}

    def _task(self, token: str, args: tuple, kwargs: dict, key: str | None,
              pure: bool) -> tuple[dict[str, Any], list[Future]]:
        """The task message of one call, and the futures among its arguments."""
        key, ser_args, found = self._call(token, args, kwargs, key, pure)
        task: dict[str, Any] = {"key": key, "func": token, "args": ser_args}
        if found:
            task["deps"] = list(dict.fromkeys(f.key for f in found))
        return task, found

    def _call(self, token: str, args: tuple, kwargs: dict, key: str | None,
              pure: bool) -> tuple[str, Any, list[Future]]:
        """The key and serialized arguments of one call, and the futures among them."""
        found: list[Future] = []

        def swap(leaf: Any) -> Any:
            if type(leaf) is Future:
                if leaf.client is not self:
                    raise ValueError(f"{leaf!r} belongs to another client")
                found.append(leaf)
                return KeyRef(leaf.key)
            return KEEP

        args = replace(args, swap) if args else ()
        kwargs = replace(kwargs, swap) if kwargs else {}
        try:
            ser_args = serialize_call(args, kwargs)
        except SerializationError as exc:
            raise SerializationError(f"cannot send the arguments of {token}: {exc}") from exc
        return key or task_key(token, ser_args, pure), ser_args.compact(), found

    def _send_graph(self, tasks: list[dict], call: Call,
                    wanted: list[str], keep_alive: list[Future]) -> None:
        """Send ``tasks``, which call ``call`` (the fields most of them share, and
        the function), keeping their recipes."""
        if self.status not in ("running", "reconnecting"):
            raise ClientClosedError(f"the client is {self.status}")
        func = call[1]
        with self._lock:
            keep_recipes(self._states, tasks, call)

        def graph() -> dict[str, Any]:
            return {"op": "update-graph", "tasks": tasks,
                    "functions": self._new_function(tasks[0]["func"], func), "wanted": wanted}

        def send() -> None:
            # Holding the input futures until the graph is sent: were they
            # collected before, their release could reach the scheduler first.
            # While reconnecting nothing is sent: the resubmission includes it.
            if self.status == "running" and tasks:
                self._send(graph(), weight=len(tasks))
            keep_alive.clear()

        if not self._send_from_caller(graph, tasks):
            self._call_on_loop(send)

    def _send_from_caller(self, graph: Callable[[], dict[str, Any]], tasks: list[dict]) -> bool:
        """From a thread other than the loop's: send a small graph straight to the
        scheduler when nothing queued for the loop is before it and the stream
        is idle (``BatchedSend.send_threadsafe``), sparing the loop's wake-up:
        a ``submit(...).result()`` returns ~0.06 ms sooner here.  False, with
        nothing sent, otherwise."""
        if len(tasks) != 1 or self._on_loop():
            return False
        with self._calls_lock:
            stream = self._stream
            if self._loop_calls or self.status != "running" or stream is None:
                return False
            token = tasks[0]["func"]
            fresh = token not in self._functions_sent
            if stream.send_threadsafe(graph()):
                return True
            if fresh:  # not sent: the graph the loop makes carries the function
                self._functions_sent.discard(token)
            return False

    def _send_calls(self, column: Column, packed: Packed) -> None:
        """Send tasks without inputs as columns (see ``CALLS`` in protocol/_ops.py), in
        graphs of MAP_CHUNK tasks, which the scheduler takes in one at a time while it
        serves everyone else; ``packed`` fills ``column``, the recipe of their states."""
        if self.status not in ("running", "reconnecting"):
            raise ClientClosedError(f"the client is {self.status}")
        with self._lock:
            column.fill(packed)
        fields, func = column.call
        for start in range(0, len(packed.keys), MAP_CHUNK):
            self._call_on_loop(self._send_slice, fields, func, packed, start)

    def _send_slice(self, fields: dict[str, Any], func: Serialized, packed: Packed,
                    start: int) -> None:
        if self.status == "running":  # while reconnecting, the resubmission sends it
            stop = start + MAP_CHUNK
            calls = {**fields, "keys": packed.keys[start:stop], "args": packed.args(start, stop)}
            self._send({"op": "update-graph", "tasks": [], "wanted": [], "calls": calls,
                        "functions": self._new_function(fields["func"], func)},
                       weight=len(calls["keys"]))

    # ------------------------------------------------------------ results

    def _result_blocking(self, future: Future, timeout: float | None) -> Any:
        """``future.result()`` for a synchronous client, from any thread but the loop's.

        A small result came with the report: the calling thread waits for the
        report itself and unpickles the result, without a trip through the
        loop.  A result still on a worker is fetched on the loop.
        """
        if self._on_loop():
            raise RuntimeError("cannot wait on the client's loop from inside it")
        deadline = None if timeout is None else time.monotonic() + timeout
        state = future._state
        if not wait_final_threadsafe(state, timeout):
            raise ShoalTimeoutError(f"no result for {future.key!r} within timeout={timeout}s")
        if state.status == "finished" and state.inline is not None:
            return self._own_actor(future.key, deserialize(state.inline))
        if state.status in ("error", "cancelled"):
            raise state.make_exception()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.sync(lambda: self._result(future, remaining))

    def _own_actor(self, key: str, value: Any) -> Any:
        """``value``, an Actor handle made to keep its object alive while it is held."""
        if type(value) is Actor and value._future is None:
            value._future = Future(key, self)
        return value

    async def _result(self, future: Future, timeout: float | None) -> Any:
        values = await bounded(self._gather_states([future._state]), timeout,
                               lambda: f"no result for {future.key!r}")
        return values[future.key]

    async def _wait_final(self, states: Iterable[FutureState]) -> None:
        for state in states:
            if state.status not in FINAL:
                await state.wait()

    async def _gather_states(self, states: list[FutureState], errors: str = "raise") -> dict:
        values: dict[str, Any] = {}
        todo = {s.key: s for s in states}
        for _attempt in range(5):
            await self._wait_final(todo.values())
            fetch: dict[str, FutureState] = {}
            for key, state in todo.items():
                if state.status == "finished" and state.inline is not None:
                    values[key] = deserialize(state.inline)
                elif state.status == "finished":
                    fetch[key] = state
                elif errors == "raise":
                    raise state.make_exception()
            got, failed = await self._fetch(fetch)
            values.update(got)
            todo = {k: todo[k] for k in failed}
            if not todo:
                for key, value in values.items():
                    self._own_actor(key, value)
                return values
            await asyncio.sleep(0.05 * (_attempt + 1))  # back off while data is recomputed
        raise DataUnavailableError(f"could not fetch {sorted(todo)[:5]} from any worker")

    async def _fetch(self, states: dict[str, FutureState]) -> tuple[dict, list[str]]:
        by_worker: dict[str, list[str]] = {}
        for key, state in states.items():
            by_worker.setdefault(state.workers[0] if state.workers else "", []).append(key)
        answers = await asyncio.gather(*(self._get_data(w, keys) for w, keys in by_worker.items()))
        values: dict[str, Any] = {}
        failed: list[str] = []
        for data, errors, missing in answers:
            if errors:
                key, message = next(iter(errors.items()))
                raise SerializationError(message)
            for key, ser in data.items():
                values[key] = deserialize(ser)
            failed.extend(missing)
        return values, failed

    async def _get_data(self, worker: str, keys: list[str]) -> tuple[dict, dict, list]:
        if worker and self.direct_to_workers:
            try:
                answer = await self.pool.request(worker, "get_data", keys=keys)
            except (CommClosedError, OSError):
                answer = None
            if answer is not None:
                data = answer["data"]
                missing = [k for k in keys if k not in data and k not in answer["errors"]]
                if not missing:
                    return data, answer["errors"], missing
                # moved since we heard where it was (rebalanced): the scheduler knows
                found, errors, missing = await self._get_data("", missing)
                return {**data, **found}, {**answer["errors"], **errors}, missing
        answer = await self.ask_scheduler("gather", keys=keys)
        return answer["data"], answer["errors"], answer["missing"]

    def gather(self, futures: Any, errors: str = "raise", direct: bool | None = None) -> Any:
        """The values of ``futures`` (a future, or lists/tuples/dicts of them)."""
        found: list[Future] = []

        def collect(leaf: Any) -> Any:
            if type(leaf) is Future:
                found.append(leaf)
            return KEEP

        replace(futures if type(futures) is not Future else [futures], collect)

        async def run() -> Any:
            states = list({f.key: f._state for f in found}.values())
            values = await self._gather_states(states, errors)
            skip = object()

            def swap(leaf: Any) -> Any:
                if type(leaf) is Future:
                    return values.get(leaf.key, skip)
                return KEEP

            out = replace(futures, swap) if type(futures) is not Future else values[futures.key]
            if errors == "skip" and isinstance(out, list):
                out = [v for v in out if v is not skip]
            return out

        return self.sync(run)

    # ------------------------------------------------------------ data placement

    def scatter(self, data: Any, workers: Iterable[str] | str | None = None,
                broadcast: bool = False, hash: bool = True) -> Any:
        """Move local data onto workers; returns futures shaped like ``data``."""
        if isinstance(data, dict):
            items = list(data.items())
        elif isinstance(data, (list, tuple, set, frozenset)):
            items = [(None, v) for v in data]
        else:
            items = [(None, data)]
        keyed: list[tuple[str, Serialized]] = []
        for name, value in items:
            ser = serialize(value)
            key = name if name is not None else task_key(
                f"{type(value).__name__}-0", ser, pure=hash)
            keyed.append((key, ser))
        futures = [Future(k, self) for k, _ in keyed]
        targets = [workers] if isinstance(workers, str) else workers

        async def run() -> Any:
            await self._scatter(keyed, list(targets) if targets else None, broadcast)
            await self._wait_final(f._state for f in futures)
            if isinstance(data, dict):
                return dict(zip(data, futures))
            if isinstance(data, (list, tuple)):
                return type(data)(futures)
            return futures if isinstance(data, (set, frozenset)) else futures[0]

        return self.sync(run)

    async def _scatter(self, keyed: list[tuple[str, Serialized]], workers: list[str] | None,
                       broadcast: bool) -> None:
        info = await self.ask_scheduler("scheduler_info")
        names = {w["name"]: a for a, w in info["workers"].items()}
        pool = [names.get(w, w) for w in workers] if workers else sorted(info["workers"])
        if not pool:
            raise RuntimeError("no workers to scatter to")
        plan: dict[str, dict[str, Serialized]] = {}
        start = next(self._counter)
        for i, (key, ser) in enumerate(keyed):
            chosen = pool if broadcast else [pool[(start + i) % len(pool)]]
            for address in chosen:
                plan.setdefault(address, {})[key] = ser
        who_has: dict[str, list[str]] = {}
        nbytes: dict[str, int] = {}
        for address, data in plan.items():
            answer = await self.pool.request(address, "update_data", data=data)
            for key, size in answer["nbytes"].items():
                who_has.setdefault(key, []).append(address)
                nbytes[key] = size
        self._send({"op": "update-data", "who_has": who_has, "nbytes": nbytes})

    def cancel(self, futures: Iterable[Future] | Future) -> None:
        """Stop computing these (and everything that depends on them)."""
        keys = [f.key for f in ([futures] if isinstance(futures, Future) else futures)]

        def send() -> None:
            for key in keys:
                state = self._states.get(key)
                if state is not None and state.status not in FINAL:
                    state.cancel()
            self._send({"op": "cancel-keys", "keys": keys})

        self._call_on_loop(send)

    # ------------------------------------------------------------ cluster-wide calls

    def run(self, function: Callable[..., Any], *args: Any,
            workers: list[str] | None = None, **kwargs: Any) -> Any:
        """Call ``function(*args, **kwargs)`` on every worker: ``{address: result}``.

        A ``dask_worker`` parameter of ``function`` receives the Worker object.
        """
        ser = serialize(function)
        ser_args = serialize(args)
        ser_kwargs = serialize(kwargs)

        async def run() -> dict[str, Any]:
            answers = await self.ask_scheduler("broadcast", worker_op="run",
                                               workers=workers, function=ser, args=ser_args,
                                               kwargs=ser_kwargs)
            out = {}
            for address, answer in answers.items():
                if answer.get("status") != "ok":
                    raise RemoteError(f"run failed on {address}: {answer.get('message')}")
                out[address] = deserialize(answer["result"])
            return out

        return self.sync(run)

    def scheduler_info(self) -> Any:
        return self.sync(lambda: self.ask_scheduler("scheduler_info"))

    def who_has(self, futures: Iterable[Future] | None = None) -> Any:
        keys = [f.key for f in futures] if futures is not None else list(self._states)
        return self.sync(lambda: self.ask_scheduler("who_has", keys=keys))

    def story(self, *keys: str | Future) -> Any:
        """Every recorded state change of these keys, on the scheduler and the
        workers, oldest first: ``[{"key", "start", "finish", "stimulus_id",
        "timestamp", "where"}, ...]`` (bounded logs: old entries are dropped)."""
        names = [k.key if isinstance(k, Future) else k for k in keys]
        return self.sync(lambda: self.ask_scheduler("story", keys=names))

    def retire_workers(self, workers: list[str] | None = None, n: int | None = None,
                       close_workers: bool = True) -> Any:
        """Move data off some workers and close them; returns what was retired."""

        async def run() -> Any:
            answer = await self.ask_scheduler("retire_workers",
                                              workers=workers, n=n, close=close_workers)
            return answer["retired"]

        return self.sync(run)

    @classmethod
    def current(cls, allow_global: bool = True) -> Client:
        """The default client (the newest running one), as in dask.distributed."""
        return default_client()

    @property
    def futures(self) -> dict[str, FutureState]:
        """What this client knows of each key it holds futures for."""
        with self._lock:
            return dict(self._states)

    def get(self, graph: Any, keys: Any, **kwargs: Any) -> Any:
        """Run a dask graph: ``dask.compute(x, scheduler=client.get)``."""
        return _dask.dask_get(self, graph, keys, **kwargs)

    def compute(self, collections: Any, sync: bool = False, optimize_graph: bool = True,
                **restrictions: Any) -> Any:
        """Futures of dask collections' values (their results if ``sync``)."""
        return _dask.compute_collections(self, collections, sync, optimize_graph, restrictions)

    def persist(self, collections: Any, optimize_graph: bool = True,
                **restrictions: Any) -> Any:
        """The collections, computing on the cluster, their pieces held as futures."""
        return _dask.persist_collections(self, collections, optimize_graph, restrictions)

    def get_executor(self, **submit_kwargs: Any) -> ClientExecutor:
        """A ``concurrent.futures.Executor`` running on this cluster."""
        return ClientExecutor(self, **submit_kwargs)

    @property
    def dashboard_link(self) -> str | None:
        from ._repr import dashboard_link

        return dashboard_link(self)

    def _repr_html_(self) -> str:
        from ._repr import client_html

        return client_html(self)

    def __repr__(self) -> str:
        return f"<Client: {self.scheduler_address or 'not connected'} {self.status}>"


def _restrict(task: dict[str, Any], workers: Iterable[str] | str | None, allow_other: bool,
              retries: int, priority: int, resources: dict[str, float] | None) -> None:
    if workers is not None:
        task["workers"] = [workers] if isinstance(workers, str) else list(workers)
        if allow_other:
            task["allow_other_workers"] = True
    if retries:
        task["retries"] = retries
    if priority:
        task["priority"] = priority
    if resources:
        task["resources"] = resources


def _wants_actor(kwargs: dict[str, Any]) -> bool:
    """``actor=`` (or ``actors=``) is dask.distributed's keyword, not the function's."""
    return bool(kwargs.pop("actor", False) | kwargs.pop("actors", False))


def default_client() -> Client:
    """The most recently started client that is still running."""
    for client in reversed(_current):
        if client.status == "running":
            return client
    raise ValueError("no shoal Client is running; create one with shoal.Client(...)")
