"""shoal: parallel computing for Python, on a laptop or on Kubernetes.

>>> from shoal import Client, LocalCluster
>>> with LocalCluster(n_workers=2) as cluster, Client(cluster) as client:
...     client.submit(sum, [1, 2, 3]).result()
6
"""

from ._exceptions import (
    CancelledError,
    ClientClosedError,
    CommClosedError,
    DataUnavailableError,
    FramingError,
    InvalidSpec,
    InvalidTransition,
    KilledWorkerError,
    KubeApiError,
    KubeClusterError,
    LostDataError,
    MessageError,
    ProtocolError,
    RemoteError,
    SchedulerLostError,
    SchedulerRefusedError,
    SerializationError,
    ShoalError,
    ShoalTimeoutError,
    TaskError,
    TaskFailed,
    VersionMismatchError,
)
from .client import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    Client,
    Future,
    as_completed,
    default_client,
    wait,
)
from .client._progress import progress
from .cluster import LocalCluster

__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "CancelledError",
    "Client",
    "ClientClosedError",
    "CommClosedError",
    "DataUnavailableError",
    "FramingError",
    "Future",
    "InvalidSpec",
    "InvalidTransition",
    "KilledWorkerError",
    "KubeApiError",
    "KubeClusterError",
    "LocalCluster",
    "LostDataError",
    "MessageError",
    "ProtocolError",
    "RemoteError",
    "SchedulerLostError",
    "SchedulerRefusedError",
    "SerializationError",
    "ShoalError",
    "ShoalTimeoutError",
    "TaskError",
    "TaskFailed",
    "VersionMismatchError",
    "as_completed",
    "default_client",
    "progress",
    "wait",
]
