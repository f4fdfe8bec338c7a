"""A mutation check of the state machines against their tests.

Each mutant changes one line of the scheduler's or the worker's state logic;
the state-machine tests (unit and property) run against a copy of the source
with that change.  A mutant the tests do not notice "survives": either a gap
in the tests or a change that does not matter.  Not part of the suite:

    python tests/mutants.py            # ~2-5 minutes on 2 cores
    python tests/mutants.py peer       # only the mutants whose description has "peer"
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/scheduler/test_state.py", "tests/scheduler/test_state_properties.py",
         "tests/worker/test_state.py", "tests/worker/test_state_properties.py"]
S, W = "scheduler/_state.py", "worker/_state.py"

#: (file under src/shoal, what to find (exactly once), what to put instead, what it breaks)
MUTANTS: list[tuple[str, str, str, str]] = [
    (S, "        self._record((ts.key, start, finish, stim, self._now))\n", "",
     "scheduler: a transition not recorded in the story"),
    (S, "            if arg is not GONE:\n                self.out.append(", "            if False:\n                self.out.append(",
     "scheduler: a released task not cancelled on its worker"),
    (S, "            ws.nbytes -= ts.nbytes\n            self.out.append(", "            ws.nbytes -= ts.nbytes\n            (",
     "scheduler: a dropped replica not freed on its worker"),
    (S, "{dep for dep in ts.dependencies if dep.state != \"memory\"}", "{dep for dep in ts.dependencies if dep.state == \"memory\"}",
     "scheduler: waiting on the inputs it already has"),
    (S, "                recs[dep.key] = \"forgotten\"\n", "                pass\n",
     "scheduler: an input never forgotten after its last dependent"),
    (S, "            ws.nbytes += ts.nbytes\n", "            ws.nbytes -= ts.nbytes\n",
     "scheduler: worker bytes counted the wrong way"),
    (S, "            if ts.suspicious > self.allowed_failures:", "            if ts.suspicious >= self.allowed_failures:",
     "scheduler: a task failed one worker death early"),
    (S, "                self.out.append(ToWorker(ws.address, {\"op\": \"free-keys\", \"keys\": [ts.key]}))\n            self._fill(ws, recs, stim)\n        elif start == \"queued\":\n            self.placement.dequeue(ts)\n        ts.exception, ts.traceback",
     "                self.out.append(ToWorker(ws.address, {\"op\": \"free-keys\", \"keys\": [ts.key]}))\n        elif start == \"queued\":\n            self.placement.dequeue(ts)\n        ts.exception, ts.traceback",
     "scheduler: a worker freed by erring tasks not refilled"),
    (S, "            if ts.state == \"memory\":\n                self._transition(ts, \"released\", recs, stim)", "            if ts.state == \"memory\":\n                recs[ts.key] = \"released\"",
     "scheduler: lost keys released lazily (the bug the worker model found)"),
    (S, "                self.out.append(ToWorker(ws.address, {\"op\": \"free-keys\", \"keys\": [ev.key]}))\n            return",
     "                pass\n            return", "scheduler: an unwanted result left on its worker"),
    (S, "                recs[key] = \"forgotten\" if not ts.dependents else \"released\"", "                recs[key] = \"released\"",
     "scheduler: released keys not forgotten directly"),
    (S, "            ts.waiting_on = EMPTY\n            ts.nbytes = nbytes", "            ts.nbytes = nbytes",
     "scheduler: scattered data arriving on a waiting task keeps waiting_on"),
    (S, "        if not ts.waiting_on:\n            recs[ts.key] = \"processing\"", "        if ts.waiting_on:\n            recs[ts.key] = \"processing\"",
     "scheduler: a ready task never scheduled"),
    ("scheduler/_placement.py", "        room = self.slots(ws) - ws.busy", "        room = self.slots(ws) + 1 - ws.busy",
     "placement: one root more than the worker's slots"),
    ("scheduler/_stealing.py", "            if thief is victim or not self.state.placement.valid(ts, thief):", "            if thief is victim:",
     "stealing: a task stolen by a worker it may not run on"),
    ("scheduler/_placement.py", "        return ws.status == \"running\" and self.fits(ts, ws)",
     "        return ws.status in (\"running\", \"paused\") and self.fits(ts, ws)",
     "placement: a paused worker given new work"),
    ("scheduler/_stealing.py", "            if any(valid(ts, other) for other in running):", "            if False:",
     "stealing: a paused worker's unstarted work left waiting on it"),
    (S, "        else:\n            self._give_work(ws, {}, stim)", "        else:\n            pass",
     "scheduler: a resumed (paused) worker given no work"),
    (S, "            if ws.status == \"paused\" and type(stuck) is str and stuck:",
     "            if False:", "scheduler: with every worker stuck paused, waiting tasks wait for ever"),
    (W, "        self._record((ts.key, start, finish, self._stim, self._now))\n", "",
     "worker: a transition not recorded in the story"),
    (W, "        if start == \"memory\":\n            self.out.append(Forget(ts.key))", "        if start == \"memory\":\n            pass",
     "worker: a released value left in the data store"),
    (W, "        heapq.heappush(self.ready, (ts.priority, next(self._counter), ts))", "        pass",
     "worker: a ready task never queued to run"),
    (W, "        while ready and len(self.executing) < limit and not self.paused:", "        while ready and len(self.executing) <= limit and not self.paused:",
     "worker: one task more than threads + prefetch"),
    (W, "            if ts.state == \"executing\":\n                self._transition(ts, \"cancelled\")\n        for ts",
     "            if False:\n                self._transition(ts, \"cancelled\")\n        for ts",
     "worker: runs not cancelled when the scheduler is lost"),
    (W, "        if start == \"executing\":  # arg: the ExecuteSuccess\n            self._finish_execution(ts)", "        if start == \"executing\":  # arg: the ExecuteSuccess\n            pass",
     "worker: a finished run still counted as executing"),
    (W, "        if ev.peer_gone:  # whatever was asked of it, fetch nothing more from it", "        if False:",
     "worker: a dead peer kept as a source"),
    (S, "        self.placement.secede(ts, ws)\n        recs: Recs = {}\n        self._fill(ws, recs, ev.stimulus_id)\n",
     "        self.placement.secede(ts, ws)\n        recs: Recs = {}\n",
     "scheduler: a seceded task's slot not refilled"),
    (S, "            ts.who_wants = without_item(ts.who_wants, FIRE_AND_FORGET)\n        if not self._wanted(ts):", "            pass\n        if not self._wanted(ts):",
     "scheduler: a fire-and-forget task kept after it finished"),
    (W, "        while self.rejoining and len(self.executing) < self.nthreads:", "        while self.rejoining:",
     "worker: a seceded task rejoins with no free slot"),
    (W, "        self.seceded.discard(ts)\n        if ts in self.rejoining:", "        if ts in self.rejoining:",
     "worker: a finished seceded run still counted as seceded"),
]


def run(mutant: tuple[str, str, str, str], workdir: Path) -> tuple[bool, float, str]:
    path, find, replace, _ = mutant
    src = workdir / "src"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(ROOT / "src", src)
    target = src / "shoal" / path
    text = target.read_text()
    assert text.count(find) == 1, f"{path}: {find!r} found {text.count(find)} times"
    target.write_text(text.replace(find, replace))
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:randomly",
                              "-p", "no:cacheprovider", *TESTS], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        return True, time.monotonic() - start, "timed out (a hang counts as killed)"
    failed = [line for line in out.stdout.splitlines() if line.startswith("FAILED")]
    return out.returncode != 0, time.monotonic() - start, failed[0] if failed else ""


def main() -> int:
    chosen = [m for m in MUTANTS if not sys.argv[1:] or sys.argv[1] in m[3]]
    with tempfile.TemporaryDirectory(prefix="shoal-mutants-") as tmp:
        survivors = []
        for mutant in chosen:
            killed, seconds, by = run(mutant, Path(tmp))
            print(f"{'killed  ' if killed else 'SURVIVED'} {seconds:5.1f}s  {mutant[3]}"
                  + (f"\n           by {by}" if by else ""), flush=True)
            if not killed:
                survivors.append(mutant[3])
        print(f"\n{len(chosen) - len(survivors)} of {len(chosen)} mutants killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
