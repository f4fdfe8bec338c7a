"""The dashboard loaded in real headless Chromium while a computation runs.

Chromium (Debian's ``chromium`` package) renders the page with virtual time,
so its polling timers run quickly while the fetches to the scheduler are
real; the rendered DOM is then checked for the workers, the progress of the
running task prefix and the task stream, and a screenshot is kept in
``test-artifacts/`` for people to look at.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from shoal import Client, Event, LocalCluster, wait

from .observability_support import ARTIFACTS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_TIMEOUT = 60.0
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")

N_TASKS = 600
#: The first tasks finish at once; the others wait for the gate, which the
#: tests open when they are done, so the page always meets a running
#: computation with some of it finished, however slow the machine.
N_FINISHED = 40
GATE = "dashboard-gate"
GATE_TIMEOUT = 120.0


def pause(gated: bool) -> bool:
    time.sleep(0.01)
    return Event(GATE).wait(timeout=GATE_TIMEOUT) if gated else True


class Elements(HTMLParser):
    """Every element's attributes, and the text inside each element with a class."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.texts: dict[str, list[str]] = {}
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes))
        self._open.append(attributes.get("id") or attributes.get("class"))

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1]:
            self.texts.setdefault(self._open[-1], []).append(data.strip())

    def having(self, attribute: str) -> list[dict[str, str]]:
        return [a for _, a in self.elements if attribute in a]


def run_chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", "--virtual-time-budget=3000", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BROWSER_TIMEOUT)
    finally:  # chromium's helper processes share its session: stop them all
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.fixture(scope="module")
def busy_cluster() -> Iterator[tuple[LocalCluster, Client, list]]:
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=0) as cluster, Client(cluster) as client:
        cluster.wait_for_workers(2)
        futures = client.map(pause, [i >= N_FINISHED for i in range(N_TASKS)], pure=False)
        wait(futures[:N_FINISHED], timeout=60)
        try:
            yield cluster, client, futures
        finally:
            Event(GATE).set()
            client.cancel(futures)


def test_dashboard_renders_workers_progress_and_task_stream(busy_cluster, tmp_path) -> None:
    cluster, client, futures = busy_cluster
    url = cluster.dashboard_link
    assert url is not None
    result = run_chromium(tmp_path / "profile", "--dump-dom", url)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not all(f.done() for f in futures), "the computation ended before the page loaded"
    dom = Elements()
    dom.feed(result.stdout)

    assert dom.texts.get("connection") == ["live"], dom.texts.get("connection")
    workers = {a["data-worker"] for a in dom.having("data-worker")}
    assert workers == set(client.scheduler_info()["workers"])
    prefixes = {a["data-prefix"] for a in dom.having("data-prefix")}
    assert "pause" in prefixes
    figures = [t for t in dom.texts.get("figures", []) if t]
    done, total = (int(x) for x in figures[0].split("/"))
    assert total == N_TASKS and 0 < done < N_TASKS, figures
    tasks = [a for a in dom.having("class") if a["class"] == "task"]
    assert tasks, "no task rectangles in the task stream"
    states = {a["data-state"]: int(a["data-count"]) for a in dom.having("data-state")}
    assert states["processing"] >= 1 and states["memory"] >= 1, states
    assert dom.texts["n-workers"] == ["2"]


def test_dashboard_screenshot_is_saved(busy_cluster, tmp_path) -> None:
    cluster, _, futures = busy_cluster
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / "dashboard.png"
    if target.exists():
        target.unlink()
    result = run_chromium(tmp_path / "profile", "--window-size=1400,1000",
                          f"--screenshot={target}", cluster.dashboard_link or "")
    assert result.returncode == 0, result.stderr[-2000:]
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert target.stat().st_size > 10_000  # a rendered page, not a blank one
    assert not all(f.done() for f in futures)
