"""Child processes that announce themselves and never outlive their parent.

A shoal process started with ``--announce`` prints one JSON line on stdout
once it is serving (its address, pid, ...).  The parent reads that line with
a timeout, then keeps draining the pipe in a thread so later lines (a
restarted worker announces again) never block the child.  On Linux each child
asks the kernel to kill it when its parent dies (``PR_SET_PDEATHSIG``), so a
parent killed with SIGKILL leaves no strays; otherwise the child's own parent
watch (see the nanny) is the fallback.
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any

PR_SET_PDEATHSIG = 1


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
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only a prctl call, async-signal-safe
        )
        self.announcements: list[dict[str, Any]] = []
        self._first = threading.Event()
        self._drainer: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_announced(self, timeout: float) -> dict[str, Any]:
        """The first announcement; raises if the child dies or stays silent."""
        stdout = self.proc.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        line = _readline(stdout, deadline)
        if not line:
            try:
                code = self.proc.wait(0.5)
            except subprocess.TimeoutExpired:
                code = None
            self.kill()
            why = f"exited with code {code}" if code is not None else f"was silent for {timeout}s"
            raise RuntimeError(f"`shoal {' '.join(self.args[3:])}` {why} before it was ready")
        info = json.loads(line)
        self.announcements.append(info)
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        return info

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.announcements.append(json.loads(line))
            except ValueError:
                pass

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipe()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self._drainer is None and self.proc.stdout is not None:
            self.proc.stdout.close()


def _readline(stream: IO[bytes], deadline: float) -> bytes:
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    try:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not selector.select(remaining):
            return b""
        return stream.readline()
    finally:
        selector.close()


def announce(**info: Any) -> None:
    """Print the one-line announcement a parent waits for."""
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
