"""``client.profile()`` on a multi-process cluster: the workers sample the
stacks of running tasks; the client gets dask's tree of frames, per worker
or merged, for a key prefix and a time range, and an HTML page of it."""

from __future__ import annotations

import time


def spin_in_named_function(seconds: float) -> int:
    deadline = time.time() + seconds
    n = 0
    while time.time() < deadline:
        n += 1
    return n


def names(tree: dict) -> set[str]:
    found = {tree["description"]["name"]}
    for child in tree["children"].values():
        found |= names(child)
    return found


def test_profile_shows_where_tasks_spent_their_time(proc_client, tmp_path):
    started = time.time()
    futures = proc_client.map(spin_in_named_function, [1.0, 1.0], pure=False)
    proc_client.gather(futures)
    tree = proc_client.profile()
    assert tree["count"] >= 20  # two seconds of work sampled every 10 ms, on a loaded machine
    assert "spin_in_named_function" in names(tree)
    tops = list(tree["children"].values())
    assert all(set(top) == {"identifier", "description", "count", "children"} for top in tops)
    # the tree starts at the task's function: a sample may catch the task
    # being set up (its Outcome built, its arguments unpickled), but most are
    # of the function, and the executor's own frames are left out
    heaviest = max(tops, key=lambda top: top["count"])
    assert heaviest["description"]["name"] == "spin_in_named_function"
    assert not {"_work", "run_in_context", "run_task", "_bootstrap_inner"} & names(tree)
    only = proc_client.profile(key="spin_in_named_function", start=started)
    assert only["count"] > 0 and "spin_in_named_function" in names(only)
    assert proc_client.profile(key="no_such_prefix")["count"] == 0
    assert proc_client.profile(stop=started - 3600)["count"] == 0
    per_worker = proc_client.profile(merge_workers=False)
    assert set(per_worker) == set(proc_client.scheduler_info()["workers"])
    page = tmp_path / "profile.html"
    proc_client.profile(filename=str(page))
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "spin_in_named_function" in text
    assert "<script" not in text and "http" not in text
