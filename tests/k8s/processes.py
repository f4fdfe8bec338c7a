"""The long-running processes of the test cluster, each with its own log.

Every component runs in a process group of its own (so that stopping it also
stops whatever it forked), writes to ``<log_dir>/<name>.log``, and is stopped
in the reverse order of starting with bounded waits: SIGTERM, then SIGKILL.
A process that dies early is reported with the tail of its log, which is
usually the only useful clue.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.polling import wait_for

STOP_TIMEOUT = 15.0
"""Seconds a component gets to exit after SIGTERM before SIGKILL."""


class ComponentFailed(RuntimeError):
    """A component of the test cluster exited or never became ready."""


@dataclass
class Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ComponentFailed(
                f"{self.name} exited with {code}; last lines of {self.log_path}:\n"
                f"{self.log_tail()}")


class Supervisor:
    """Starts components and stops all of them, newest first."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.components: list[Component] = []

    def start(self, name: str, argv: list[str], *, netns: str | None = None,
              env: dict[str, str] | None = None) -> Component:
        """Run ``argv`` (in network namespace ``netns`` if given) in a new session."""
        if netns is not None:
            # nsenter changes only the network namespace; `ip netns exec` would
            # also remount /sys and hide the cgroup hierarchy from the kubelet.
            argv = ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       env={**os.environ, **(env or {})})
        component = Component(name, process, log_path)
        self.components.append(component)
        return component

    def check_alive(self) -> None:
        for component in self.components:
            component.check_alive()

    def stop(self, name: str) -> None:
        for component in [c for c in self.components if c.name == name]:
            _stop_group(component.process)
            self.components.remove(component)

    def stop_all(self) -> None:
        while self.components:
            component = self.components.pop()
            _stop_group(component.process)


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process group, wait (bounded), SIGKILL what is left, reap."""
    pgid = process.pid  # start_new_session=True: the leader's pid is the group id
    if process.poll() is None or _group_alive(pgid):
        _signal_group(pgid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(pgid, signal.SIGKILL)
        process.wait(timeout=timeout)
    # Children that left the group's leader behind (already SIGKILLed above).
    wait_for(lambda: not _group_alive(pgid), timeout=timeout,
             what=f"process group {pgid} to exit")
