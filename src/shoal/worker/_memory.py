"""Memory limits, thresholds and the worker's memory state.

A worker must not be killed by the kernel's OOM killer: long before that it
spills results to disk, then stops starting tasks, and finally its nanny
restarts it.  This module holds the arithmetic of that policy, kept free of
I/O so that it is easy to test:

* :func:`parse_bytes` / :func:`format_bytes` for the sizes users type on the
  command line (``--memory-limit 4GiB``);
* :func:`system_memory_limit`: what this process may use at most, the
  smallest of physical memory, the container's cgroup limit (v2 and v1) and
  ``RLIMIT_RSS``; in a Kubernetes pod the cgroup limit is the one that counts;
* :func:`memory_limit_for`: a worker's share of it;
* :class:`MemoryThresholds` and :func:`memory_state`: which fraction of the
  limit triggers spilling, pausing and termination.

Sizes follow the usual conventions: ``k``/``M``/``G``/``T`` (and ``kB``,
``MB``, ...) are powers of 1000, ``Ki``/``Mi``/``Gi`` (and ``KiB``, ...) are
powers of 1024, as in Kubernetes resource quantities.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import psutil

from ..comm._inplace import held_bytes
from ..comm._pool import idle_mapped_bytes

__all__ = [
    "MemoryState",
    "MemoryThresholds",
    "format_bytes",
    "memory_limit_for",
    "memory_state",
    "parse_bytes",
    "process_memory",
    "spill_until_below",
    "system_memory_limit",
]

MemoryState = Literal["ok", "spill", "paused", "terminate"]

_PREFIXES = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}

_SIZE = re.compile(
    r"^\s*(?P<number>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*"
    r"(?P<prefix>[kKmMgGtTpPeE]?)(?P<binary>i?)(?P<unit>[bB]?)\s*$"
)

#: cgroup v1 reports "no limit" as a huge number (close to 2**63).
_CGROUP_V1_UNLIMITED = 2**60

CGROUP_ROOT = Path("/sys/fs/cgroup")


def parse_bytes(size: str | float) -> int:
    """``"4GiB"``, ``"4G"``, ``"500MB"``, ``"1.5 GB"``, ``"100"`` or a number → bytes."""
    # ValueError for every bad input, wrong types included: callers (the CLI,
    # configuration parsing) handle one error type
    if isinstance(size, bool):
        raise ValueError(f"not a size in bytes: {size!r}")  # noqa: TRY004
    if isinstance(size, int | float):
        if not 0 <= size < math.inf:
            raise ValueError(f"a size in bytes must be finite and not negative: {size!r}")
        return int(size)
    if not isinstance(size, str):
        raise ValueError(  # noqa: TRY004
            f"not a size in bytes: {size!r} (expected e.g. '4GiB' or 500000000)"
        )
    match = _SIZE.match(size)
    if match is None:
        raise ValueError(
            f"cannot parse size {size!r}: expected a number and a unit such as "
            "'4GiB', '4G', '500MB', '1.5 GB' or '1024'"
        )
    prefix = match["prefix"].lower()
    if match["binary"] and not prefix:
        raise ValueError(f"cannot parse size {size!r}: 'i' needs a prefix, as in 'GiB'")
    base = 1024 if match["binary"] else 1000
    return int(float(match["number"]) * base ** _PREFIXES[prefix])


def format_bytes(n: float) -> str:
    """``1536`` → ``"1.50 KiB"``: a size for humans, in powers of 1024."""
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            break
        n /= 1024
    if unit == "B":
        return f"{sign}{int(n)} B"
    return f"{sign}{n:.2f} {unit}"


def _read_limit(path: Path) -> int | None:
    """A cgroup memory limit file: bytes, or None for absent/"max"/garbage."""
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.isdigit():
        return None  # "max" means unlimited
    value = int(text)
    return value if 0 < value < _CGROUP_V1_UNLIMITED else None


def _own_cgroup_paths(proc_cgroup: Path) -> list[str]:
    """The cgroup paths of this process from /proc/self/cgroup (v2 and memory v1)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    paths = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and (parts[1] == "" or "memory" in parts[1].split(",")):
            paths.append(parts[2].lstrip("/"))
    return paths


def cgroup_memory_limit(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
) -> int | None:
    """The tightest cgroup (v2 or v1) memory limit that applies here, if any."""
    candidates = [root / "memory.max", root / "memory" / "memory.limit_in_bytes"]
    for own in _own_cgroup_paths(proc_cgroup):
        if own:
            candidates.append(root / own / "memory.max")
            candidates.append(root / "memory" / own / "memory.limit_in_bytes")
    limits = [limit for limit in map(_read_limit, candidates) if limit is not None]
    return min(limits) if limits else None


def _rlimit_rss() -> int | None:
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_RSS)
    except (OSError, ValueError, AttributeError):
        return None
    return soft if soft not in (resource.RLIM_INFINITY, -1) and soft > 0 else None


def system_memory_limit(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Bytes this process may use: min(physical memory, cgroup limit, RLIMIT_RSS)."""
    limits = [int(psutil.virtual_memory().total)]
    for extra in (cgroup_memory_limit(cgroup_root), _rlimit_rss()):
        if extra is not None:
            limits.append(extra)
    return min(limits)


def _as_fraction(spec: str | float) -> float | None:
    """A float in (0, 1], given as a number or a unitless string ("0.5")."""
    if isinstance(spec, str):
        try:
            spec = float(spec)
        except ValueError:
            return None
    if isinstance(spec, float) and 0 < spec <= 1:
        return spec
    return None


def memory_limit_for(spec: str | float | None, nworkers: int = 1) -> int:
    """The memory limit of one worker out of ``nworkers`` on this machine.

    ``None`` or ``"auto"``: an equal share of :func:`system_memory_limit`;
    a float in (0, 1] (or such a number as a string): that fraction of the machine; ``0``, ``"0"`` or
    ``"none"``: no limit (returns 0); anything else: a size for
    :func:`parse_bytes`.  A limit is never more than the machine has.
    """
    if nworkers < 1:
        raise ValueError(f"nworkers must be at least 1, got {nworkers}")
    system = system_memory_limit()
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        return system // nworkers
    if isinstance(spec, str) and spec.strip().lower() in ("none", "0"):
        return 0
    fraction = _as_fraction(spec)
    if fraction is not None:
        return int(system * fraction)
    limit = parse_bytes(spec)
    return min(limit, system)


def process_memory(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), in bytes.

    This process's own also counts the shared memory its memfd mappings keep
    alive (values put into shared memory or received through it,
    ``comm/_inplace.py``) whose pages it has not touched yet: they are in no
    resident set, but they are this process's to hold, and a container's
    memory limit counts them.  It does not count the idle receive buffers the
    buffer pool keeps mapped (``comm/_pool.py``): they hold no value, and
    they are given back at once when memory runs short, like the pool's
    unmapped ones, which are in no resident set.
    """
    rss = int(psutil.Process(pid if pid is not None else os.getpid()).memory_info().rss)
    if pid is None or pid == os.getpid():
        idle = idle_mapped_bytes()
        held = held_bytes()
        if held:
            rss += max(0, held - max(0, _resident_shared_memory() - idle))
        rss = max(0, rss - idle)
    return rss


def _resident_shared_memory() -> int:
    """Bytes of shared memory in this process's resident set (``RssShmem``)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"RssShmem:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass(frozen=True)
class MemoryThresholds:
    """Fractions of the memory limit at which the worker changes behaviour.

    ``target``: managed results above it are spilled to disk (LRU first);
    ``spill``: process memory above it spills too, even if the managed
    size is below target (memory the store does not see, e.g. leaks);
    ``pause``: no new tasks start; ``terminate``: the nanny restarts the
    worker.  Each is a fraction in (0, 1] or ``False`` to disable it; the
    enabled ones must not decrease in that order.
    """

    target: float | Literal[False] = 0.6
    spill: float | Literal[False] = 0.7
    pause: float | Literal[False] = 0.8
    terminate: float | Literal[False] = 0.95

    def __post_init__(self) -> None:
        enabled: list[tuple[str, float]] = []
        for field in fields(self):
            value = getattr(self, field.name)
            if value is False:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(  # noqa: TRY004 - one error type for bad configuration
                    f"memory threshold {field.name} must be a fraction or False, got {value!r}"
                )
            if not 0 < value <= 1:
                raise ValueError(f"memory threshold {field.name} must be in (0, 1], got {value!r}")
            enabled.append((field.name, float(value)))
        for (low_name, low), (high_name, high) in itertools.pairwise(enabled):
            if low > high:
                raise ValueError(
                    f"memory thresholds out of order: {low_name}={low} > {high_name}={high}"
                )

    def bytes_for(self, name: str, limit: int) -> int | None:
        """The threshold ``name`` in bytes for ``limit``; None if disabled or no limit."""
        value = getattr(self, name)
        if value is False or limit <= 0:
            return None
        return int(value * limit)


def memory_state(rss: int, managed: int, limit: int, thresholds: MemoryThresholds) -> MemoryState:
    """Where a worker stands: ``"ok"``, ``"spill"``, ``"paused"`` or ``"terminate"``.

    ``rss`` is the process's resident memory, ``managed`` the bytes of
    results the data store holds in memory, ``limit`` the memory limit (0 or
    less: no limit, always ``"ok"``).
    """
    if limit <= 0:
        return "ok"
    if thresholds.terminate is not False and rss >= thresholds.terminate * limit:
        return "terminate"
    if thresholds.pause is not False and rss >= thresholds.pause * limit:
        return "paused"
    if thresholds.spill is not False and rss >= thresholds.spill * limit:
        return "spill"
    if thresholds.target is not False and managed > thresholds.target * limit:
        return "spill"
    return "ok"


#: Upper bound on values spilled by one call of :func:`spill_until_below`.
MAX_EVICTIONS_PER_CHECK = 1000


def spill_until_below(
    evict: Callable[[], int],
    rss: Callable[[], int],
    limit: int,
    thresholds: MemoryThresholds,
    max_evictions: int = MAX_EVICTIONS_PER_CHECK,
    reclaim: Callable[[], bool] | None = None,
) -> int:
    """Spill results while the process is over the ``spill`` fraction; return bytes spilled.

    For the worker's memory monitor: memory the data store does not manage
    (buffers, leaks, fragmentation) can push the process over the limit
    while the managed results are below target.  Once over ``spill``, this
    evicts least recently used results (``evict`` is ``DataStore.evict``)
    until resident memory is below ``target`` (or ``spill`` when target is
    disabled), nothing is left to evict, or ``max_evictions`` were spilled.

    Resident memory does not always follow what was freed (the allocator
    keeps it): once as many bytes were spilled as the process was over and
    it still is, ``reclaim`` (a :class:`~shoal.worker._allocator.Reclaimer`)
    is asked to give freed memory back before more is spilled.
    """
    start = thresholds.bytes_for("spill", limit)
    if start is None:
        return 0
    now = rss()
    if now < start:
        return 0
    stop = thresholds.bytes_for("target", limit) or start
    owed = now - stop  # bytes to free before resident memory should be below stop
    spilled = 0
    for _ in range(max_evictions):
        freed = evict()
        if freed <= 0:
            break
        spilled += freed
        now = rss()
        if now < stop:
            break
        if spilled >= owed and reclaim is not None and reclaim():
            now = rss()
            if now < stop:
                break
            owed = spilled + now - stop
    return spilled
