"""The worker: a pure state machine (``WorkerState``), its server, and its nanny."""

from ._server import Worker, get_worker
from ._state import WorkerState

__all__ = ["Worker", "WorkerState", "get_worker"]
