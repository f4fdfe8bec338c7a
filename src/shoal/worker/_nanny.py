"""The nanny: a small supervising process that keeps one worker alive.

``shoal worker`` runs the worker as a child of a nanny by default.  A worker
can die in ways it cannot recover from by itself: a segfault in an extension,
the OOM killer, user code calling ``os._exit``.  The nanny

* restarts a child that exits unexpectedly, after a backoff that doubles on
  each quick failure (bounded, and reset once a child has lived a while), up
  to an optional number of restarts;
* watches the child's resident memory every ``poll_interval`` seconds (a
  monitor, not synchronisation) and kills and restarts it above the
  terminate fraction of the memory limit, before the kernel's OOM killer
  picks a victim at random;
* gives each child a fresh local directory (``local_directory``: see
  :mod:`shoal.worker._workspace`) and removes it, spill files included,
  once the child has exited, however it died, before starting the next;
* stops without restarting on :meth:`Nanny.close`, on SIGTERM/SIGINT in
  :meth:`Nanny.run` (forwarded to the child, which gets ``timeout`` seconds
  to finish before SIGKILL), and when the child exits with status 0 (a worker
  that was told to close, e.g. retired by the scheduler);
* given the scheduler's address, asks it for the nanny plugins clients
  registered (``client.register_plugin``) and sets them up before starting
  each worker process: ``Environ`` puts variables in its environment.

No child is ever left behind:

* the child runs in its own process group, so Ctrl-C in a terminal reaches
  only the nanny (which forwards it once) and the whole group, grandchildren
  included, is killed when the child is killed or exits;
* on Linux the child asks the kernel for SIGKILL when its parent dies
  (``prctl(PR_SET_PDEATHSIG)`` through ctypes in a ``preexec_fn``), so a
  nanny killed with SIGKILL takes its worker with it.  The kernel sends it
  when the *thread* that forked the child exits: start a nanny from a thread
  that outlives it (the event loop's thread);
* everywhere, the child finds the nanny's pid in ``SHOAL_NANNY_PID`` and
  should call :func:`watch_parent_from_env`, which polls its parent pid and
  exits the process when the nanny is gone (the fallback where prctl does
  not exist).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import psutil

from shoal.comm import wait_event
from shoal.worker._memory import MemoryThresholds, memory_limit_for
from shoal.worker._workspace import WORKER_DIRECTORY_ENV, WorkerDirectory

__all__ = [
    "NANNY_PID_ENV",
    "Nanny",
    "run_nanny",
    "watch_parent",
    "watch_parent_from_env",
    "worker_command",
]

logger = logging.getLogger(__name__)

#: Environment variable through which the child learns its nanny's pid.
NANNY_PID_ENV = "SHOAL_NANNY_PID"

#: Exit status of a child that noticed its nanny is gone.
EXIT_PARENT_GONE = 70

DEFAULT_POLL_INTERVAL = 0.15
DEFAULT_CLOSE_TIMEOUT = 5.0
#: Bound on asking the scheduler for nanny plugins before starting a worker.
PLUGIN_REQUEST_TIMEOUT = 5.0
#: Bound on waiting for a SIGKILLed process to be reaped.
KILL_WAIT_TIMEOUT = 5.0

_PR_SET_PDEATHSIG = 1

#: What starting a child can raise: a missing or non-executable program, no
#: pids or memory left, a bad argument, an exception in the preexec_fn.
_SPAWN_ERRORS = (OSError, ValueError, subprocess.SubprocessError)

#: Runs the ``shoal`` command line in the child without relying on a console
#: script being on PATH (``sys.argv[1:]`` are the arguments after ``-c``).
_CLI_BOOTSTRAP = "import sys; from shoal.cli import main; sys.exit(main())"


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved now: a preexec_fn must not load libraries after fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl  # type: ignore[no-any-return]


_PRCTL = _load_prctl()


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the child between fork and exec: ask for SIGKILL when the parent dies."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(EXIT_PARENT_GONE)


def watch_parent(parent_pid: int, interval: float = 1.0) -> threading.Thread:
    """In a child: exit the process soon after ``parent_pid`` stops being our parent."""

    def watch() -> None:
        while True:
            time.sleep(interval)  # a monitor: nothing waits for this loop
            if os.getppid() != parent_pid:
                logger.error("nanny (pid %d) is gone; exiting", parent_pid)
                os._exit(EXIT_PARENT_GONE)

    thread = threading.Thread(target=watch, name="shoal-watch-nanny", daemon=True)
    thread.start()
    return thread


def watch_parent_from_env(interval: float = 1.0) -> bool:
    """Call :func:`watch_parent` if a nanny started us; return whether it did."""
    value = os.environ.get(NANNY_PID_ENV, "")
    if not value.isdigit():
        return False
    watch_parent(int(value), interval)
    return True


def _kill_group(pid: int, sig: int) -> None:
    """Signal the process group led by ``pid`` (the child and what it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Nanny:
    """Run ``argv`` as a child process and keep it alive (see the module docs).

    ``memory_limit`` (bytes, 0: none) times ``terminate_fraction`` is the
    resident memory above which the child is killed and restarted.
    ``max_restarts`` (None: unlimited) bounds restarts after unexpected exits;
    ``backoff`` is the first delay before a restart, doubled on each failure
    up to ``max_backoff`` and reset when a child ran ``stable_after`` seconds.
    ``local_directory`` (None: none): where each child gets a directory of
    its own, named in its ``SHOAL_WORKER_DIRECTORY``, removed after it exits.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        memory_limit: int = 0,
        terminate_fraction: float | Literal[False] = 0.95,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_restarts: int | None = None,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        stable_after: float = 30.0,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        local_directory: str | None = None,
        scheduler_address: str | None = None,
    ) -> None:
        if not argv:
            raise ValueError("Nanny needs a command line to run")
        if terminate_fraction is not False and not 0 < terminate_fraction <= 1:
            raise ValueError(f"terminate_fraction must be in (0, 1], got {terminate_fraction}")
        self.argv = list(argv)
        self.memory_limit = memory_limit
        self.terminate_fraction = terminate_fraction
        self.poll_interval = poll_interval
        self.max_restarts = max_restarts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self._env = dict(os.environ if env is None else env)
        #: where to ask for nanny plugins before starting each worker (None: none)
        self.scheduler_address = scheduler_address
        self.plugins: dict[str, object] = {}
        self._cwd = cwd
        self.local_directory = local_directory
        #: the current child's directory (when ``local_directory`` is set)
        self.directory: WorkerDirectory | None = None
        self.restarts = 0
        self.memory_kills = 0
        self.last_returncode: int | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[int] | None = None
        self._closing = False
        self._stop: asyncio.Event | None = None
        self._close_signal: int = signal.SIGTERM

    # -- public API ------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """The environment the next worker process starts with (plugins may add to it)."""
        return self._env

    @property
    def pid(self) -> int | None:
        """The pid of the current child, None between children and after the end."""
        proc = self._process
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def memory_threshold(self) -> int | None:
        """Resident bytes above which the child is restarted; None if not enforced."""
        if self.memory_limit <= 0 or self.terminate_fraction is False:
            return None
        return int(self.memory_limit * self.terminate_fraction)

    async def start(self) -> None:
        """Start the child (errors such as a missing executable raise here)."""
        if self._supervisor is not None:
            raise RuntimeError("this nanny was already started")
        if self._closing:
            raise RuntimeError("this nanny was closed")
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        spawned: asyncio.Future[None] = loop.create_future()
        # the supervisor exists from here on, so close() can always wait for it
        supervisor = self._supervisor = loop.create_task(
            self._supervise(spawned), name="shoal-nanny"
        )
        try:
            await spawned
        except _SPAWN_ERRORS:
            await supervisor
            self._supervisor = None
            raise

    async def finished(self) -> int:
        """Wait until the nanny stops: 0 when closed or the child exited cleanly,
        else the last child's exit status (negative: killed by that signal)."""
        if self._supervisor is None:
            raise RuntimeError("this nanny was not started")
        return await asyncio.shield(self._supervisor)

    async def close(self, timeout: float = DEFAULT_CLOSE_TIMEOUT, sig: int = signal.SIGTERM) -> int:
        """Stop the child (``sig``, then SIGKILL after ``timeout`` s) and do not restart."""
        self._closing = True
        self._close_signal = sig
        if self._supervisor is None or self._stop is None:
            return 0
        self._stop.set()
        self._signal_child(sig)
        try:
            return await asyncio.wait_for(asyncio.shield(self._supervisor), timeout)
        except TimeoutError:
            logger.warning("worker did not stop within %.1f s; killing it", timeout)
        self._signal_child(signal.SIGKILL)
        return await asyncio.wait_for(asyncio.shield(self._supervisor), KILL_WAIT_TIMEOUT)

    def run(self, close_timeout: float = DEFAULT_CLOSE_TIMEOUT) -> int:
        """Blocking entry point for the CLI: supervise until stopped; return an exit status.

        SIGTERM and SIGINT are forwarded to the child, which is then given
        ``close_timeout`` seconds; a second signal kills it at once.
        """
        code = asyncio.run(self._run_until_signalled(close_timeout))
        return 128 - code if code < 0 else code

    # -- supervision -------------------------------------------------------------

    async def _run_until_signalled(self, close_timeout: float) -> int:
        loop = asyncio.get_running_loop()
        closing: list[asyncio.Task[int]] = []

        def on_signal(sig: int) -> None:
            if closing:
                self._signal_child(signal.SIGKILL)
                return
            logger.info("received %s; stopping the worker", signal.Signals(sig).name)
            closing.append(loop.create_task(self.close(close_timeout, sig)))

        handled = (signal.SIGTERM, signal.SIGINT)
        for sig in handled:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await self.start()
            code = await self.finished()
            for task in closing:
                await task
            return code
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)

    async def _spawn(self) -> None:
        if self.scheduler_address is not None:
            await self._setup_plugins(self.scheduler_address)
        env = {**self._env, NANNY_PID_ENV: str(os.getpid())}
        if self.local_directory is not None:
            self.directory = WorkerDirectory(self.local_directory)
            env[WORKER_DIRECTORY_ENV] = str(self.directory.path)
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self._cwd,
                process_group=0,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),
            )
        except BaseException:
            self._remove_directory()
            raise
        logger.info("started worker process %d", self._process.pid)
        if self._closing:  # close() was called while we were spawning
            self._signal_child(self._close_signal)

    async def _supervise(self, spawned: asyncio.Future[None]) -> int:
        try:
            await self._spawn()
        except _SPAWN_ERRORS as exc:
            spawned.set_exception(exc)
            return 1
        else:
            spawned.set_result(None)
        finally:
            if not spawned.done():  # cancelled while spawning
                spawned.cancel()
        delay = self.backoff
        while True:
            started = time.monotonic()
            code = await self._wait_child()
            self.last_returncode = code
            if self._closing or code == 0:
                if not self._closing:
                    logger.info("worker exited cleanly; the nanny stops too")
                return 0
            if self.max_restarts is not None and self.restarts >= self.max_restarts:
                logger.error(
                    "worker exited with %d; gave up after %d restarts", code, self.restarts
                )
                return code
            if time.monotonic() - started >= self.stable_after:
                delay = self.backoff
            logger.warning("worker exited with %d; restarting in %.2f s", code, delay)
            if not await self._backoff(delay):
                return 0
            delay = min(delay * 2, self.max_backoff)
            self.restarts += 1
            try:
                await self._spawn()
            except _SPAWN_ERRORS as exc:  # e.g. out of pids or memory: try again later
                logger.error("cannot restart the worker: %s", exc)
                self._process = None

    async def _setup_plugins(self, address: str) -> None:
        """Set up the nanny plugins the scheduler has, before each worker process
        (bounded: a scheduler not reachable yet means none this time)."""
        from shoal._plugins import call_hook
        from shoal.comm import CommClosedError, ConnectionPool
        from shoal.protocol import SerializationError, deserialize

        pool = ConnectionPool(timeout=PLUGIN_REQUEST_TIMEOUT)
        try:
            answer = await asyncio.wait_for(pool.request(address, "nanny_plugins"),
                                            PLUGIN_REQUEST_TIMEOUT)
        except (CommClosedError, OSError, TimeoutError) as exc:
            logger.debug("no nanny plugins from %s: %s", address, exc)
            return
        finally:
            pool.close()
        for name, blob in (answer.get("plugins") or {}).items():
            try:
                plugin = deserialize(blob)
            except SerializationError as exc:
                logger.error("nanny plugin %r cannot be unpickled here: %s", name, exc)
                continue
            self.plugins[name] = plugin
            result = call_hook(plugin, "setup", nanny=self)
            if result is not None:
                await result

    async def _backoff(self, delay: float) -> bool:
        """Wait ``delay`` seconds unless closed meanwhile; False if closed."""
        assert self._stop is not None
        await wait_event(self._stop, delay)
        return not self._closing

    async def _wait_child(self) -> int:
        proc = self._process
        if proc is None:  # the last spawn failed
            return 1
        monitor = None
        if self.memory_threshold is not None:
            monitor = asyncio.get_running_loop().create_task(self._watch_memory(proc))
        try:
            code = await proc.wait()
        finally:
            if monitor is not None:
                monitor.cancel()
        _kill_group(proc.pid, signal.SIGKILL)  # whatever the child left running
        self._remove_directory()
        return code

    def _remove_directory(self) -> None:
        """Delete the last child's directory (its spill files with it)."""
        if self.directory is not None:
            self.directory.remove()
            self.directory = None

    async def _watch_memory(self, proc: asyncio.subprocess.Process) -> None:
        threshold = self.memory_threshold
        assert threshold is not None
        try:
            watched = psutil.Process(proc.pid)
            while proc.returncode is None:
                rss = watched.memory_info().rss
                if rss >= threshold and proc.returncode is None:
                    self.memory_kills += 1
                    logger.warning(
                        "worker %d uses %d bytes, over %.0f%% of its %d byte limit; restarting it",
                        proc.pid,
                        rss,
                        100 * float(self.terminate_fraction),
                        self.memory_limit,
                    )
                    _kill_group(proc.pid, signal.SIGKILL)
                    return
                await asyncio.sleep(self.poll_interval)  # a monitor, not synchronisation
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return  # it is exiting; _wait_child sees that

    def _signal_child(self, sig: int) -> None:
        proc = self._process
        if proc is not None and proc.returncode is None:
            _kill_group(proc.pid, sig)


def worker_command(shoal_argv: Sequence[str]) -> list[str]:
    """The command line that runs ``shoal <shoal_argv>`` with this interpreter."""
    return [sys.executable, "-c", _CLI_BOOTSTRAP, *shoal_argv]


def run_nanny(shoal_argv: Sequence[str], args: argparse.Namespace | None = None) -> int:
    """``shoal worker`` with a nanny: supervise ``shoal <shoal_argv>`` until stopped.

    ``shoal_argv`` is the worker's own command line (``worker ADDRESS
    --no-nanny ...``); ``args`` the parsed options, of which ``memory_limit``
    (enforced here at the terminate fraction) and ``log_level`` (passed on
    through ``SHOAL_LOG_LEVEL``) are used.  Returns the exit status.
    """
    memory_limit = memory_limit_for(getattr(args, "memory_limit", None), 1)
    env = dict(os.environ)
    log_level = getattr(args, "log_level", None)
    if log_level:
        env["SHOAL_LOG_LEVEL"] = str(log_level)
    nanny = Nanny(
        worker_command(shoal_argv),
        memory_limit=memory_limit,
        terminate_fraction=getattr(args, "memory_terminate", MemoryThresholds().terminate),
        env=env,
        local_directory=getattr(args, "local_directory", None) or tempfile.gettempdir(),
        scheduler_address=getattr(args, "address", None),
    )
    logger.info("nanny %d supervises: shoal %s", os.getpid(), " ".join(shoal_argv))
    return nanny.run()
