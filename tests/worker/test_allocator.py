"""Freed memory goes back to the OS, so the memory monitor sees it go.

What glibc does with freed blocks is a property of the process, so each
check runs in a fresh interpreter of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shoal.worker._allocator import Reclaimer, Retained, tune_allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

MiB = 2**20

# Makes 256 MiB of 32 MiB blocks twice, with small allocations in between,
# then gives back; in a thread as tasks do (so in heaps of that thread's
# arena), or in the main thread (the main heap).
LARGE_BLOCKS = """
import json, resource, sys, threading, psutil
from shoal.worker._allocator import give_back, tune_allocator
out = {"tuned": tune_allocator(int(sys.argv[2])) if sys.argv[1] == "tuned" else False}
rss = lambda: psutil.Process().memory_info().rss
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def work():
    for round in ("first", "second"):
        before = faults()
        blocks = [bytes([i]) * 32 * 2**20 for i in range(8)]
        pins = [bytearray(1000) for _ in blocks]
        out[round + "_faults"] = faults() - before
        out[round + "_held"] = rss(); del blocks
        out[round + "_freed"] = rss()
if sys.argv[3] == "thread":
    thread = threading.Thread(target=work); thread.start(); thread.join()
else:
    work()
out["gave_back"] = give_back()
out["given_back"] = rss()
print(json.dumps(out))
"""

# Frees 200 MiB of 64 KiB chunks (heap memory) kept apart by small ones.
SMALL_CHUNKS = """
import json, sys, threading, psutil
from shoal.worker._allocator import release_free_memory
rss = lambda: psutil.Process().memory_info().rss
pins, out = [], {}
def work():
    chunks = []
    for i in range(3200):
        chunks.append(bytes([i % 250 + 1]) * 65536); pins.append(bytes(1000))
    out["held"] = rss()
thread = threading.Thread(target=work); thread.start(); thread.join()
out["freed"] = rss()
release_free_memory()
out["released"] = rss()
print(json.dumps(out))
"""


def run(script: str, *args: str) -> dict[str, int]:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout)


def test_tuned_allocator_reuses_freed_large_blocks_until_given_back() -> None:
    pages = 256 * MiB // 4096
    untuned = run(LARGE_BLOCKS, "untuned", "0", "thread")
    assert untuned["second_faults"] > pages * 0.9  # fresh memory again: faulted in again
    out = run(LARGE_BLOCKS, "tuned", str(512 * MiB), "thread")
    assert out["tuned"] is True
    assert out["first_faults"] > pages * 0.9
    assert out["second_faults"] < pages * 0.05  # the freed blocks, reused
    assert out["second_held"] - out["second_freed"] < 10 * MiB  # kept...
    assert out["second_freed"] - out["given_back"] > 200 * MiB  # ...until given back
    assert out["gave_back"] is True


def test_tuned_allocator_keeps_at_most_its_bound_at_the_main_heaps_top() -> None:
    out = run(LARGE_BLOCKS, "tuned", str(64 * MiB), "main")
    assert out["second_faults"] < 256 * MiB // 4096 * 0.8  # the 64 MiB kept, reused
    assert out["second_held"] - out["second_freed"] > 180 * MiB  # 256 freed, 64 kept


def test_release_free_memory_returns_the_holes_of_the_heap() -> None:
    out = run(SMALL_CHUNKS)
    assert out["held"] - out["freed"] < 50 * MiB  # freed, but still resident
    assert out["freed"] - out["released"] > 150 * MiB


def test_the_environment_wins_over_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert tune_allocator(MiB) is False


def test_kept_memory_is_given_back_every_few_seconds_or_at_once() -> None:
    now = [0.0]
    calls: list[float] = []

    def release() -> bool:
        calls.append(now[0])
        return True

    retained = Retained(release, seconds=10, clock=lambda: now[0])
    now[0] = 9.9
    assert retained.expire() is False
    now[0] = 10.0
    assert retained.expire() is True
    now[0] = 12.0
    assert retained.give_back() is True
    now[0] = 21.0
    assert retained.expire() is False  # counted from the last, however it came
    now[0] = 22.0
    assert retained.expire() is True
    assert calls == [10.0, 12.0, 22.0]


def test_reclaimer_takes_at_most_its_share_of_the_time() -> None:
    now = [0.0]
    calls = []

    def release() -> None:
        calls.append(now[0])
        now[0] += 0.5  # each release takes half a second

    reclaim = Reclaimer(release, max_share=0.1, clock=lambda: now[0])
    assert reclaim() is True
    now[0] = 4.0
    assert reclaim() is False  # 0.5 s of work per 5 s at most
    now[0] = 5.0
    assert reclaim() is True
    assert calls == [0.0, 5.0] and reclaim.count == 2
    with pytest.raises(ValueError, match="max_share"):
        Reclaimer(release, max_share=0)


def _faults_to_fill_twice() -> list[int]:
    """Page faults taken to fill 64 MiB of new bytes values, twice (the first
    freed before the second), in a task's thread."""
    import resource

    faults = []
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [bytes([i + 1]) * 16 * MiB for i in range(4)]
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del blocks
    return faults


def test_a_worker_process_reuses_what_it_freed_and_leaves_others_processes_alone() -> None:
    from shoal import Client, LocalCluster

    pages = 64 * MiB // 4096
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                      nanny=False) as cluster, Client(cluster) as client:
        first, second = client.submit(_faults_to_fill_twice).result(timeout=60)
    assert first > pages * 0.9 and second < pages * 0.05
    # in this process, LocalCluster(processes=False) must not change the allocator:
    # run in a fresh interpreter, as glibc's settings are the process's for good
    script = (
        "import json\n"
        "from shoal import Client, LocalCluster\n"
        "from tests.worker.test_allocator import _faults_to_fill_twice\n"
        "with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as c, "
        "Client(c) as client:\n"
        "    print(json.dumps(client.submit(_faults_to_fill_twice).result(timeout=60)))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    first, second = json.loads(done.stdout.strip().splitlines()[-1])
    assert second > pages * 0.9
