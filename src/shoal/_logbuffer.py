"""The recent log lines of this process, kept in memory for whoever asks.

The scheduler and each worker install one buffer on the ``shoal`` logger
when they start, and serve its lines (``get_logs``), so a client can read
the logs of processes it cannot see (``client.get_worker_logs``,
``get_scheduler_logs``, ``cluster.get_logs``), as with dask.  Processes that
share a Python interpreter (``processes=False``) share the buffer.
"""

from __future__ import annotations

import collections
import logging
import threading

#: Lines kept per process.
MAX_LOG_LINES = 10_000

_lock = threading.Lock()
_installed: list[LogBuffer] = []


class LogBuffer(logging.Handler):
    def __init__(self, maxlen: int = MAX_LOG_LINES) -> None:
        super().__init__(logging.DEBUG)
        self.lines: collections.deque[tuple[str, str]] = collections.deque(maxlen=maxlen)
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append((record.levelname, self.format(record)))
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)

    def last(self, n: int | None = None) -> list[tuple[str, str]]:
        lines = list(self.lines)
        return lines if n is None else lines[-n:]


def install() -> LogBuffer:
    """The process's buffer on the ``shoal`` logger (made on first call)."""
    with _lock:
        if not _installed:
            buffer = LogBuffer()
            logging.getLogger("shoal").addHandler(buffer)
            _installed.append(buffer)
        return _installed[0]


def get_logs(n: int | None = None) -> dict[str, object]:
    """The ``get_logs`` request: the newest ``n`` lines (all kept if None)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise TypeError(f"n must be a non-negative integer or None, got {n!r}")
    return {"status": "ok", "logs": install().last(n)}
