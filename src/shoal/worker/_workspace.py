"""One local directory per worker, gone when the worker is, however it ends.

A worker writes its spill files under a directory of its own.  They can be
large (everything that did not fit in memory), so none may outlive their
worker, or a small disk fills up and starves every later worker:

* a worker removes its directory when it closes, and at interpreter exit;
* a nanny makes the directory of each child it starts (passing it on in
  :data:`WORKER_DIRECTORY_ENV`) and removes it once the child has exited,
  SIGKILLed or not, before it starts another;
* what neither could clean (a nanny killed with SIGKILL, a worker without a
  nanny killed) is found by the next one that starts under the same parent:
  each directory ``worker-XXXX`` has a lock file ``worker-XXXX.dirlock`` next
  to it, held (``flock``) by the process that made it for as long as it
  lives, and a directory whose lock nobody holds is stale and purged.  The
  lock is released by the kernel when its holder dies, which is what makes
  this safe for directories of live workers, as dask's worker space does.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

__all__ = ["SPACE_NAME", "WORKER_DIRECTORY_ENV", "WorkerDirectory", "purge_stale"]

logger = logging.getLogger(__name__)

#: The directory, under a worker's local directory, that holds the workers'.
SPACE_NAME = "shoal-worker-space"

#: How a nanny tells its child which directory to use (the nanny owns it).
WORKER_DIRECTORY_ENV = "SHOAL_WORKER_DIRECTORY"

_LOCK_SUFFIX = ".dirlock"


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive lock on ``path`` (created if needed), or None if held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _remove(directory: Path, lock: Path, fd: int | None) -> None:
    """Remove a worker directory, then its lock file, then let go of the lock."""
    shutil.rmtree(directory, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        lock.unlink()
    if fd is not None:
        os.close(fd)


def purge_stale(space: Path) -> list[Path]:
    """Remove the worker directories under ``space`` whose owner is gone; return them."""
    purged: list[Path] = []
    try:
        locks = sorted(space.glob(f"worker-*{_LOCK_SUFFIX}"))
    except OSError:
        return purged
    for lock in locks:
        directory = lock.with_name(lock.name[: -len(_LOCK_SUFFIX)])
        try:
            fd = _try_lock(lock)
        except OSError:  # removed meanwhile by another purger, or not ours to touch
            continue
        if fd is None:
            continue  # its worker is alive
        logger.info("removing %s, left behind by a worker that is gone", directory)
        _remove(directory, lock, fd)
        purged.append(directory)
    return purged


class WorkerDirectory:
    """A fresh ``worker-XXXX`` directory under ``<parent>/shoal-worker-space``.

    Stale directories there are purged first.  The directory is locked until
    :meth:`remove` (also called when this object is collected and at
    interpreter exit).
    """

    def __init__(self, parent: str | os.PathLike[str] | None = None) -> None:
        self.space = Path(parent if parent is not None else tempfile.gettempdir()) / SPACE_NAME
        self.space.mkdir(parents=True, exist_ok=True)
        purge_stale(self.space)
        while True:
            name = f"worker-{os.urandom(4).hex()}"
            lock = self.space / f"{name}{_LOCK_SUFFIX}"
            fd = _try_lock(lock)
            if fd is None:
                continue  # someone else's name; draw another
            path = self.space / name
            try:
                path.mkdir()
            except FileExistsError:  # a stale one without its lock file: not ours
                os.close(fd)
                continue
            except OSError:
                _remove(path, lock, fd)
                raise
            break
        self.path = path
        self._finalizer = weakref.finalize(self, _remove, path, lock, fd)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"<WorkerDirectory {self.path}>"

    @property
    def removed(self) -> bool:
        return not self._finalizer.alive

    def remove(self) -> None:
        """Delete the directory and everything in it, and release its lock."""
        self._finalizer()
