"""Errors the scheduler reports for tasks it gave up on, and its own bugs.

They are defined with the rest of the tree in :mod:`shoal._exceptions`.
"""

from __future__ import annotations

from .._exceptions import InvalidTransition, KilledWorkerError, LostDataError

__all__ = ["InvalidTransition", "KilledWorkerError", "LostDataError"]
