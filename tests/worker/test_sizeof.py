"""sizeof: cheap, roughly right, never failing."""

from __future__ import annotations

import sys
import timeit
from typing import Any

import numpy as np
import pytest

from shoal.protocol._serialize import serialize
from shoal.worker._sizeof import register_sizeof, sizeof


def test_bytes_like_are_exact() -> None:
    data = b"x" * 10_000
    assert sizeof(data) == sys.getsizeof(data)
    assert sizeof(bytearray(data)) == sys.getsizeof(bytearray(data))
    assert 10_000 <= sizeof(memoryview(data)) < 10_500
    assert sizeof("y" * 5000) == sys.getsizeof("y" * 5000)


def test_scalars() -> None:
    assert sizeof(1) == sys.getsizeof(1)
    assert sizeof(None) == sys.getsizeof(None)
    assert sizeof(2.5) == sys.getsizeof(2.5)


def test_numpy_arrays_use_nbytes() -> None:
    arr = np.zeros((1000, 100))
    assert arr.nbytes <= sizeof(arr) < arr.nbytes + 1000
    view = arr[::2]
    assert view.nbytes <= sizeof(view) < view.nbytes + 1000
    assert sizeof(np.float64(1.0)) < 100


def test_numpy_object_arrays_count_their_elements() -> None:
    arr = np.array(["z" * 1000 for _ in range(100)], dtype=object)
    assert sizeof(arr) > 100 * 1000


def test_small_containers_are_summed() -> None:
    items = [b"a" * 1000, b"b" * 2000]
    assert sizeof(items) == sys.getsizeof(items) + sum(sys.getsizeof(i) for i in items)
    mapping = {"k": b"v" * 3000}
    assert sizeof(mapping) == (
        sys.getsizeof(mapping) + sys.getsizeof("k") + sys.getsizeof(b"v" * 3000)
    )
    assert sizeof({b"q" * 500}) > 500
    assert sizeof(frozenset()) == sys.getsizeof(frozenset())


@pytest.mark.parametrize("n", [100, 10_000, 1_000_000])
def test_large_lists_are_sampled_and_extrapolated(n: int) -> None:
    items = [b"x" * 100] * n
    exact = sys.getsizeof(items) + n * sys.getsizeof(b"x" * 100)
    assert sizeof(items) == pytest.approx(exact, rel=0.05)


def test_large_dicts_of_arrays() -> None:
    mapping = {i: np.ones(1000) for i in range(1000)}
    assert sizeof(mapping) == pytest.approx(1000 * 8000, rel=0.1)


def test_sampling_keeps_large_containers_cheap() -> None:
    items = list(range(1_000_000))
    seconds = min(timeit.repeat(lambda: sizeof(items), number=10, repeat=3)) / 10
    assert seconds < 0.001  # walking a million items would take ~100 ms


def test_nesting_is_bounded_and_cycles_terminate() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    assert sizeof(cycle) > 0
    deep: Any = b"x" * 10_000
    for _ in range(50):
        deep = [deep]
    assert sizeof(deep) > 0


class Plain:
    def __init__(self) -> None:
        self.payload = b"p" * 50_000


class Slotted:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 1


def test_instances_count_their_attributes() -> None:
    assert sizeof(Plain()) > 50_000
    assert sizeof(Slotted()) == sys.getsizeof(Slotted())


class Broken:
    def __sizeof__(self) -> int:
        raise RuntimeError("no")

    @property
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]
        raise RuntimeError("no either")


def test_broken_objects_get_an_estimate_not_an_error() -> None:
    assert sizeof(Broken()) > 0


class FakeFrame:
    """Has the shape of a pandas object; its module says pandas."""

    __module__ = "pandas.core.frame"

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.deep_calls: list[bool] = []

    def __len__(self) -> int:
        return self.rows

    def memory_usage(self, deep: bool = False) -> np.ndarray:
        self.deep_calls.append(deep)
        return np.array([self.rows * 8, self.rows * (50 if deep else 8)])


def test_dataframe_like_objects_use_memory_usage() -> None:
    small, large = FakeFrame(100), FakeFrame(1_000_000)
    assert sizeof(small) >= 100 * 58
    assert small.deep_calls == [True]
    assert sizeof(large) >= 1_000_000 * 16
    assert large.deep_calls == [False]


def test_real_pandas_objects_are_counted_once() -> None:
    """pandas' own getsizeof is its deep memory usage: added to memory_usage it
    counted every frame twice."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"x": np.arange(50_000, dtype="f8"), "s": ["ab"] * 50_000})
    for obj in (frame, frame["x"], frame.head(100)):
        shallow = int(np.sum(obj.memory_usage(deep=False)))
        deep = int(np.sum(obj.memory_usage(deep=True)))
        assert min(shallow, deep) <= sizeof(obj) <= max(shallow, deep) + 1024, type(obj)


def test_serialized_values_count_their_frames() -> None:
    ser = serialize(np.zeros(100_000))
    assert sizeof(ser) == ser.nbytes


def test_registered_types() -> None:
    class Custom:
        pass

    register_sizeof(Custom, lambda obj: 12345)
    assert sizeof(Custom()) == 12345
    assert sizeof([Custom()]) > 12345


def test_large_pandas_frames_sample_their_python_objects() -> None:
    """Past the deep limit, columns of Python strings are sampled, not ignored:
    the estimate is near pandas' deep count without walking every string."""
    pd = pytest.importorskip("pandas")
    rows = 50_000
    frame = pd.DataFrame({"s": pd.Series(["q" * 200] * rows, dtype=object),
                          "x": np.arange(rows, dtype="f8")})
    deep = int(frame.memory_usage(deep=True).sum())
    shallow = int(frame.memory_usage(deep=False).sum())
    assert deep > 10 * shallow
    for obj in (frame, frame["s"]):
        exact = int(np.sum(obj.memory_usage(deep=True)))
        assert 0.9 * exact <= sizeof(obj) <= 1.1 * exact + 1024, type(obj)


def test_pandas_extension_columns_and_indexes_count_their_buffers() -> None:
    pd = pytest.importorskip("pandas")
    rows = 20_000
    index = pd.date_range("2000-01-01", periods=rows, freq="s", tz="UTC")
    frame = pd.DataFrame({"c": pd.Categorical(["a", "b"] * (rows // 2)),
                          "t": index, "i": pd.array(range(rows), dtype="Int64")}, index=index)
    expected = int(frame.memory_usage(deep=False).sum())
    assert expected <= sizeof(frame) <= expected + 4096
