"""Two user-level workloads, through each system's normal dask-collection path.

These measure what a user of dask.array or dask.dataframe sees: the graph is
built by dask, and each system runs it its own way (shoal's and dask's
``client.compute``, Ray's ``ray.util.dask`` scheduler).  The data is made on
the workers (random chunks, dask's synthetic time series), so the client
ships only the graph.

* ``array``: ``(x + x.T).mean(axis=0)`` over an 8000 x 8000 float64 array in
  500 x 500 chunks (512 MB, 256 chunks; the transpose moves every chunk).
* ``dataframe``: a groupby-aggregate (mean, sum, count) over dask's synthetic
  time series, one row a second for 30 days in daily partitions (2.6 M rows).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Compute = Callable[[Any], Any]


def array(compute: Compute, sizes: dict[str, int]) -> dict[str, Any]:
    import dask.array as da

    n, chunk = sizes["array_n"], sizes["array_chunk"]
    x = da.random.default_rng(42).random((n, n), chunks=(chunk, chunk))
    start = time.perf_counter()
    result = compute((x + x.T).mean(axis=0))
    elapsed = time.perf_counter() - start
    assert result.shape == (n,) and abs(float(result.mean()) - 1.0) < 0.01, result[:4]
    return {"array_seconds": elapsed, "array_shape": [n, n], "array_chunk": chunk}


def dataframe(compute: Compute, sizes: dict[str, int]) -> dict[str, Any]:
    import dask
    import pandas as pd

    days = sizes["dataframe_days"]
    end = pd.Timestamp("2000-01-01") + pd.Timedelta(days=days)
    df = dask.datasets.timeseries(start="2000-01-01", end=str(end.date()), freq="1s",
                                  partition_freq="1D", seed=42)
    start = time.perf_counter()
    result = compute(df.groupby("name").agg({"x": "mean", "y": "sum", "id": "count"}))
    elapsed = time.perf_counter() - start
    rows = days * 86_400
    assert int(result["id"].sum()) == rows, int(result["id"].sum())
    return {"dataframe_seconds": elapsed, "dataframe_rows": rows,
            "dataframe_rows_per_s": rows / elapsed}
