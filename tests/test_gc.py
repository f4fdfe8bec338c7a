"""The servers' garbage-collection policy (``shoal._gc``), each case in a fresh
interpreter: it changes process-wide state that this test process must keep."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PRELUDE = """
import gc, weakref
from shoal import _gc

class Node:
    __slots__ = ("other", "__weakref__")

    def __init__(self, other=None):
        self.other = other
"""


def run(body: str) -> str:
    """Run ``body`` after the prelude in a new interpreter; what it printed."""
    done = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_what_survives_a_middle_collection_is_frozen_and_freed_by_reference_counting():
    out = run("""
        _gc.freeze_old_objects()
        before = gc.get_freeze_count()
        kept = [Node() for _ in range(1000)]
        refs = [weakref.ref(n) for n in kept]
        gc.collect(1)
        frozen = gc.get_freeze_count()
        assert frozen >= before + 1000, (before, frozen)
        del kept  # frozen objects still go when their last reference does
        assert all(r() is None for r in refs)
        assert gc.get_freeze_count() <= frozen - 1000
        print("ok")
    """)
    assert out.strip() == "ok"


def test_an_old_cycle_is_collected_once_the_server_holds_little():
    out = run("""
        _gc.freeze_old_objects()
        _gc.CLEANUP_INTERVAL = 0.0
        a = Node()
        a.other = Node(a)
        ref = weakref.ref(a)
        gc.collect(1)  # old now, so frozen
        del a
        gc.collect()  # a full collection does not scan frozen objects
        assert ref() is not None
        assert not _gc.collect_if_small(_gc.SMALL_STATE_TASKS + 1)  # too big to scan
        assert ref() is not None
        assert _gc.collect_if_small(10)
        assert ref() is None and _gc.cleanups() == 1
        assert not _gc.collect_if_small(10)  # nothing frozen since: nothing to do
        b = Node()
        b.other = Node(b)
        ref = weakref.ref(b)
        gc.collect(1)
        del b
        assert ref() is not None and _gc.collect_all() >= 2  # when memory is short
        assert ref() is None and gc.get_freeze_count() > 0  # the rest frozen again
        print("ok")
    """)
    assert out.strip() == "ok"


def test_without_the_policy_nothing_is_frozen_and_thaw_removes_it():
    out = run("""
        assert not _gc.collect_if_small(0)  # not installed: a no-op
        _gc.freeze_old_objects()
        _gc.freeze_old_objects()  # idempotent
        assert gc.get_threshold()[0] == _gc.YOUNG_THRESHOLD
        _gc.thaw()
        assert gc.get_freeze_count() == 0 and gc.get_threshold() == (700, 10, 10)
        gc.collect(1)
        assert gc.get_freeze_count() == 0
        print("ok")
    """)
    assert out.strip() == "ok"


def test_the_server_commands_install_it():
    out = run("""
        from shoal import cli
        cli._tune_gc()  # what a scheduler's or worker's start-up calls
        print(_gc._policy is not None and gc.get_threshold()[0] == _gc.YOUNG_THRESHOLD)
    """)
    assert out.strip() == "True"
