"""Every Python example in README.md and docs/{quickstart,errors,security}.md runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def examples() -> list[tuple[str, str]]:
    found = []
    for doc in ("README.md", "docs/quickstart.md", "docs/errors.md", "docs/security.md"):
        for i, code in enumerate(BLOCK.findall((ROOT / doc).read_text())):
            found.append((f"{doc}#{i}", code))
    return found


@pytest.mark.parametrize(("where", "code"), examples(), ids=[w for w, _ in examples()])
def test_example_runs(where, code, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True,
                         timeout=180, cwd=tmp_path)
    assert out.returncode == 0, f"{where} failed:\n{out.stderr[-3000:]}"


def test_readme_quickstart_has_exactly_two_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    assert len(commands) == 2
    assert "shoal demo" in commands[0] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1].strip() in ci
