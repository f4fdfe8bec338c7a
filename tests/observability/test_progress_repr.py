"""``shoal.progress`` in a terminal, in async code and in IPython; the HTML reprs."""

from __future__ import annotations

import asyncio
import io
import operator
import threading
import time
from collections.abc import Iterator

import pytest

import shoal
from shoal import Client, LocalCluster, progress
from shoal.client._progress import NotebookProgress, Tracker, html_bar, in_notebook


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[LocalCluster, Client]]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=0) as cluster, Client(cluster) as client:
        cluster.wait_for_workers(2)
        yield cluster, client


def frames(text: str) -> list[str]:
    return [f for f in text.replace("\n", "").split("\r") if f]


GATE = threading.Event()


def gated(x: int) -> int:
    """Runs in this process's workers (``processes=False``): waits for the test."""
    GATE.wait(30)
    return x


def test_terminal_bar_moves_to_completion(cluster) -> None:
    _, client = cluster
    GATE.clear()
    futures = client.map(gated, range(6), pure=False)
    out = io.StringIO()
    drawing = threading.Thread(target=progress, args=(futures,), kwargs={"stream": out})
    drawing.start()
    deadline = time.monotonic() + 10
    while "0% Completed" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the bar's output, bounded by the deadline
    assert "  0% Completed" in out.getvalue()
    GATE.set()
    drawing.join(timeout=30)
    assert not drawing.is_alive() and all(f.done() for f in futures)
    drawn = frames(out.getvalue())
    assert "100% Completed" in drawn[-1] and out.getvalue().endswith("\n")
    assert "#" * 40 in drawn[-1] and "#" not in drawn[0]


def test_erred_tasks_are_counted(cluster) -> None:
    _, client = cluster
    futures = [client.submit(operator.truediv, 1, d, pure=False) for d in (1, 0, 2)]
    out = io.StringIO()
    progress(futures, stream=out)
    assert frames(out.getvalue())[-1].endswith("| 1 erred")


def test_nested_collections_and_duplicates(cluster) -> None:
    _, client = cluster
    a = client.submit(operator.add, 1, 2, pure=False)
    b = client.submit(operator.add, 3, 4, pure=False)
    out = io.StringIO()
    progress({"x": [a, (b, a)], "y": {"z": b}}, stream=out)
    assert "100% Completed" in frames(out.getvalue())[-1]
    tracker = Tracker([a, b])
    assert tracker.total == 2


def test_futures_of_a_closed_client_count_as_done(cluster) -> None:
    local, _ = cluster
    with Client(local.scheduler_address) as client:
        finished = client.submit(operator.add, 1, 1, pure=False)
        finished.result()
        pending = client.submit(time.sleep, 1.5, pure=False)
    out = io.StringIO()
    progress([finished, pending], stream=out, timeout=5)
    assert "100% Completed" in frames(out.getvalue())[-1]


def test_no_futures_is_complete_at_once() -> None:
    out = io.StringIO()
    progress([], stream=out)
    assert "100% Completed" in out.getvalue()


def test_things_that_are_not_futures_are_refused() -> None:
    with pytest.raises(TypeError, match="takes futures"):
        progress([1, 2], stream=io.StringIO())


def test_timeout(cluster) -> None:
    _, client = cluster
    future = client.submit(time.sleep, 1.5, pure=False)
    with pytest.raises(TimeoutError):
        progress(future, stream=io.StringIO(), timeout=0.2)
    future.cancel()


def test_async_client_gets_an_awaitable(cluster) -> None:
    local, _ = cluster

    async def main() -> str:
        async with Client(local.scheduler_address, asynchronous=True) as client:
            futures = client.map(time.sleep, [0.01] * 8, pure=False)
            out = io.StringIO()
            await progress(futures, stream=out)
            assert all(f.done() for f in futures)
            return out.getvalue()

    assert "100% Completed" in asyncio.run(main())


def test_html_bar_is_self_contained(cluster) -> None:
    _, client = cluster
    futures = client.map(operator.neg, range(4), pure=False)
    client.gather(futures)
    tracker = Tracker(futures)
    deadline = time.monotonic() + 5
    while not tracker.finished and time.monotonic() < deadline:
        tracker.changed.wait(0.1)  # callbacks fire on the client's loop
    markup = html_bar(tracker)
    assert "100%" in markup and "4 / 4 done" in markup
    assert "<script" not in markup and "http" not in markup


def test_ipython_display_updates_in_place(cluster) -> None:
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    from traitlets.config import Config

    _, client = cluster
    config = Config()
    config.HistoryManager.enabled = False
    InteractiveShell.instance(config=config)
    try:
        assert not in_notebook()  # a shell, but no kernel
        futures = client.map(time.sleep, [0.02] * 20, pure=False)
        with capture_output() as captured:
            bar = NotebookProgress(Tracker(futures))
            bar.join(timeout=30)
            assert progress(futures, notebook=True) is None  # returns at once
            for thread in threading.enumerate():
                if thread.name == "shoal-progress":
                    thread.join(timeout=30)
        shown = [o.data["text/html"] for o in captured.outputs]
        assert len(shown) >= 2 and "100%" in shown[-1] and "20 / 20 done" in shown[-1]
    finally:
        InteractiveShell.clear_instance()


def test_client_and_cluster_html(cluster) -> None:
    local, client = cluster
    assert client.dashboard_link == local.dashboard_link
    assert local.dashboard_link and local.dashboard_link.startswith("http://")
    for markup in (client._repr_html_(), local._repr_html_()):
        assert local.scheduler_address in markup
        assert f'href="{local.dashboard_link}"' in markup
        assert "<th" in markup and ">workers<" in markup
        assert "<td style=\"text-align:left\">2</td>" in markup  # 2 workers, 2 threads
        assert "GiB" in markup or "MiB" in markup


def test_client_by_address_finds_the_dashboard(cluster) -> None:
    local, _ = cluster
    with Client(local.scheduler_address) as client:
        assert client.dashboard_link == local.dashboard_link
        assert local.dashboard_link in client._repr_html_()


def test_reprs_of_closed_objects_do_not_raise() -> None:
    cluster = LocalCluster(n_workers=1, processes=False, dashboard_address=None)
    client = Client(cluster)
    client.close()
    cluster.close()
    assert "closed" in client._repr_html_()
    assert "<em>none</em>" in cluster._repr_html_()


def test_progress_is_exported() -> None:
    assert shoal.progress is progress and "progress" in shoal.__all__
