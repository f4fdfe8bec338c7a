"""Optional sampling profiles of every process of a benchmark cluster.

When ``bench.py --profile DIR`` is given, each child sets
``SHOAL_BENCH_PROFILE`` and :func:`recording` attaches ``py-spy record`` to
the client process and to all its descendants (the scheduler and worker
processes of a LocalCluster, or of the CLI cluster) while a workload runs.
The raw collapsed stacks land in DIR, and :func:`summarize` turns them into
the hottest functions per process, which is what tells an engine author
where the time goes. py-spy is not a dependency: ``pip install py-spy``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

ENV_VAR = "SHOAL_BENCH_PROFILE"
LABEL_VAR = "SHOAL_BENCH_LABEL"
SAMPLE_RATE = 250
STOP_WAIT_SECONDS = 30.0
IDLE_LEAVES = frozenset({
    "select", "poll", "wait", "_recv", "recv_into", "accept", "sleep", "_wait_for_tstate_lock",
})
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


@contextlib.contextmanager
def recording(roles: dict[int, str]) -> Iterator[None]:
    """Record the processes in ``roles`` (pid -> role) while the block runs (unless asked,
    a no-op).

    Only samples of threads that hold the GIL are kept (``--gil``): a thread
    blocked in C (a queue, a socket, ``time.sleep``) shows no Python frame of
    its own, so without this, waiting would look like work.
    """
    outdir, label = os.environ.get(ENV_VAR), os.environ.get(LABEL_VAR, "run")
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not outdir or not os.path.exists(pyspy):
        yield
        return
    spies = []
    for pid, role in sorted(roles.items()):
        path = Path(outdir) / f"{label}-{role}-{pid}.txt"
        spies.append(subprocess.Popen(
            [pyspy, "record", "--pid", str(pid), "--gil", "--format", "raw", "--rate",
             str(SAMPLE_RATE), "--output", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        yield
    finally:
        _stop(spies)


def _stop(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        try:
            spy.wait(STOP_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for frame in stack.split(";"):
        match = _FRAME.match(frame.strip())
        if match:
            out.append((match["func"], match["file"]))
    return out


def _is_idle(func: str, file: str) -> bool:
    if func == "_worker" and file.endswith("thread.py"):
        return True  # a pool thread blocked on its queue (the wait happens in C)
    return func.rpartition(".")[2] in IDLE_LEAVES


def summarize(path: Path, top: int = 12, package: str = "shoal") -> str:
    """The hottest functions of one recording, idle waits left out.

    ``self``: samples whose innermost frame is the function (pure-Python hot
    spots). ``incl``: samples with the function anywhere on the stack, for
    functions of ``package`` only (where the engine's time goes).
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = _frames(stack)
        if not count.isdigit() or not frames:
            continue
        if _is_idle(*frames[-1]):
            idle += int(count)
            continue
        busy += int(count)
        own[f"{frames[-1][0]} ({Path(frames[-1][1]).name})"] += int(count)
        for func, file in set(frames):
            if file.startswith(f"{package}/") or f"/{package}/" in file:
                inclusive[f"{func} ({Path(file).name})"] += int(count)
    if not busy:
        return f"{path.name}: no busy samples ({idle} idle)"
    header = (f"{path.name}: {busy} samples holding the GIL at {SAMPLE_RATE}/s "
              f"= {busy / SAMPLE_RATE:.2f} s of Python CPU time")
    lines = [header]
    lines += [f"  self {100 * n / busy:5.1f}%  {name}" for name, n in own.most_common(top)]
    informative = [(name, n) for name, n in inclusive.most_common() if n < 0.95 * busy]
    lines += [f"  incl {100 * n / busy:5.1f}%  {name}" for name, n in informative[:top]]
    return "\n".join(lines)
