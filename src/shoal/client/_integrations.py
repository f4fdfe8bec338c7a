"""Using a Client where Python expects an executor.

``client.get_executor()`` is a ``concurrent.futures.Executor``, for code
written against the standard library.  (dask graphs and collections are in
:mod:`._dask`.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from ._client import Client
    from ._future import Future


class ClientExecutor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` that runs on a shoal cluster.

    Its futures stay pending until the result is back, so ``cancel()`` works
    until then (and cancels the task on the cluster), as does
    ``shutdown(cancel_futures=True)``.
    """

    def __init__(self, client: Client, **submit_kwargs: Any) -> None:
        self.client = client
        self.submit_kwargs = submit_kwargs
        self._futures: set[concurrent.futures.Future] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to an executor that was shut down")
            shoal_future = self.client.submit(fn, *args, pure=False, **self.submit_kwargs,
                                              **kwargs)
            cf: concurrent.futures.Future = concurrent.futures.Future()
            self._futures.add(cf)

        def copy(done: Future) -> None:
            if done.status == "finished":
                self._resolve(done, cf)
            else:
                self._settle(cf, exception=done._state.make_exception())

        def on_cf_done(done: concurrent.futures.Future) -> None:
            # ``done``, not ``cf``: the callback stays on cf, and must not make a cycle
            with self._lock:
                self._futures.discard(done)
            if done.cancelled():
                shoal_future.cancel()

        cf.add_done_callback(on_cf_done)
        shoal_future.add_done_callback(copy)
        return cf

    @staticmethod
    def _settle(cf: concurrent.futures.Future, result: Any = None,
                exception: BaseException | None = None) -> None:
        """Finish ``cf`` unless it was cancelled meanwhile."""
        if not cf.set_running_or_notify_cancel():
            return
        if exception is not None:
            cf.set_exception(exception)
        else:
            cf.set_result(result)

    def _resolve(self, done: Future, cf: concurrent.futures.Future) -> None:
        """On the client's loop (where done-callbacks run): fetch, then hand over."""
        task = asyncio.ensure_future(self.client._result(done, None))

        def hand_over(t: asyncio.Future) -> None:
            if t.cancelled():
                cf.cancel()
            elif t.exception() is not None:
                self._settle(cf, exception=t.exception())
            else:
                self._settle(cf, t.result())

        task.add_done_callback(hand_over)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            for cf in pending:
                cf.cancel()
        if wait:
            concurrent.futures.wait(pending)


def CompatibleExecutor(*args: Any, **kwargs: Any) -> NoReturn:  # capitalised: dask's name
    """dask.distributed's old name: like there, it only says where the executor is now."""
    raise RuntimeError("CompatibleExecutor has moved to the Client.get_executor() method")
