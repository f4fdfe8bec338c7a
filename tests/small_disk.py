"""A real, small file system for tests of what happens when a disk fills up.

A tmpfs of a few MiB mounted on a fresh directory: writes beyond its size
fail with ENOSPC, as on a full disk.  Mounting needs root (CI runs as root);
elsewhere the tests that need it are skipped, saying why.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def small_filesystem(size: str = "4m") -> Iterator[str]:
    """Mount a tmpfs of ``size`` (mount(8) syntax) and yield its path; unmount after."""
    path = tempfile.mkdtemp(prefix="shoal-small-disk-")
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                                 check=False, capture_output=True, text=True, timeout=30)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", path], check=True, timeout=30)
    finally:
        os.rmdir(path)
