"""Errors the scheduler reports for tasks it gave up on, and its own bugs."""

from __future__ import annotations


class InvalidTransition(RuntimeError):
    """A task-state change that is not in the transition table was attempted."""


class KilledWorkerError(RuntimeError):
    """A task was running on too many workers that died."""

    def __init__(self, key: str, deaths: int, reason: str) -> None:
        super().__init__(
            f"task {key!r} was running on {deaths} workers that died (last: {reason}); "
            "it is probably what kills them, so it was failed instead of retried"
        )
        self.key = key


class LostDataError(RuntimeError):
    """Scattered data lost with its worker; it cannot be recomputed."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"{key!r} was scattered data held only by workers that are gone; "
            "it has no lineage to recompute it from"
        )
        self.key = key
