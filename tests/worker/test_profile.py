"""The worker's stack sampler: robust to stacks caught in the middle of a change."""

from __future__ import annotations

import sys
from typing import Any

from shoal.worker._profile import _task_frames, add_stack, new_tree


def test_a_stack_walk_stops_at_what_is_not_a_frame() -> None:
    """Another thread's stack, read while it imports, may show a stale link
    (CPython 3.11): the walk ends there rather than raising in the sampler."""
    here = sys._getframe()
    frames = _task_frames(here, frozenset({here.f_back.f_code}))
    assert frames == [here]
    not_a_frame: Any = 42
    assert _task_frames(not_a_frame, frozenset()) == []
    tree = new_tree()
    add_stack(tree, frames)
    assert tree["count"] == 1
    (child,) = tree["children"].values()
    assert child["description"]["name"] == "test_a_stack_walk_stops_at_what_is_not_a_frame"
