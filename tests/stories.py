"""Checks that a state machine's story accounts for every state change.

Given the task states before and after one ``handle`` call, and the story
entries that call appended, every key whose state changed must have a chain
of entries from its old state to its new one, each entry starting where the
previous ended: a state assigned anywhere but the one checked transition
would break the chain.
"""

from __future__ import annotations

import itertools
from typing import Any

#: A task is created in this state, and leaves the table in one of REMOVED.
INITIAL = "released"
REMOVED = ("released", "forgotten")


def snapshot(tasks: dict[str, Any]) -> dict[str, str]:
    return {key: ts.state for key, ts in tasks.items()}


def check_story(before: dict[str, str], after: dict[str, str], entries: list[tuple],
                legal: frozenset[tuple[str, str]]) -> None:
    chains: dict[str, list[tuple]] = {}
    for entry in entries:
        chains.setdefault(entry[0], []).append(entry)
    for key in before.keys() | after.keys() | chains.keys():
        start = before.get(key, INITIAL)
        chain = chains.get(key, [])
        if not chain:
            assert key in after and after[key] == start, (
                f"{key}: {start} -> {after.get(key, 'removed')} with no story entry")
            continue
        assert chain[0][1] == start, f"{key}: story starts at {chain[0][1]}, state was {start}"
        for prev, nxt in itertools.pairwise(chain):
            recreated = prev[2] in REMOVED and nxt[1] == INITIAL
            assert prev[2] == nxt[1] or recreated, f"{key}: story jumps {prev[2]} -> {nxt[1]}"
        for entry in chain:
            assert (entry[1], entry[2]) in legal, f"{key}: recorded {entry[1:3]} is not legal"
        last = chain[-1][2]
        if key in after:
            assert last == after[key], f"{key}: story ends at {last}, state is {after[key]}"
        else:
            assert last in REMOVED, f"{key}: removed, but its story ends at {last}"
