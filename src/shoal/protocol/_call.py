"""Calling a user's function that came over the wire (``Client.run``,
``Client.run_on_scheduler``), giving it what it asks for by keyword.

As in dask, a function with a ``dask_worker`` (or ``dask_scheduler``)
parameter receives the process's worker (or scheduler) object there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def call_injecting(func: Callable[..., Any], args: tuple, kwargs: dict[str, Any],
                   **available: Any) -> Any:
    """``func(*args, **kwargs)``, plus those of ``available`` that ``func`` names."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):  # a builtin without a signature asks for nothing
        params = {}  # type: ignore[assignment]
    extra = {k: v for k, v in available.items() if k in params and k not in kwargs}
    return func(*args, **kwargs, **extra)


def raised(exc: BaseException) -> dict[str, Any]:
    """The answer to a request whose user code raised ``exc``: it, pickled, for
    the caller to raise as itself (a stand-in if it cannot be pickled)."""
    from ._serialize import SerializationError, serialize

    exc.__traceback__ = None
    try:
        ser = serialize(exc)
    except SerializationError:
        ser = serialize(RuntimeError(f"{type(exc).__name__}: {exc}"))
    return {"status": "ok", "exception": ser, "text": f"{type(exc).__name__}: {exc}"}
