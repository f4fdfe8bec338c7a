"""Freed memory goes back to the OS, so the memory monitor sees it go.

What glibc does with freed blocks is a property of the process, so each
check runs in a fresh interpreter of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shoal.worker._allocator import Reclaimer, tune_allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

MiB = 2**20

# Frees 250 MiB of 25 MiB blocks, made after one such block was freed (which
# makes glibc raise its mmap threshold), with small allocations in between.
LARGE_BLOCKS = """
import json, sys, threading, numpy as np, psutil
from shoal.worker._allocator import tune_allocator
if sys.argv[1] == "tuned":
    tune_allocator()
rss = lambda: psutil.Process().memory_info().rss
out = {}
def work():  # in a thread, as tasks run, so in a heap of that thread's arena
    del_me = np.ones(25 * 2**20 // 8); del del_me
    blocks, pins = [], []
    for _ in range(10):
        blocks.append(np.ones(25 * 2**20 // 8)); pins.append(bytearray(1000))
    out["held"] = rss(); del blocks
    out["freed"] = rss()
thread = threading.Thread(target=work); thread.start(); thread.join()
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


def test_tuned_allocator_returns_freed_large_blocks_at_once() -> None:
    untuned = run(LARGE_BLOCKS, "untuned")
    tuned = run(LARGE_BLOCKS, "tuned")
    assert untuned["held"] - untuned["freed"] < 200 * MiB  # what the worker saw before
    assert tuned["held"] - tuned["freed"] > 240 * MiB


def test_release_free_memory_returns_the_holes_of_the_heap() -> None:
    out = run(SMALL_CHUNKS)
    assert out["held"] - out["freed"] < 50 * MiB  # freed, but still resident
    assert out["freed"] - out["released"] > 150 * MiB


def test_the_environment_wins_over_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert tune_allocator() is False


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
