"""The scheduler: a pure state machine (``SchedulerState``) and its server."""

from ._server import Scheduler
from ._state import LEGAL_TRANSITIONS, KilledWorkerError, LostDataError, SchedulerState

__all__ = ["LEGAL_TRANSITIONS", "KilledWorkerError", "LostDataError", "Scheduler",
           "SchedulerState"]
