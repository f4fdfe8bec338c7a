"""Worker directories: locked while their worker lives, purged once it is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from shoal.worker._workspace import SPACE_NAME, WorkerDirectory, purge_stale

# Makes a worker directory with a spill file in it, says where, and waits.
OWNER = """
import sys
from shoal.worker._workspace import WorkerDirectory
d = WorkerDirectory(sys.argv[1])
(d.path / "0.spill").write_bytes(b"x" * 1000)
print(d.path, flush=True)
sys.stdin.read()
"""


def start_owner(parent: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen([sys.executable, "-c", OWNER, str(parent)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_directory_is_fresh_and_removed_with_its_contents(tmp_path: Path) -> None:
    d = WorkerDirectory(tmp_path)
    assert d.path.parent == tmp_path / SPACE_NAME and list(d.path.iterdir()) == []
    (d.path / "spill").mkdir()
    (d.path / "spill" / "0.spill").write_bytes(b"x")
    other = WorkerDirectory(tmp_path)
    assert other.path != d.path and d.path.exists()  # a live one is never purged
    d.remove()
    assert not d.path.exists() and d.removed
    assert sorted(p.name for p in (tmp_path / SPACE_NAME).iterdir()) == [
        other.path.name, f"{other.path.name}.dirlock"]
    other.remove()
    d.remove()  # twice is fine


def test_the_directory_of_a_killed_process_is_purged_by_the_next(tmp_path: Path) -> None:
    alive, alive_dir = start_owner(tmp_path)
    killed, killed_dir = start_owner(tmp_path)
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(30)
        assert (killed_dir / "0.spill").exists()  # SIGKILL: nobody could clean up
        d = WorkerDirectory(tmp_path)
        assert not killed_dir.exists()
        assert not Path(f"{killed_dir}.dirlock").exists()
        assert (alive_dir / "0.spill").exists()  # its owner holds the lock
        assert purge_stale(tmp_path / SPACE_NAME) == []
        d.remove()
    finally:
        alive.stdin.close()  # type: ignore[union-attr]
        alive.wait(30)
        killed.stdin.close()  # type: ignore[union-attr]
        for proc in (alive, killed):
            proc.stdout.close()  # type: ignore[union-attr]
    assert not alive_dir.exists()  # removed at interpreter exit
