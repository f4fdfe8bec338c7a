"""Every error shoal raises, in one tree under :class:`ShoalError`.

Catch ``ShoalError`` for any failure shoal reports (misuse of the API raises
the usual ``TypeError``/``ValueError``).  Where users already
catch a built-in error, the class mixes it in too (a timeout is also a
``TimeoutError``, a lost connection also a ``ConnectionError``), so code
written for those keeps working.  The classes stay importable where they
were first defined (``shoal.comm.CommClosedError``, ...) and are exported
from ``shoal``::

    ShoalError
    ├── ShoalTimeoutError               (TimeoutError)  an operation's timeout passed;
    │                                   exported as ``shoal.TimeoutError`` too (dask's name)
    ├── CommClosedError                 (ConnectionError)  a connection closed or broke
    │   └── TLSError                    the TLS handshake failed: no certificate, one from
    │                                   another CA, an expired one, or a peer not speaking TLS
    ├── EncryptionRequiredError         (ValueError)  a tcp:// address where
    │                                   ``require_encryption`` asks for tls://
    ├── VersionMismatchError            (ConnectionError)  the peer speaks another protocol
    ├── SchedulerRefusedError           (ConnectionError)  the scheduler said no to this client
    ├── SchedulerLostError              (ConnectionError)  gone, and no reconnection in time
    ├── ProtocolError                   (ValueError)  bytes or messages that do not decode
    │   ├── FramingError
    │   └── MessageError
    ├── SerializationError              (TypeError)  a value that cannot be (un)pickled
    ├── RemoteError                     (RuntimeError)  a peer answered a request with an error
    ├── DataUnavailableError            (RuntimeError)  results no worker could hand over
    ├── ActorLostError                  (RuntimeError)  the worker holding an actor is gone
    ├── TaskError                       (RuntimeError)  a task failed
    │   ├── TaskFailed                  its own exception could not be sent back
    │   ├── KilledWorkerError           it was running on too many workers that died;
    │   │                               ``shoal.KilledWorker`` too (dask's name)
    │   └── LostDataError               scattered data lost with its worker
    ├── WorkerMemoryError               (MemoryError)  a result fits neither in memory nor on disk
    ├── CancelledError                  (concurrent.futures.CancelledError)
    ├── ClientClosedError               (RuntimeError)  the client is closed
    ├── InvalidTransition               (RuntimeError)  a state machine refused a move (a bug)
    ├── InvalidSpec                     (ValueError)  a ShoalCluster spec that cannot be built
    ├── KubeApiError                    (RuntimeError)  a Kubernetes API request failed
    └── KubeClusterError                (RuntimeError)  a KubeCluster did not come up

A task's *own* exception (``ValueError`` raised by user code) is re-raised
as itself, not wrapped: only failures that shoal causes are in this tree.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any


class ShoalError(Exception):
    """The root of every error shoal raises."""


class ShoalTimeoutError(ShoalError, TimeoutError):
    """An operation did not finish within its timeout (the message names it)."""


#: dask.distributed exports ``TimeoutError``; shoal's is this one (also a built-in
#: ``TimeoutError``, so ``except TimeoutError`` catches it either way).
TimeoutError = ShoalTimeoutError


class CommClosedError(ShoalError, ConnectionError):
    """The connection is closed, or broke while in use."""


class TLSError(CommClosedError):
    """The TLS handshake with a peer failed; the message says why (a missing,
    untrusted or expired certificate, or a peer that does not speak TLS)."""


class EncryptionRequiredError(ShoalError, ValueError):
    """An unencrypted address where the ``Security`` has ``require_encryption``."""


class VersionMismatchError(ShoalError, ConnectionError):
    """The peer speaks a different protocol version."""


class SchedulerRefusedError(ShoalError, ConnectionError):
    """The scheduler refused to register this client."""


class SchedulerLostError(ShoalError, ConnectionError):
    """The scheduler went away and the client could not reconnect in time."""


class ProtocolError(ShoalError, ValueError):
    """Bytes from a peer that are not a valid frame or message."""


class FramingError(ProtocolError):
    """Bytes that are not a valid frame."""


class MessageError(ProtocolError):
    """Frames that do not decode into a message."""


class SerializationError(ShoalError, TypeError):
    """A value that cannot be serialized or deserialized; the message says which."""


class RemoteError(ShoalError, RuntimeError):
    """A request the peer answered with an error."""


class DataUnavailableError(ShoalError, RuntimeError):
    """Finished results that could not be fetched from any worker, after retries."""


class ActorLostError(ShoalError, RuntimeError):
    """A call to an actor whose worker is gone (the object and its state with it)."""


class TaskError(ShoalError, RuntimeError):
    """A task failed with an exception that could not be sent back as itself."""


class TaskFailed(TaskError):
    """Stands in for an exception that could not be pickled itself."""


class KilledWorkerError(TaskError):
    """A task was running on too many workers that died."""

    def __init__(self, key: str, deaths: int, reason: str) -> None:
        super().__init__(
            f"task {key!r} was running on {deaths} workers that died (last: {reason}); "
            "it is probably what kills them, so it was failed instead of retried"
        )
        self.key, self.deaths, self.reason = key, deaths, reason

    def __reduce__(self) -> Any:
        return type(self), (self.key, self.deaths, self.reason)


class LostDataError(TaskError):
    """Scattered data lost with its worker; it cannot be recomputed."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"{key!r} was scattered data held only by workers that are gone; "
            "it has no lineage to recompute it from"
        )
        self.key = key

    def __reduce__(self) -> Any:
        return type(self), (self.key,)


#: dask.distributed's name for the same error.
KilledWorker = KilledWorkerError


class WorkerMemoryError(ShoalError, MemoryError):
    """A task's result fits neither in the worker's memory nor on its disk."""


class CancelledError(ShoalError, concurrent.futures.CancelledError):
    """The future was cancelled (a subclass, so asyncio does not take it for
    the cancellation of the task that awaits it)."""


class ClientClosedError(ShoalError, RuntimeError):
    """The client is closed (or gave up reconnecting): it cannot take new work."""


class InvalidTransition(ShoalError, RuntimeError):
    """A task-state change that is not in a state machine's transition table."""


class InvalidSpec(ShoalError, ValueError):
    """The spec cannot be turned into a cluster; the message says why."""


class KubeApiError(ShoalError, RuntimeError):
    """A request to the Kubernetes API failed; ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API error {status}: {message}")
        self.status, self.message = status, message

    def __reduce__(self) -> Any:
        return type(self), (self.status, self.message)


class KubeClusterError(ShoalError, RuntimeError):
    """The cluster could not be created or did not become ready."""


__all__ = [
    "CancelledError",
    "ClientClosedError",
    "CommClosedError",
    "DataUnavailableError",
    "EncryptionRequiredError",
    "FramingError",
    "InvalidSpec",
    "InvalidTransition",
    "KilledWorker",
    "KilledWorkerError",
    "KubeApiError",
    "KubeClusterError",
    "LostDataError",
    "MessageError",
    "ProtocolError",
    "RemoteError",
    "SchedulerLostError",
    "SchedulerRefusedError",
    "SerializationError",
    "ShoalError",
    "ShoalTimeoutError",
    "TLSError",
    "TaskError",
    "TaskFailed",
    "TimeoutError",
    "VersionMismatchError",
    "WorkerMemoryError",
]
