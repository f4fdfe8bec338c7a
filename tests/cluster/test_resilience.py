"""Never lose work: killed workers, retirement, memory pressure, poison tasks."""

from __future__ import annotations

import os
import random
import signal
import time

import numpy as np
import pytest

from shoal import Client, DataUnavailableError, Event, LocalCluster, WorkerMemoryError
from shoal.worker import get_worker

from ..fuzz.peers import InProcessCluster
from ..polling import wait_for
from ..small_disk import small_filesystem


def add(a: int, b: int) -> int:
    return a + b


def one(i: int) -> int:
    return 1


def tree_sum(client: Client, leaves: list) -> object:
    level = leaves
    while len(level) > 1:
        level = [client.submit(add, level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    return level[0]


#: The chaos test's strength: that many SIGKILLs, whatever the machine's speed.
CHAOS_KILLS = 8
CHAOS_LEAVES_PER_ROUND = 1024
#: A round's kill comes once this many of its leaves are done.
CHAOS_KILL_AFTER = 512


def kill_a_worker_holding_data(client: Client, rng: random.Random, dead: set[int]) -> None:
    """SIGKILL one of the scheduler's workers that holds results (with all three up)."""

    def victims() -> list[int]:
        workers = client.scheduler_info()["workers"].values()
        pids = {w["pid"] for w in workers}
        if len(pids) < 3 or pids & dead:
            return []  # a killed worker is not replaced yet
        return sorted(w["pid"] for w in workers if w["in_memory"] > 0)

    pid = rng.choice(wait_for(victims, 60, "three workers, one of them holding results"))
    os.kill(pid, signal.SIGKILL)
    dead.add(pid)


def test_chaos_tree_reduction_survives_sigkills():
    """A 16,383-task tree reduction with a worker SIGKILLed in each of its 8 rounds.

    The kills are paced by progress, not by the clock: round ``r`` submits
    its leaves and their subtree, and once half of its leaves are done a
    worker holding results is killed, before the next round (and the final
    sum) exist.  Every run kills exactly ``CHAOS_KILLS`` times, each while
    the answer still depends on what the killed worker held.
    """
    with LocalCluster(n_workers=3, threads_per_worker=1, dashboard_address=None,
                      memory_limit="2GiB") as cluster, Client(cluster) as client:
        rng = random.Random(7)
        dead: set[int] = set()
        leaves: list = []
        roots = []
        for r in range(CHAOS_KILLS):
            first = r * CHAOS_LEAVES_PER_ROUND
            batch = client.map(one, range(first, first + CHAOS_LEAVES_PER_ROUND))
            leaves += batch
            roots.append(tree_sum(client, batch))
            wait_for(lambda b=batch: sum(f.done() for f in b) >= CHAOS_KILL_AFTER, 120,
                     f"{CHAOS_KILL_AFTER} leaves of round {r}")
            kill_a_worker_holding_data(client, rng, dead)
        total = tree_sum(client, roots)
        assert total.result(timeout=240) == CHAOS_KILLS * CHAOS_LEAVES_PER_ROUND
        assert len(dead) == CHAOS_KILLS
        counts = client.scheduler_info()["counts"]
        assert counts["finished"] >= 2 * len(leaves) - 1
        assert counts["lost"] >= CHAOS_KILLS  # the kills destroyed results, recomputed since


def record_and_make(i: int, log: str) -> bytes:
    with open(log, "a") as f:
        f.write(f"{i}\n")
    return bytes(1000) + str(i).encode()


def slow_len(x: bytes) -> int:
    time.sleep(0.01)
    return len(x)


def test_retiring_half_the_workers_recomputes_nothing(tmp_path):
    log = str(tmp_path / "executions")
    with LocalCluster(n_workers=4, threads_per_worker=1, dashboard_address=None,
                      nanny=False) as cluster, Client(cluster) as client:
        data = client.map(record_and_make, range(200), log=log)
        client.gather(data)
        lengths = client.map(slow_len, data)
        retired = client.retire_workers(n=2)
        assert len(retired) == 2
        assert sum(client.gather(lengths)) == sum(len(record_and_make(i, os.devnull))
                                                  for i in range(200))
        with open(log) as f:
            executions = f.read().split()
        assert sorted(map(int, executions)) == list(range(200))  # each exactly once
        info = client.scheduler_info()
        assert len(info["workers"]) == 2 and info["counts"]["recomputed"] == 0
        assert len(client.gather(data)) == 200


def block_of(i: int) -> bytes:
    return bytes([i]) * 100_000  # too big to come inline with the task's report


def test_a_gather_through_the_scheduler_passes_over_a_holder_it_cannot_reach():
    """A worker still registered but no longer answering (closing, or cut off) costs a
    client that fetches through the scheduler nothing while another worker has a copy;
    with no other copy the client is told the data is unavailable, not that it broke."""
    cluster = InProcessCluster()
    try:
        with Client(cluster.address, timeout=10, direct_to_workers=False) as client:
            copied = client.submit(block_of, 1)
            client.replicate([copied], n=2)
            holders = client.who_has([copied])[copied.key]  # replicate waited for both
            assert len(holders) == 2
            first = next(w for w in cluster.workers if w.address == holders[0])
            alone = client.submit(block_of, 2, workers=[first.address])
            alone.result(timeout=10)

            async def cut_off() -> None:
                first.rpc.stop()  # its comms close; its scheduler stream stays
            cluster.run(cut_off)
            assert client.gather(copied) == block_of(1)
            with pytest.raises(DataUnavailableError, match=alone.key):
                client.gather(alone)
            assert first.address in client.scheduler_info()["workers"]
    finally:
        cluster.close()


def make_block(i: int) -> np.ndarray:
    return np.full(25 * 2**20 // 8, i, dtype="f8")  # 25 MiB


def spilled_bytes() -> int:
    return get_worker().data.spilled_bytes


def test_results_larger_than_memory_complete_by_spilling():
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                      memory_limit="400MiB", nanny=False) as cluster, Client(cluster) as client:
        blocks = client.map(make_block, range(24))  # 600 MiB held in all
        sums = client.gather(client.map(lambda b: float(b[0]), blocks))
        assert sums == [float(i) for i in range(24)]
        assert sum(client.run(spilled_bytes).values()) > 100 * 2**20
        assert float(client.gather(blocks[0])[0]) == 0.0  # read back from disk


def crash_worker() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_task_that_kills_its_workers_is_failed_clearly():
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        poison = client.submit(crash_worker, pure=False)
        with pytest.raises(Exception, match="died") as info:
            poison.result(timeout=120)
        assert poison.key in str(info.value)
        wait_for(lambda: len(client.scheduler_info()["workers"]) == 2, 60, "nannies restart")
        assert client.submit(add, 1, 1).result(timeout=30) == 2


def test_lost_scattered_data_fails_only_its_futures(proc_cluster):
    with Client(proc_cluster) as client:
        workers = sorted(client.scheduler_info()["workers"])
        kept = client.scatter(5, workers=[workers[1]])
        doomed = client.scatter(7, workers=[workers[0]])
        pid = client.run(os.getpid)[workers[0]]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(Exception, match="scattered data"):
            client.submit(add, doomed, 1).result(timeout=30)
        assert client.submit(add, kept, 1).result(timeout=30) == 6


def test_silent_worker_is_removed_after_its_ttl():
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None, nanny=False,
                      worker_ttl=1.0) as cluster, Client(cluster) as client:
        workers = client.run(os.getpid)
        frozen_address, frozen = min(workers.items())
        os.kill(frozen, signal.SIGSTOP)
        try:
            wait_for(lambda: frozen_address not in client.scheduler_info()["workers"], 30,
                       "the silent worker being removed")
            assert client.gather(client.map(add, range(20), range(20))) == [
                2 * i for i in range(20)]
        finally:
            os.kill(frozen, signal.SIGCONT)


def make_mib(i: int, mib: int) -> np.ndarray:
    return np.full(mib * 2**20 // 8, i, dtype="f8")


def first_value(block: np.ndarray) -> float:
    return float(block[0])


def worker_directories(local: str) -> list[str]:
    space = os.path.join(local, "shoal-worker-space")
    return sorted(n for n in os.listdir(space) if not n.endswith(".dirlock"))


def used_bytes(path: str) -> int:
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def spill_some(client: Client, n: int = 24) -> list:
    """``n`` results of 10 MiB: beyond a 300 MiB worker's target, so some go to disk."""
    blocks = client.map(make_mib, range(n), mib=10)
    client.gather(client.map(first_value, blocks))
    wait_for(lambda: sum(client.run(spilled_bytes).values()) > 30 * 2**20, 30, "spilling")
    return blocks


def test_a_sigkilled_workers_spill_files_are_removed_by_its_nanny():
    with small_filesystem("256m") as disk, LocalCluster(
            n_workers=1, threads_per_worker=1, dashboard_address=None, memory_limit="300MiB",
            local_directory=disk) as cluster, Client(cluster) as client:
        blocks = spill_some(client)
        [killed] = worker_directories(disk)
        assert used_bytes(disk) > 30 * 2**20
        [pid] = client.run(os.getpid).values()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: killed not in worker_directories(disk), 30,
                 "the nanny removing its dead worker's directory")
        del blocks  # else the restarted worker recomputes and spills them again
        wait_for(lambda: [w["pid"] for w in client.scheduler_info()["workers"].values()
                          if w["pid"] != pid], 60, "the restarted worker")
        wait_for(lambda: used_bytes(disk) < 2**20, 30, "no spill files left")


def test_spill_files_of_workers_without_a_nanny_go_at_exit_or_with_the_next_worker():
    with small_filesystem("256m") as disk:
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                          memory_limit="300MiB", nanny=False, local_directory=disk) as cluster, \
                Client(cluster) as client:
            blocks = spill_some(client, 48)
            assert len(worker_directories(disk)) == 2
            pids = client.run(os.getpid)
            spilled = client.run(spilled_bytes)
            os.kill(pids[max(spilled, key=spilled.get)], signal.SIGKILL)
            wait_for(lambda: len(client.scheduler_info()["workers"]) == 1, 30, "its removal")
            del blocks
        [stale] = worker_directories(disk)  # the live one removed its own at exit
        assert used_bytes(disk) > 2**20
        with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                          memory_limit="300MiB", nanny=False, local_directory=disk) as again, \
                Client(again) as client:
            assert stale not in worker_directories(disk)  # purged by the new worker
            assert client.submit(add, 1, 1).result(timeout=30) == 2
        assert worker_directories(disk) == [] and used_bytes(disk) < 2**20


def test_a_full_spill_disk_fails_the_result_that_fits_nowhere_clearly():
    """No silent pause and no nanny kills: the client hears why, the worker lives on."""
    with small_filesystem("8m") as disk, LocalCluster(
            n_workers=1, threads_per_worker=1, dashboard_address=None, memory_limit="600MiB",
            local_directory=disk) as cluster, Client(cluster) as client:
        # target 360 MiB, pause 480, terminate 570: with the interpreter's own
        # memory (under 90 MiB), 300 MiB of results fit, 480 do not
        [pid] = client.run(os.getpid).values()
        kept = [client.submit(make_mib, i, 150) for i in range(2)]
        client.gather(client.map(first_value, kept))
        refused = client.submit(make_mib, 2, 180)  # over target: needs the disk, which is full
        with pytest.raises(Exception, match="No space left on device") as info:
            refused.result(timeout=60)
        assert "does not fit" in str(info.value) and refused.key in str(info.value)
        assert client.gather(client.map(first_value, kept)) == [0.0, 1.0]
        del kept
        assert client.submit(first_value, client.submit(make_mib, 3, 50)).result(60) == 3.0
        assert list(client.run(os.getpid).values()) == [pid]  # never killed for memory


_kept_apart: list[bytes] = []


def free_but_resident(mib: int) -> int:
    """Free ``mib`` MiB of heap in 64 KiB chunks kept apart by small live ones.

    Freed, yet resident: the allocator keeps the holes.  Only giving them
    back (malloc_trim) lowers the process's memory.
    """
    chunks = []
    for i in range(mib * 16):
        chunks.append(bytes([i % 250 + 1]) * 65536)
        _kept_apart.append(bytes(1000))
    del chunks
    return len(_kept_apart)


def check_memory() -> dict:
    check = get_worker().check_memory()
    return {"paused": check.paused, "rss": check.rss, "stuck": check.stuck}


def test_a_worker_paused_by_freed_memory_gives_it_back_and_resumes():
    """The spilling hang: nothing left to spill, memory freed but resident, paused for ever."""
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                      memory_limit="300MiB", nanny=False) as cluster, Client(cluster) as client:
        assert client.submit(free_but_resident, 260).result(timeout=60) == 260 * 16
        [check] = client.run(check_memory).values()
        assert not check["paused"], check
        assert client.submit(add, 1, 1).result(timeout=30) == 2


_leaked: list[bytes] = []


def leak(mib: int) -> int:
    _leaked.append(bytes([1]) * (mib * 2**20))
    return mib


def plug_the_leak() -> None:
    _leaked.clear()


def test_a_worker_paused_by_memory_that_is_not_results_says_so():
    """Memory task code keeps cannot be spilled: the pause is reported, never silent."""
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None,
                      memory_limit="300MiB", nanny=False) as cluster, Client(cluster) as client:
        assert client.submit(leak, 260).result(timeout=60) == 260
        [check] = client.run(check_memory).values()
        assert check["paused"] and "nothing left to spill" in check["stuck"]

        def reported() -> object:
            [info] = client.scheduler_info()["workers"].values()
            metrics = info["metrics"]
            return metrics.get("memory_stuck") and metrics["memory_unmanaged"] > 250 * 2**20

        wait_for(reported, 30, "the heartbeat telling the scheduler why the worker is paused")
        client.run(plug_the_leak)
        [check] = client.run(check_memory).values()
        assert not check["paused"] and check["stuck"] is None
        assert client.submit(add, 1, 1).result(timeout=30) == 2


def wait_for_gate(name: str) -> str:
    Event(name).wait(timeout=120)
    return get_worker().address


def where(i: int) -> str:
    return get_worker().address


def test_a_paused_worker_gets_no_new_work_its_waiting_work_moves_and_it_resumes():
    """As dask's ``paused`` status: placement and stealing skip it, what waits on it
    unstarted goes to the others, what it started it finishes, and resumed it works."""
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                      memory_limit="300MiB", nanny=False) as cluster, Client(cluster) as client:
        a, b = sorted(client.scheduler_info()["workers"])

        def status(worker: str) -> str:
            return client.scheduler_info()["workers"][worker]["status"]

        def processing_on_a() -> int:
            return client.scheduler_info()["workers"][a]["executing"]

        gate = Event("gate", client=client)
        started = client.submit(wait_for_gate, "gate", workers=[a], pure=False)
        waiting = [client.submit(where, i, workers=[a], allow_other_workers=True, pure=False)
                   for i in range(4)]  # behind the gate on a's only thread
        wait_for(lambda: processing_on_a() == 5, 30, "five tasks on a")
        client.run(leak, 260, workers=[a])  # memory task code keeps: a pauses
        [check] = client.run(check_memory, workers=[a]).values()
        assert check["paused"]
        # reported at once (its stream is another connection than ours: not yet read)
        wait_for(lambda: status(a) == "paused", 10, "the scheduler hearing of the pause")
        assert [f.result(timeout=60) for f in waiting] == [b] * 4  # moved to b
        assert set(client.gather(client.map(where, range(20), pure=False))) == {b}
        only_a = client.submit(where, 100, workers=[a], pure=False)
        assert not started.done() and not only_a.done()
        gate.set()
        assert started.result(timeout=60) == a  # what it started, it finishes
        client.run(plug_the_leak, workers=[a])
        [check] = client.run(check_memory, workers=[a]).values()
        assert not check["paused"]
        wait_for(lambda: status(a) == "running", 10, "the scheduler hearing of the resume")
        assert only_a.result(timeout=60) == a  # resumed: given work again


def test_tasks_stuck_behind_a_full_spill_disk_fail_clearly_instead_of_waiting_for_ever():
    """Paused, nothing spillable fits on the disk, nothing running: the waiting task errs."""
    with small_filesystem("8m") as disk, LocalCluster(
            n_workers=1, threads_per_worker=1, dashboard_address=None, memory_limit="600MiB",
            nanny=False, local_directory=disk, memory_stuck_timeout=1.0) as cluster, \
            Client(cluster) as client:
        # target 360 MiB, spill 420, pause 480: 300 MiB of results and 170 MiB
        # kept by task code (plus the interpreter) are over the pause threshold,
        # and the results cannot go to an 8 MiB disk
        [pid] = client.run(os.getpid).values()
        kept = [client.submit(make_mib, i, 150) for i in range(2)]
        client.gather(client.map(first_value, kept))
        client.run(leak, 170)

        def stuck_on_the_disk() -> object:
            [info] = client.scheduler_info()["workers"].values()
            metrics = info["metrics"]
            return metrics.get("paused") and metrics.get("spill_error")

        wait_for(stuck_on_the_disk, 30, "the worker paused with a full spill disk")
        waiting = client.submit(add, 1, 2)
        with pytest.raises(WorkerMemoryError, match="cannot start this task") as info:
            waiting.result(timeout=60)
        assert f"cannot spill to {disk}" in str(info.value)
        assert "No space left on device" in str(info.value)
        client.run(plug_the_leak)
        wait_for(lambda: not stuck_on_the_disk(), 30, "the worker resuming")
        assert client.gather(client.map(first_value, kept)) == [0.0, 1.0]
        assert client.submit(add, 2, 2).result(timeout=30) == 4  # works again
        assert list(client.run(os.getpid).values()) == [pid]
