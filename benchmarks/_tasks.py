"""The tiny functions the benchmark workloads run on the workers.

They live in their own importable module (the harness puts this folder on
``PYTHONPATH`` for every process it starts) so that both systems ship them
the same way: by reference, as a user's library function would be. Keeping
them trivial means the benchmark measures the scheduling system, not the
work.
"""

from __future__ import annotations

import os
from typing import Any


def inc(x: int) -> int:
    """The canonical tiny task."""
    return x + 1


def add(a: int, b: int) -> int:
    """One node of the tree reduction."""
    return a + b


def make_block(index: int, nbytes: int) -> Any:
    """A block of ``nbytes`` bytes as a numpy array (sent out-of-band by both systems)."""
    import numpy as np

    return np.full(nbytes, index % 251, dtype=np.uint8)


def make_bytes_block(index: int, nbytes: int) -> bytes:
    """The same block as a ``bytes`` object (which pickle alone would copy in band)."""
    return bytes([index % 251]) * nbytes


def consume_block(block: Any) -> tuple[int, int, int]:
    """What the consuming worker does with a block (numpy array or bytes): its size,
    a checksum byte, its pid."""
    return memoryview(block).nbytes, int(block[-1]), os.getpid()
