"""docs/coming-from-dask.md stays truthful: what its table calls implemented
is importable from ``shoal``, nothing else there is, and the counts add up."""

from __future__ import annotations

import re
from pathlib import Path

import shoal

DOC = Path(__file__).resolve().parents[1] / "docs" / "coming-from-dask.md"
ROW = re.compile(r"^\| (?P<names>`[^|]+`) \| (?P<status>[^|]+) \|", re.MULTILINE)


def table() -> dict[str, str]:
    text = DOC.read_text().split("## Status of every name", 1)[1]
    rows = {}
    for match in ROW.finditer(text):
        for name in re.findall(r"`([^`]+)`", match["names"]):
            rows[name] = match["status"].strip()
    return rows


def test_every_name_called_implemented_is_importable_and_no_other_is():
    rows = table()
    implemented = {n for n, status in rows.items() if status == "implemented"}
    assert all(hasattr(shoal, n) and n in shoal.__all__ for n in implemented), \
        sorted(n for n in implemented if n not in shoal.__all__)
    others = {n for n, status in rows.items() if status != "implemented"}
    assert not (others & set(shoal.__all__))


def test_the_stated_counts_match_the_table():
    rows = table()
    text = DOC.read_text()
    total, done = re.search(r"exports (\d+) names; \*\*(\d+) are implemented\*\*", text).groups()
    assert len(rows) == int(total)
    assert sum(status == "implemented" for status in rows.values()) == int(done)
