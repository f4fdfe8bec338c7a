"""shoal: parallel computing for Python, on a laptop or on Kubernetes.

>>> from shoal import Client, LocalCluster
>>> with LocalCluster(n_workers=2) as cluster, Client(cluster) as client:
...     client.submit(sum, [1, 2, 3]).result()
6

The names of ``distributed.__all__`` that shoal implements are importable
from here under the same names; docs/coming-from-dask.md lists the others.
"""

from ._exceptions import (
    ActorLostError,
    CancelledError,
    ClientClosedError,
    CommClosedError,
    DataUnavailableError,
    EncryptionRequiredError,
    FramingError,
    InvalidSpec,
    InvalidTransition,
    KilledWorker,
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
    TimeoutError,
    TLSError,
    VersionMismatchError,
    WorkerMemoryError,
)
from ._plugins import (
    Environ,
    InstallPlugin,
    NannyPlugin,
    PipInstall,
    SchedulerPlugin,
    UploadDirectory,
    UploadFile,
    WorkerPlugin,
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
from .client._actor import Actor, ActorFuture, BaseActorFuture
from .client._coordination import Event, Lock, MultiLock, Semaphore
from .client._dask import futures_of
from .client._diagnostics import get_task_stream, performance_report
from .client._fire_and_forget import fire_and_forget
from .client._integrations import CompatibleExecutor
from .client._progress import progress
from .client._shared import Queue, Variable
from .client._worker_client import get_client, worker_client
from .cluster import LocalCluster
from .cluster._adapt import Adaptive
from .comm import Security
from .scheduler import Scheduler
from .worker import Worker, get_worker
from .worker._context import rejoin, secede
from .worker._output import print, warn  # dask.distributed's names: shadow the built-ins

#: dask.distributed's name for the same thing.
local_client = worker_client

__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Actor",
    "ActorFuture",
    "ActorLostError",
    "Adaptive",
    "BaseActorFuture",
    "CancelledError",
    "Client",
    "ClientClosedError",
    "CommClosedError",
    "CompatibleExecutor",
    "DataUnavailableError",
    "EncryptionRequiredError",
    "Environ",
    "Event",
    "FramingError",
    "Future",
    "InstallPlugin",
    "InvalidSpec",
    "InvalidTransition",
    "KilledWorker",
    "KilledWorkerError",
    "KubeApiError",
    "KubeClusterError",
    "LocalCluster",
    "Lock",
    "LostDataError",
    "MessageError",
    "MultiLock",
    "NannyPlugin",
    "PipInstall",
    "ProtocolError",
    "Queue",
    "RemoteError",
    "Scheduler",
    "SchedulerLostError",
    "SchedulerPlugin",
    "SchedulerRefusedError",
    "Security",
    "Semaphore",
    "SerializationError",
    "ShoalError",
    "ShoalTimeoutError",
    "TLSError",
    "TaskError",
    "TaskFailed",
    "TimeoutError",
    "UploadDirectory",
    "UploadFile",
    "Variable",
    "VersionMismatchError",
    "Worker",
    "WorkerMemoryError",
    "WorkerPlugin",
    "as_completed",
    "default_client",
    "fire_and_forget",
    "futures_of",
    "get_client",
    "get_task_stream",
    "get_worker",
    "local_client",
    "performance_report",
    "print",
    "progress",
    "rejoin",
    "secede",
    "wait",
    "warn",
    "worker_client",
]
