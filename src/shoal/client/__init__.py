"""The client side: ``Client``, ``Future``, ``wait``, ``as_completed``."""

from ._client import Client, default_client
from ._future import Future, TaskError
from ._wait import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, as_completed, wait

__all__ = ["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "Client", "Future",
           "TaskError", "as_completed", "default_client", "wait"]
