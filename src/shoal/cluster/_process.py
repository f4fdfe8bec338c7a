"""Child processes that announce themselves and never outlive their parent.

A shoal process started with ``--announce`` prints one line on stdout once
it is serving: a secret the parent gave it (``SHOAL_ANNOUNCE_TOKEN``, never
visible to the tasks it runs), then JSON (its address, pid, ...).  The
parent reads that line with a timeout, then keeps draining the pipe in a
thread so later lines (a restarted worker announces again) never block the
child.  Every other line, whatever it looks like, is output of the child or
of its tasks (``print()``): it is copied to the parent's ``sys.stdout``, and
the child's stderr (warnings, logs) to ``sys.stderr``, as dask does for a
LocalCluster, so it reaches a notebook too.  Children import with the
parent's ``sys.path`` (see :func:`parent_path`).  On Linux each child
asks the kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``), so a
parent killed with SIGKILL leaves no strays; otherwise the child's own parent
watch (see the nanny) is the fallback.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any

PR_SET_PDEATHSIG = 1
ANNOUNCE_TOKEN_ENV = "SHOAL_ANNOUNCE_TOKEN"
#: How long a stopped child's last output may take to be copied (a grandchild
#: still holding the pipe must not hold us up).
OUTPUT_DRAIN_TIMEOUT = 2.0


def die_with_parent() -> None:
    """In a forked child: ask the kernel for SIGTERM when the parent dies."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except OSError:
            pass


class ChildProcess:
    """A ``python -m shoal.cli ...`` child with its announcement."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, "-m", "shoal.cli", *args, "--announce"]
        self._token = secrets.token_hex(16).encode()
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": parent_path(), **(env or {}),
                 ANNOUNCE_TOKEN_ENV: self._token.decode()},
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only a prctl call, async-signal-safe
        )
        self.announcements: list[dict[str, Any]] = []
        self._announced = threading.Event()
        self._asked_to_stop = False
        self._threads = [
            threading.Thread(target=self._drain, daemon=True, name=f"shoal-stdout-{self.pid}"),
            threading.Thread(target=_copy_lines, args=(self.proc.stderr, "stderr"),
                             daemon=True, name=f"shoal-stderr-{self.pid}"),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_announced(self, timeout: float) -> dict[str, Any]:
        """The first announcement; raises if the child dies or stays silent."""
        deadline = time.monotonic() + timeout
        while not self._announced.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            code = self.proc.poll()
            if code is not None or time.monotonic() >= deadline:
                self.kill()
                why = (f"exited with code {code}" if code is not None
                       else f"was silent for {timeout}s")
                raise RuntimeError(f"`shoal {' '.join(self.args[3:])}` {why} before it was ready")
        return self.announcements[0]

    def _drain(self) -> None:
        """Announcements are recorded; every other line is the child's output."""
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                if line.startswith(self._token + b" "):
                    self.announcements.append(json.loads(line[len(self._token) + 1:]))
                    self._announced.set()
                else:
                    _forward(line, "stdout")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask_to_stop(self) -> None:
        """SIGTERM, once: a second one tells a nanny to kill its worker at once."""
        if self.proc.poll() is None and not self._asked_to_stop:
            self._asked_to_stop = True
            self.proc.terminate()

    def terminate(self, timeout: float = 5.0) -> None:
        """SIGTERM (unless sent already), then SIGKILL if it has not exited within
        ``timeout``."""
        if self.proc.poll() is None:
            self.ask_to_stop()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._finish_output()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._finish_output()

    def _finish_output(self) -> None:
        """Let the last lines the child wrote reach us before its pipes are dropped."""
        deadline = time.monotonic() + OUTPUT_DRAIN_TIMEOUT
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def parent_path() -> str:
    """This process's import path for a child, as dask's LocalCluster gives its
    workers: a module next to the user's script (or in the notebook's
    directory) imports on the workers whatever their working directory."""
    entries = [os.path.abspath(p or os.getcwd()) for p in sys.path]
    entries += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(p for p in entries if os.path.isdir(p)))


def _forward(line: bytes, stream: str) -> None:
    """Copy a child's output line to this process's stdout or stderr (looked up now:
    a notebook replaces them)."""
    out = getattr(sys, stream)
    try:
        out.write(line.decode(errors="replace"))
        out.flush()
    except (OSError, ValueError):  # our own stream is closed: the line has nowhere to go
        pass


def _copy_lines(pipe: IO[bytes], stream: str) -> None:
    with pipe:
        for line in pipe:
            _forward(line, stream)


def announce(**info: Any) -> None:
    """Print the one-line announcement a parent waits for, after the parent's secret.

    The secret leaves the environment here, before any task runs, so no task
    output can pass for an announcement.
    """
    token = os.environ.pop(ANNOUNCE_TOKEN_ENV, "")
    sys.stdout.write(f"{token} {json.dumps(info)}\n" if token else json.dumps(info) + "\n")
    sys.stdout.flush()
