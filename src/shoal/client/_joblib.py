"""A joblib backend: ``with joblib.parallel_backend("shoal"): Parallel(...)(...)``.

scikit-learn style ``Parallel`` work runs on the cluster of the default
client (or the ``client=`` given to ``parallel_backend``).  joblib batches
calls itself (``AutoBatchingMixin``); each batch is one task.  The backend
is registered with joblib when a Client starts, if joblib is installed: it
is not a dependency.  It is not registered as ``"dask"``: that name belongs
to joblib's own backend for dask.distributed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import concurrent.futures

    from ._client import Client

BACKEND_NAME = "shoal"
_registered: list[bool] = []


def register_if_available() -> None:
    """Register the ``"shoal"`` joblib backend once per process (if joblib is installed)."""
    if _registered or importlib.util.find_spec("joblib") is None:
        return
    import joblib

    joblib.register_parallel_backend(BACKEND_NAME, _backend_class())
    _registered.append(True)


def _backend_class() -> type:
    from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

    class ShoalBackend(AutoBatchingMixin, ParallelBackendBase):
        """Runs joblib's batches as tasks on a shoal cluster."""

        supports_retrieve_callback = True
        default_n_jobs = 1

        def __init__(self, client: Client | None = None, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._client = client
            self._pending: set[concurrent.futures.Future] = set()

        @property
        def client(self) -> Client:
            from ._client import default_client

            return self._client or default_client()

        def effective_n_jobs(self, n_jobs: int | None) -> int:
            threads = sum(self.client.nthreads().values())
            return max(threads, 1) if n_jobs in (None, -1) else max(min(n_jobs, threads), 1)

        def configure(self, n_jobs: int = 1, parallel: Any = None, **_: Any) -> int:
            self.parallel = parallel
            self._executor = self.client.get_executor()
            return self.effective_n_jobs(n_jobs)

        def submit(self, func: Callable[[], Any],
                   callback: Callable[[Any], Any] | None = None) -> concurrent.futures.Future:
            future = self._executor.submit(func)
            self._pending.add(future)
            future.add_done_callback(self._pending.discard)
            if callback is not None:
                future.add_done_callback(callback)
            return future

        def retrieve_result_callback(self, out: concurrent.futures.Future) -> Any:
            return out.result()

        def abort_everything(self, ensure_ready: bool = True) -> None:
            for future in list(self._pending):
                future.cancel()

    return ShoalBackend
