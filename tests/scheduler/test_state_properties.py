"""Random event sequences against the scheduler's state machine.

After every event all invariants must hold (``validate``), and what the
scheduler told the workers must agree with its ``who_has``: a model of each
worker, changed only by the messages the scheduler sends it (and by what the
test makes that worker report), holds exactly the keys the scheduler thinks
it holds.  Once the random phase is over, running every task to completion
must leave each task a client still wants in memory or erred (nothing lost
or stuck), and releasing everything must leave no task, no function, and
workers that hold and run nothing.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.scheduler._events import (
    AddClient,
    AddWorker,
    CancelKeys,
    ClientReleasesKeys,
    ClientWantsKeys,
    Event,
    Heartbeat,
    LongRunning,
    MissingData,
    RemoveClient,
    RemoveWorker,
    StealResponse,
    TaskErred,
    TaskFinished,
    TaskSpec,
    ToWorker,
    UpdateData,
    UpdateGraph,
)
from shoal.scheduler._state import FIRE_AND_FORGET, REJOIN_HOLDER, TRANSITIONS, SchedulerState

from ..stories import check_story, snapshot

S = "prop"
actions = st.lists(
    st.tuples(
        st.sampled_from(["add_worker", "rejoin", "remove_worker", "retire", "submit", "submit",
                         "submit",
                         "finish", "finish", "finish", "finish", "finish", "err", "release",
                         "cancel", "missing", "scatter", "steal", "steal", "secede",
                         "fire_and_forget", "pause"]),
        st.integers(0, 1000),
        st.integers(0, 1000),
    ),
    min_size=10,
    max_size=120,
)


class Workers:
    """What each worker holds and runs, as the scheduler's messages make it."""

    def __init__(self) -> None:
        self.held: dict[str, set[str]] = {}
        self.running: dict[str, set[str]] = {}

    def join(self, address: str) -> None:
        self.held[address] = set()
        self.running[address] = set()

    def leave(self, address: str) -> None:
        self.held.pop(address, None)
        self.running.pop(address, None)

    def receive(self, state: SchedulerState, inst: ToWorker) -> None:
        msg, w = inst.msg, inst.worker
        if w not in self.held:
            return  # sent to a worker that is gone: never arrives
        if msg["op"] == "compute-task":
            assert state.workers[w].status != "paused", f"{msg['key']} given to paused {w}"
            for dep, holders in msg.get("who_has", {}).items():
                assert holders, f"{msg['key']} sent with no holder of its input {dep}"
                for h in holders:
                    assert dep in self.held.get(h, ()), f"told {w} that {h} holds {dep}: it does not"
            self.running[w].add(msg["key"])
        elif msg["op"] == "free-keys":
            for key in msg["keys"]:
                self.held[w].discard(key)
                self.running[w].discard(key)

    def check(self, state: SchedulerState) -> None:
        """The scheduler's who_has is exactly what the workers hold."""
        for w, keys in self.held.items():
            ws = state.workers.get(w)
            assert ws is not None, f"{w} joined but the scheduler forgot it"
            assert {ts.key for ts in ws.has_what} == keys, (
                f"{w}: scheduler thinks {sorted(t.key for t in ws.has_what)}, holds {sorted(keys)}")
            running = {ts.key for ts in ws.processing}
            assert running <= self.running[w], f"{w} is not running {running - self.running[w]}"
            for ts in ws.processing:
                for name, amount in (ts.resource_restrictions or {}).items():
                    assert ws.resources.get(name, 0) >= amount, f"{ts.key} on {w} lacks {name}"
        for ts, thief in state.stealing.in_flight.items():  # asked back only for a valid thief
            for name, amount in (ts.resource_restrictions or {}).items():
                assert thief.resources.get(name, 0) >= amount, f"{ts.key} stolen for {thief}"


class Driver:
    def __init__(self) -> None:
        self.state = SchedulerState(allowed_failures=2)
        self.workers = Workers()
        self.n_keys = 0
        self.n_workers = 0
        self.handle(AddClient(S, "c"))
        self.add_worker(0, 0)

    def handle(self, *events: Event) -> None:
        before = snapshot(self.state.tasks)
        recorded = len(self.state.story_log)
        for inst in self.state.handle(*events):
            if isinstance(inst, ToWorker):
                self.workers.receive(self.state, inst)
        new = self.state.story_log.since(recorded)
        assert all(e[3] == events[-1].stimulus_id for e in new)
        check_story(before, snapshot(self.state.tasks), new, TRANSITIONS)

    def add_worker(self, a: int, b: int) -> None:
        self.n_workers += 1
        name = f"w{self.n_workers}"
        resources = {"GPU": 1} if a % 4 == 0 else {}
        self.workers.join(name)
        self.handle(AddWorker(S, name, name, 1 + a % 2, 10**9, resources))

    def rejoin(self, a: int, b: int) -> None:
        """A worker joins holding data: some keys the scheduler knows, some it does not."""
        self.n_workers += 1
        name = f"w{self.n_workers}"
        keys = sorted(self.state.tasks)
        held = {keys[(a + i) % len(keys)]: b for i in range(b % 3)} if keys else {}
        held[f"old{self.n_workers}"] = a
        self.workers.join(name)
        self.workers.held[name].update(held)
        self.handle(AddWorker(S, name, name, 1, 10**9, keys=held))

    def _worker(self, i: int) -> str | None:
        workers = sorted(self.state.workers)
        return workers[i % len(workers)] if workers else None

    def remove_worker(self, a: int, b: int, graceful: bool = False) -> None:
        w = self._worker(a)
        if w is not None:
            self.workers.leave(w)
            self.handle(RemoveWorker(S, w, "test", graceful=graceful))

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
        self.handle(UpdateGraph(S, "c", specs, {"f": b"F"}, [s.key for s in specs]))

    def _processing(self, i: int):
        busy = sorted((ts for ts in self.state.tasks.values() if ts.state == "processing"),
                      key=lambda t: t.key)
        return busy[i % len(busy)] if busy else None

    def finish(self, a: int, b: int) -> None:
        ts = self._processing(a)
        if ts is not None:
            self._finish(ts, b)

    def _finish(self, ts, nbytes: int) -> None:
        w = ts.processing_on.address
        self.workers.running[w].discard(ts.key)
        self.workers.held[w].add(ts.key)
        self.handle(TaskFinished(S, w, ts.key, nbytes))

    def err(self, a: int, b: int) -> None:
        ts = self._processing(a)
        if ts is not None:
            self.workers.running[ts.processing_on.address].discard(ts.key)
            self.handle(TaskErred(S, ts.processing_on.address, ts.key, None, "", "boom"))

    def _some_keys(self, a: int, b: int) -> list[str]:
        keys = sorted(self.state.tasks)
        return [keys[(a + i) % len(keys)] for i in range(1 + b % 2)] if keys else []

    def release(self, a: int, b: int) -> None:
        self.handle(ClientReleasesKeys(S, "c", self._some_keys(a, b)))

    def cancel(self, a: int, b: int) -> None:
        self.handle(CancelKeys(S, "c", self._some_keys(a, b)))

    def missing(self, a: int, b: int) -> None:
        in_memory = sorted(k for k, ts in self.state.tasks.items() if ts.state == "memory")
        w = self._worker(b)
        if in_memory and w is not None:
            key = in_memory[a % len(in_memory)]
            holder = min(ws.address for ws in self.state.tasks[key].who_has)
            self.workers.held[holder].discard(key)  # it really lost it
            self.handle(MissingData(S, w, key, holder))

    def scatter(self, a: int, b: int) -> None:
        w = self._worker(a)
        if w is None:
            return
        pending = sorted(k for k, ts in self.state.tasks.items() if ts.state != "memory")
        if b % 3 == 0 and pending:  # data arriving for a key that is being computed
            key = pending[a % len(pending)]
            runner = self.state.tasks[key].processing_on
            if runner is not None and runner.address == w:
                return  # the same worker: its own run goes on, and is reported as usual
        else:
            self.n_keys += 1
            key = f"s{self.n_keys}"
        self.workers.held[w].add(key)
        self.handle(UpdateData(S, "c", {key: [w]}, {key: b}))

    def steal(self, a: int, b: int) -> None:
        requested = sorted(self.state.stealing.in_flight, key=lambda t: t.key)
        if requested:
            ts = requested[a % len(requested)]
            victim = ts.processing_on.address if ts.processing_on else "gone"
            answer = "released" if b % 3 else "executing"
            if answer == "released" and victim in self.workers.running:
                self.workers.running[victim].discard(ts.key)
            self.handle(StealResponse(S, victim, ts.key, answer))

    def secede(self, a: int, b: int) -> None:
        """A running task leaves its thread slot: the worker is refilled from the queue."""
        ts = self._processing(a)
        if ts is None:
            return
        ws = ts.processing_on
        self.handle(LongRunning(S, ws.address, ts.key))
        assert ts in ws.long_running and ws.processing[ts] == 0.0
        if ws.status == "running" and self.state.placement.queued:
            assert ws.busy >= self.state.placement.slots(ws), f"{ws.address} not refilled"

    def pause(self, a: int, b: int) -> None:
        """A worker pauses for memory (or resumes): it must be given no new work."""
        w = self._worker(a)
        if w is not None:
            metrics: dict = {"paused": b % 3 != 0}
            if b % 5 == 0:  # paused for good (a full spill disk): may fail what waits
                metrics["memory_stuck_failure"] = "stuck"
            self.handle(Heartbeat(S, w, metrics))

    def fire_and_forget(self, a: int, b: int) -> None:
        self.handle(ClientWantsKeys(S, FIRE_AND_FORGET, self._some_keys(a, b)))

    def drain(self) -> None:
        for w, ws in list(self.state.workers.items()):
            if ws.status == "paused":
                self.handle(Heartbeat(S, w, {"paused": False}))
        if not self.state.workers:
            self.add_worker(0, 0)
        if not any("GPU" in ws.resources for ws in self.state.workers.values()):
            self.workers.join("gpu")
            self.handle(AddWorker(S, "gpu", "gpu", 1, 10**9, {"GPU": 1}))
        for _ in range(10_000):
            ts = self._processing(0)
            if ts is None:
                break
            self._finish(ts, 1)
            self.state.validate()
            self.workers.check(self.state)

    def release_everything(self) -> None:
        self.handle(RemoveClient(S, "c"))
        for holder in (REJOIN_HOLDER, FIRE_AND_FORGET):
            unclaimed = [k for k, ts in self.state.tasks.items() if holder in ts.who_wants]
            self.handle(ClientReleasesKeys(S, holder, unclaimed))


def assert_empty(d: Driver) -> None:
    state = d.state
    assert state.tasks == {}, f"tasks left: {sorted(state.tasks)[:5]}"
    assert state.functions == {} and state.function_refs == {}
    assert not state.placement.queued and not state.stealing.in_flight
    for ws in state.workers.values():
        assert not ws.has_what and not ws.processing and ws.nbytes == 0, ws
        assert ws.occupancy == 0, f"{ws.address}: occupancy {ws.occupancy} with nothing to do"
    for w in d.workers.held:
        assert not d.workers.held[w], f"{w} still holds {d.workers.held[w]}"
        assert not d.workers.running[w], f"{w} still runs {d.workers.running[w]}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_random_events_keep_invariants_and_finish(events):
    d = Driver()
    for name, a, b in events:
        getattr(d, name)(a, b)
        d.state.validate()
        d.workers.check(d.state)
    d.drain()
    for ts in d.state.tasks.values():
        if ts.who_wants:
            assert ts.state in ("memory", "erred"), f"{ts.key} stuck in {ts.state}"
        assert FIRE_AND_FORGET not in ts.who_wants, f"{ts.key} kept for fire-and-forget"
        assert ts.state not in ("processing", "queued", "no-worker"), ts
    d.release_everything()
    d.state.validate()
    d.workers.check(d.state)
    assert_empty(d)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_releasing_everything_mid_computation_leaves_nothing(events):
    d = Driver()
    for name, a, b in events:
        getattr(d, name)(a, b)
    d.release_everything()
    d.state.validate()
    d.workers.check(d.state)
    assert_empty(d)
    # what was running when released was told to stop: nothing more arrives
    for ws in d.state.workers.values():
        assert not ws.processing
