"""One exception tree under ShoalError, with the built-in bases users catch."""

from __future__ import annotations

import concurrent.futures
import pickle
import time

import pytest

import shoal
from shoal import ShoalError, ShoalTimeoutError


def test_every_shoal_error_is_exported_and_under_the_root():
    from shoal import _exceptions

    for name in _exceptions.__all__:
        cls = getattr(shoal, name)
        assert cls is getattr(_exceptions, name)
        assert issubclass(cls, ShoalError), name
        assert name in _exceptions.__doc__, f"{name} missing from the drawn tree"


@pytest.mark.parametrize(("where", "name", "builtin"), [
    ("shoal.comm", "CommClosedError", ConnectionError),
    ("shoal.protocol", "VersionMismatchError", ConnectionError),
    ("shoal.protocol", "SerializationError", TypeError),
    ("shoal.protocol", "FramingError", ValueError),
    ("shoal.protocol", "MessageError", ValueError),
    ("shoal.comm", "RemoteError", RuntimeError),
    ("shoal.client", "TaskError", RuntimeError),
    ("shoal.scheduler", "KilledWorkerError", RuntimeError),
    ("shoal.scheduler", "LostDataError", RuntimeError),
    ("shoal.client._future", "CancelledError", concurrent.futures.CancelledError),
    ("shoal.operator.spec", "InvalidSpec", ValueError),
    ("shoal.cluster.kube", "KubeApiError", RuntimeError),
    ("shoal.worker._monitor", "WorkerMemoryError", MemoryError),
])
def test_old_homes_still_work_and_builtins_still_catch(where, name, builtin):
    import importlib

    cls = getattr(importlib.import_module(where), name)
    assert cls is getattr(shoal, name)
    assert issubclass(cls, builtin) and issubclass(cls, ShoalError)


def test_dask_names_are_the_same_classes():
    assert shoal.KilledWorker is shoal.KilledWorkerError
    assert shoal.TimeoutError is ShoalTimeoutError and issubclass(shoal.TimeoutError, TimeoutError)


def test_errors_with_arguments_survive_pickling():
    for error in (shoal.KilledWorkerError("k", 3, "oom"), shoal.LostDataError("k"),
                  shoal.KubeApiError(404, "gone")):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)


def slow(x: float) -> float:
    time.sleep(x)
    return x


def test_a_result_timeout_names_the_timeout(client):
    future = client.submit(slow, 5)
    with pytest.raises(ShoalTimeoutError, match=r"within timeout=0\.2s") as info:
        future.result(timeout=0.2)
    assert isinstance(info.value, TimeoutError)
    assert "None" not in str(info.value)
    client.cancel(future)


def test_wait_timeout_names_the_timeout(client):
    future = client.submit(slow, 5, pure=False)
    with pytest.raises(ShoalTimeoutError, match=r"within timeout=0\.2s"):
        shoal.wait([future], timeout=0.2)
    client.cancel(future)
