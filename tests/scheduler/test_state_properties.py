"""Random event sequences against the scheduler's state machine.

After every event all invariants must hold (``validate``), and once the
random phase is over, running every task to completion must leave each
task a client still wants in memory or erred: nothing is lost or stuck.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.scheduler._events import (
    AddClient,
    AddWorker,
    CancelKeys,
    ClientReleasesKeys,
    MissingData,
    RemoveWorker,
    StealResponse,
    TaskErred,
    TaskFinished,
    TaskSpec,
    UpdateData,
    UpdateGraph,
)
from shoal.scheduler._state import SchedulerState

S = "prop"
actions = st.lists(
    st.tuples(
        st.sampled_from(["add_worker", "remove_worker", "retire", "submit", "submit", "submit",
                         "finish", "finish", "finish", "finish", "finish", "err", "release",
                         "cancel", "missing", "scatter", "steal", "steal"]),
        st.integers(0, 1000),
        st.integers(0, 1000),
    ),
    min_size=10,
    max_size=120,
)


class Driver:
    def __init__(self) -> None:
        self.state = SchedulerState(allowed_failures=2)
        self.n_keys = 0
        self.n_workers = 0
        self.state.handle(AddClient(S, "c"))
        self.add_worker(0, 0)

    def add_worker(self, a: int, b: int) -> None:
        self.n_workers += 1
        name = f"w{self.n_workers}"
        resources = {"GPU": 1} if a % 4 == 0 else {}
        self.state.handle(AddWorker(S, name, name, 1 + a % 2, 10**9, resources))

    def _worker(self, i: int) -> str | None:
        workers = sorted(self.state.workers)
        return workers[i % len(workers)] if workers else None

    def remove_worker(self, a: int, b: int, graceful: bool = False) -> None:
        w = self._worker(a)
        if w is not None:
            self.state.handle(RemoveWorker(S, w, "test", graceful=graceful))

    def retire(self, a: int, b: int) -> None:
        self.remove_worker(a, b, graceful=True)

    def submit(self, a: int, b: int) -> None:
        keys = sorted(self.state.tasks)
        specs = []
        for j in range(1 + a % 3):
            self.n_keys += 1
            deps = [keys[-1 - (a + k * b) % min(len(keys), 6)] for k in range(b % 4)] if keys else []
            kw = {}
            if b % 7 == 0:
                kw["resources"] = {"GPU": 1}
            if b % 11 == 0:
                kw["retries"] = 1
            specs.append(TaskSpec(f"k{self.n_keys}", "f", b"x", sorted(set(deps)), **kw))
            keys.append(f"k{self.n_keys}")
        self.state.handle(UpdateGraph(S, "c", specs, {"f": b"F"}, [s.key for s in specs]))

    def _processing(self, i: int):
        busy = sorted((ts for ts in self.state.tasks.values() if ts.state == "processing"),
                      key=lambda t: t.key)
        return busy[i % len(busy)] if busy else None

    def finish(self, a: int, b: int) -> None:
        ts = self._processing(a)
        if ts is not None:
            self.state.handle(TaskFinished(S, ts.processing_on.address, ts.key, b))

    def err(self, a: int, b: int) -> None:
        ts = self._processing(a)
        if ts is not None:
            self.state.handle(TaskErred(S, ts.processing_on.address, ts.key, None, "", "boom"))

    def _some_keys(self, a: int, b: int) -> list[str]:
        keys = sorted(self.state.tasks)
        return [keys[(a + i) % len(keys)] for i in range(1 + b % 2)] if keys else []

    def release(self, a: int, b: int) -> None:
        self.state.handle(ClientReleasesKeys(S, "c", self._some_keys(a, b)))

    def cancel(self, a: int, b: int) -> None:
        self.state.handle(CancelKeys(S, "c", self._some_keys(a, b)))

    def missing(self, a: int, b: int) -> None:
        in_memory = sorted(k for k, ts in self.state.tasks.items() if ts.state == "memory")
        w = self._worker(b)
        if in_memory and w is not None:
            key = in_memory[a % len(in_memory)]
            holder = min(ws.address for ws in self.state.tasks[key].who_has)
            self.state.handle(MissingData(S, w, key, holder))

    def scatter(self, a: int, b: int) -> None:
        w = self._worker(a)
        if w is not None:
            self.n_keys += 1
            self.state.handle(UpdateData(S, "c", {f"s{self.n_keys}": [w]}, {f"s{self.n_keys}": b}))

    def steal(self, a: int, b: int) -> None:
        requested = sorted(self.state.stealing.in_flight, key=lambda t: t.key)
        if requested:
            ts = requested[a % len(requested)]
            victim = ts.processing_on.address if ts.processing_on else "gone"
            answer = "released" if b % 3 else "executing"
            self.state.handle(StealResponse(S, victim, ts.key, answer))

    def drain(self) -> None:
        if not self.state.workers:
            self.add_worker(0, 0)
        if not any("GPU" in ws.resources for ws in self.state.workers.values()):
            self.state.handle(AddWorker(S, "gpu", "gpu", 1, 10**9, {"GPU": 1}))
        for _ in range(10_000):
            ts = self._processing(0)
            if ts is None:
                break
            self.state.handle(TaskFinished(S, ts.processing_on.address, ts.key, 1))
            self.state.validate()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_random_events_keep_invariants_and_finish(events):
    d = Driver()
    for name, a, b in events:
        getattr(d, name)(a, b)
        d.state.validate()
    d.drain()
    for ts in d.state.tasks.values():
        if ts.who_wants:
            assert ts.state in ("memory", "erred"), f"{ts.key} stuck in {ts.state}"
        assert ts.state not in ("processing", "queued", "no-worker"), ts
