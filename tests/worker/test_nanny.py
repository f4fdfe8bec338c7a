"""The nanny with real child processes: restarts, memory limit, clean stops."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from shoal.worker._nanny import NANNY_PID_ENV, Nanny, worker_command

from ..polling import async_wait_for, wait_for

SRC = str(Path(__file__).resolve().parents[2] / "src")

#: A stand-in for the worker: records each start, then behaves as told.
CHILD = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    state, mode = sys.argv[1], sys.argv[2]
    with open(os.path.join(state, "runs"), "a") as f:
        f.write(f"{os.getpid()} {time.monotonic()}\\n")
    runs = len(open(os.path.join(state, "runs")).read().splitlines())
    if mode == "crash":
        sys.exit(3)
    if mode == "exit0":
        sys.exit(0)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "alloc-once" and runs == 1:
        blob = b"x" * (int(sys.argv[3]) * 2**20)
    if mode == "grandchild":
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(os.path.join(state, "grandchild"), "w") as f:
            f.write(str(sleeper.pid))
    if mode == "spill":  # writes into the directory its nanny gave it, and says which
        directory = os.environ["SHOAL_WORKER_DIRECTORY"]
        open(os.path.join(directory, "0.spill"), "wb").write(b"x" * 1000)
        open(os.path.join(state, f"dir-{os.getpid()}"), "w").write(directory)
    if mode == "watch-parent":
        sys.path.insert(0, sys.argv[3])
        from shoal.worker._nanny import watch_parent_from_env
        assert watch_parent_from_env(interval=0.05)
    open(os.path.join(state, f"ready-{os.getpid()}"), "w").close()
    while True:
        signal.pause()
    """
)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    wait_for(predicate, timeout, str(predicate), interval=0.02)


async def async_wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    await async_wait_for(predicate, timeout, str(predicate))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Child:
    """The state directory and command line of a test child."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.script = directory / "child.py"
        self.script.write_text(CHILD)

    def argv(self, mode: str, *extra: str) -> list[str]:
        return [sys.executable, str(self.script), str(self.dir), mode, *extra]

    def runs(self) -> list[int]:
        path = self.dir / "runs"
        return (
            [int(line.split()[0]) for line in path.read_text().splitlines()]
            if path.exists()
            else []
        )

    def start_times(self) -> list[float]:
        return [float(line.split()[1]) for line in (self.dir / "runs").read_text().splitlines()]

    def ready(self, pid: int | None) -> bool:
        return pid is not None and (self.dir / f"ready-{pid}").exists()

    def kill_leftovers(self) -> None:
        pids = self.runs()
        if (self.dir / "grandchild").exists():
            pids.append(int((self.dir / "grandchild").read_text()))
        for pid in pids:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Child]:
    c = Child(tmp_path)
    yield c
    c.kill_leftovers()


def run(coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 30))


def test_restarts_a_child_killed_with_sigkill(child: Child) -> None:
    async def main() -> None:
        nanny = Nanny(child.argv("sleep"), backoff=0.01)
        await nanny.start()
        try:
            first = nanny.pid
            await async_wait_until(lambda: child.ready(first))
            assert first is not None
            os.kill(first, signal.SIGKILL)
            await async_wait_until(
                lambda: nanny.pid not in (None, first) and child.ready(nanny.pid)
            )
            assert nanny.restarts == 1 and nanny.memory_kills == 0
            assert nanny.last_returncode == -signal.SIGKILL
            assert gone(first)
        finally:
            assert await nanny.close(timeout=5) == 0
        assert child.runs() and all(gone(pid) for pid in child.runs())
        assert nanny.pid is None

    run(main)


def test_each_child_gets_a_directory_removed_when_it_dies(child: Child, tmp_path: Path) -> None:
    """Spill files go with their worker, SIGKILLed or stopped, never left on disk."""
    local = tmp_path / "local"

    def directory(pid: int | None) -> Path:
        return Path((child.dir / f"dir-{pid}").read_text())

    async def main() -> None:
        nanny = Nanny(child.argv("spill"), backoff=0.01, local_directory=str(local))
        await nanny.start()
        try:
            first = nanny.pid
            await async_wait_until(lambda: child.ready(first))
            first_dir = directory(first)
            assert (first_dir / "0.spill").exists()
            assert first is not None
            os.kill(first, signal.SIGKILL)
            await async_wait_until(
                lambda: nanny.pid not in (None, first) and child.ready(nanny.pid)
            )
            assert not first_dir.exists()
            second_dir = directory(nanny.pid)
            assert second_dir != first_dir and (second_dir / "0.spill").exists()
        finally:
            assert await nanny.close(timeout=5) == 0
        assert not second_dir.exists()
        assert list((local / "shoal-worker-space").iterdir()) == []

    run(main)


def test_restarts_a_child_over_its_memory_limit(child: Child) -> None:
    async def main() -> None:
        # the first run allocates 200 MiB > 0.9 * 150 MiB; the second stays small
        nanny = Nanny(
            child.argv("alloc-once", "200"),
            memory_limit=150 * 2**20,
            terminate_fraction=0.9,
            poll_interval=0.05,
            backoff=0.01,
        )
        await nanny.start()
        try:
            await async_wait_until(lambda: len(child.runs()) == 2 and child.ready(nanny.pid))
            assert nanny.memory_kills == 1 and nanny.restarts == 1
            assert nanny.last_returncode == -signal.SIGKILL
            assert gone(child.runs()[0])
            assert nanny.memory_threshold == int(0.9 * 150 * 2**20)
        finally:
            await nanny.close(timeout=5)

    run(main)


def test_close_stops_the_child_and_its_children_without_restart(child: Child) -> None:
    async def main() -> None:
        nanny = Nanny(child.argv("grandchild"), backoff=0.01)
        await nanny.start()
        await async_wait_until(lambda: child.ready(nanny.pid))
        grandchild = int((child.dir / "grandchild").read_text())
        assert not gone(grandchild)
        assert await nanny.close(timeout=5) == 0
        assert await nanny.finished() == 0
        assert nanny.restarts == 0
        assert gone(child.runs()[0])
        await async_wait_until(lambda: gone(grandchild), timeout=5)
        assert len(child.runs()) == 1

    run(main)


def test_close_kills_a_child_that_ignores_sigterm(child: Child) -> None:
    async def main() -> None:
        nanny = Nanny(child.argv("ignore-term"))
        await nanny.start()
        await async_wait_until(lambda: child.ready(nanny.pid))
        started = time.monotonic()
        await nanny.close(timeout=0.3)
        assert time.monotonic() - started < 5
        assert nanny.last_returncode == -signal.SIGKILL
        assert all(gone(pid) for pid in child.runs()) and len(child.runs()) == 1

    run(main)


def test_a_clean_exit_stops_the_nanny(child: Child) -> None:
    async def main() -> None:
        nanny = Nanny(child.argv("exit0"), backoff=0.01)
        await nanny.start()
        assert await asyncio.wait_for(nanny.finished(), 10) == 0
        assert nanny.restarts == 0 and nanny.last_returncode == 0
        assert len(child.runs()) == 1

    run(main)


def test_gives_up_after_max_restarts_with_growing_backoff(child: Child) -> None:
    async def main() -> None:
        nanny = Nanny(child.argv("crash"), max_restarts=3, backoff=0.05, max_backoff=0.1)
        await nanny.start()
        assert await asyncio.wait_for(nanny.finished(), 10) == 3
        assert nanny.restarts == 3
        assert len(child.runs()) == 4
        gaps = [b - a for a, b in zip(child.start_times(), child.start_times()[1:], strict=False)]
        assert [gap >= delay for gap, delay in zip(gaps, [0.05, 0.1, 0.1], strict=True)] == [
            True
        ] * 3
        await nanny.close()  # closing a finished nanny is harmless

    run(main)


def test_child_learns_the_nanny_pid(child: Child) -> None:
    async def main() -> None:
        nanny = Nanny(
            [
                sys.executable,
                "-c",
                f"import os; open({str(child.dir / 'pid')!r}, 'w').write(os.environ[{NANNY_PID_ENV!r}])",
            ]
        )
        await nanny.start()
        assert await asyncio.wait_for(nanny.finished(), 10) == 0
        assert (child.dir / "pid").read_text() == str(os.getpid())

    run(main)


def test_bad_command_lines_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="command line"):
        Nanny([])
    with pytest.raises(ValueError, match="terminate_fraction"):
        Nanny(["true"], terminate_fraction=1.5)

    async def main() -> None:
        nanny = Nanny([str(tmp_path / "no-such-program")])
        with pytest.raises(FileNotFoundError):
            await nanny.start()
        with pytest.raises(RuntimeError, match="not started"):
            await nanny.finished()
        closed = Nanny(["true"])
        assert await closed.close() == 0
        with pytest.raises(RuntimeError, match="closed"):
            await closed.start()

    run(main)


def start_nanny_process(child: Child, mode: str) -> subprocess.Popen[bytes]:
    """A real `nanny.run()` in its own process, as the CLI runs it."""
    code = f"import sys; from shoal.worker._nanny import Nanny; sys.exit(Nanny({child.argv(mode)!r}).run(2))"
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def test_sigterm_to_the_nanny_stops_the_child_and_the_nanny(child: Child) -> None:
    nanny = start_nanny_process(child, "sleep")
    try:
        wait_until(lambda: bool(child.runs()) and child.ready(child.runs()[0]))
        nanny.send_signal(signal.SIGTERM)
        assert nanny.wait(timeout=10) == 0
        assert len(child.runs()) == 1
        wait_until(lambda: gone(child.runs()[0]), timeout=5)
    finally:
        nanny.kill()
        nanny.wait(timeout=10)


def test_sigint_is_forwarded_to_the_child(child: Child) -> None:
    nanny = start_nanny_process(child, "sleep")
    try:
        wait_until(lambda: bool(child.runs()) and child.ready(child.runs()[0]))
        nanny.send_signal(signal.SIGINT)
        assert nanny.wait(timeout=10) == 0
        assert len(child.runs()) == 1 and gone(child.runs()[0])
    finally:
        nanny.kill()
        nanny.wait(timeout=10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_a_nanny_killed_with_sigkill_takes_its_child_along(child: Child) -> None:
    nanny = start_nanny_process(child, "sleep")
    try:
        wait_until(lambda: bool(child.runs()) and child.ready(child.runs()[0]))
        nanny.kill()
        nanny.wait(timeout=10)
        wait_until(lambda: gone(child.runs()[0]), timeout=5)
    finally:
        nanny.kill()
        nanny.wait(timeout=10)


def test_children_poll_their_parent_where_prctl_is_missing(child: Child) -> None:
    # a parent that starts the child without prctl, then is killed
    code = textwrap.dedent(
        f"""
        import os, subprocess, signal
        env = {{**os.environ, {NANNY_PID_ENV!r}: str(os.getpid())}}
        subprocess.Popen({child.argv("watch-parent", SRC)!r}, env=env)
        signal.pause()
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_until(lambda: bool(child.runs()) and child.ready(child.runs()[0]))
        parent.kill()
        parent.wait(timeout=10)
        wait_until(lambda: gone(child.runs()[0]), timeout=5)
    finally:
        parent.kill()
        parent.wait(timeout=10)


def test_worker_command_runs_the_shoal_command_line() -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run(
        worker_command(["worker", "--help"]), env=env, capture_output=True, timeout=30, check=True
    )
    assert b"usage: shoal worker" in out.stdout


def live_children(other_than: set[int]) -> list[psutil.Process]:
    """This process's live descendants, less ``other_than`` (those of other
    fixtures, such as the real-cluster tier's processes, which live all session)."""
    return [p for p in psutil.Process().children(recursive=True)
            if p.pid not in other_than and not gone(p.pid)]


def test_close_while_starting_leaves_no_process(child: Child) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}

    async def main() -> None:
        nanny = Nanny(child.argv("ignore-term"))
        starting = asyncio.create_task(nanny.start())
        await asyncio.sleep(0)  # start() runs up to its first await: the spawn
        assert await nanny.close(timeout=0.5) == 0
        await starting
        assert await nanny.finished() == 0
        assert nanny.pid is None and nanny.restarts == 0
        await async_wait_until(lambda: not live_children(before), timeout=5)

    run(main)
