"""The executor runs tasks on threads and keeps nothing of them afterwards."""

from __future__ import annotations

import asyncio
import functools
import gc
import sys
import threading
import time
import weakref

import numpy as np

from shoal.protocol import serialize
from shoal.protocol._task import KeyRef
from shoal.worker import _execute
from shoal.worker._execute import Executor, Outcome, run_task, start_warm_imports, warm_imports
from shoal.worker._sizeof import sizeof

from ..polling import async_wait_for


def test_an_idle_executor_holds_no_inputs_or_results() -> None:
    """A spilled or released value must be freed, not pinned by a waiting thread."""

    async def main() -> None:
        done: asyncio.Queue[list[Outcome]] = asyncio.Queue()
        executor = Executor(1, done.put_nowait, name="test")
        try:
            data = {"x": np.ones(1000)}
            refs = [weakref.ref(data["x"])]
            args = serialize(((KeyRef("x"),), {}))
            executor.submit_many([functools.partial(run_task, "y", np.negative, args, data,
                                                    sizeof)])
            del data
            outcomes = await asyncio.wait_for(done.get(), 30)
            assert outcomes[0].ok
            refs.append(weakref.ref(outcomes[0].value))
            del outcomes

            def all_freed() -> bool:
                gc.collect()
                return all(ref() is None for ref in refs)

            await async_wait_for(all_freed, 10, "the thread letting go of the task's values")
        finally:
            executor.shutdown()

    asyncio.run(main())


def test_warm_imports_import_what_is_installed_and_skip_the_rest(tmp_path, monkeypatch) -> None:
    (tmp_path / "shoal_warm_fine.py").write_text("VALUE = 1\n")
    (tmp_path / "shoal_warm_broken.py").write_text("raise RuntimeError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("shoal_warm_fine", "shoal_warm_broken"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    names = ["shoal_warm_missing", "shoal_warm_broken", "shoal_warm_fine", "json"]
    assert warm_imports(names) == ["shoal_warm_fine", "json"]
    assert sys.modules["shoal_warm_fine"].VALUE == 1
    assert "shoal_warm_broken" not in sys.modules
    assert start_warm_imports([]) is None


def test_a_batch_of_slow_tasks_hands_its_results_over_as_they_come(monkeypatch) -> None:
    """The first task's outcome reaches the loop while the second still runs (the
    second waits for it, bounded), so the scheduler can hand out its dependents."""
    monkeypatch.setattr(_execute, "DELIVER_AFTER_SECONDS", 0.0)  # every task counts as slow
    first_delivered = threading.Event()

    def second() -> bool:
        return first_delivered.wait(30)

    async def main() -> list[list[str]]:
        batches: list[list[str]] = []

        def on_done(outcomes: list[Outcome]) -> None:
            batches.append([o.key for o in outcomes])
            if any(o.key == "first" for o in outcomes):
                first_delivered.set()

        executor = Executor(1, on_done, name="test")
        try:
            executor.submit_many([functools.partial(run_task, "first", int, None, {}, sizeof),
                                  functools.partial(run_task, "second", second, None, {},
                                                    sizeof)])
            await async_wait_for(lambda: sum(map(len, batches)) == 2, 30, "both outcomes")
        finally:
            executor.shutdown()
        return batches

    batches = asyncio.run(main())
    assert batches == [["first"], ["second"]]


def test_a_task_duration_leaves_out_unpickling_its_arguments() -> None:
    """Unpickling may import a library once per process; the scheduler places
    and steals work by durations, which must not count that second."""
    ser = serialize(((_Unpickled(),), {}))
    outcome = run_task("k", _unpickled_at, ser, {}, sizeof)
    assert outcome.ok and outcome.start >= outcome.value


_unpickled: list[float] = []


def _record_unpickling() -> _Unpickled:
    _unpickled.append(time.time())
    return _Unpickled()


class _Unpickled:
    """Records, on the task's thread, when it was unpickled."""

    def __reduce__(self) -> tuple:
        return _record_unpickling, ()


def _unpickled_at(_: _Unpickled) -> float:
    return _unpickled[-1]
