"""The worker: a pure state machine (``WorkerState``), its server, and its nanny."""

from ._server import Worker
from ._state import WorkerState

__all__ = ["Worker", "WorkerState"]
