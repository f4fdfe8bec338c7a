"""Cluster-wide calls of a dask.distributed Client, on a multi-process cluster:
run_on_scheduler, wait_for_workers, has_what, nthreads/ncores, and
``client.run`` handing ``dask_worker=`` to functions that ask for it."""

from __future__ import annotations

import os
import sys

import pytest

from tests.polling import wait_for


def scheduler_facts(dask_scheduler, extra: int = 0) -> tuple[str, int, int]:
    return dask_scheduler.address, os.getpid(), len(dask_scheduler.state.workers) + extra


def worker_address(prefix: str, dask_worker=None) -> str:
    return prefix + dask_worker.address


def test_run_on_scheduler_injects_the_scheduler(proc_client):
    address, pid, workers = proc_client.run_on_scheduler(scheduler_facts, extra=10)
    assert address == proc_client.scheduler_address
    assert pid != os.getpid() and workers == 12


def test_client_run_injects_dask_worker_and_passes_keywords(proc_client):
    answers = proc_client.run(worker_address, prefix="at ")
    assert answers == {address: f"at {address}" for address in answers}
    assert len(answers) == 2


def test_wait_for_workers_has_what_and_nthreads(proc_client):
    proc_client.wait_for_workers(2, timeout=20)
    with pytest.raises(TimeoutError, match=r"2 of 5 workers joined within timeout=0\.3s"):
        proc_client.wait_for_workers(5, timeout=0.3)
    future = proc_client.submit(sum, [4, 5])
    assert future.result() == 9
    holders = proc_client.who_has([future])[future.key]
    held = proc_client.has_what()
    assert [w for w, keys in held.items() if future.key in keys] == holders
    assert proc_client.has_what(workers=holders) == {holders[0]: held[holders[0]]}
    assert proc_client.nthreads() == {w: 1 for w in held} == proc_client.ncores()


def add_to_path(entry: str) -> None:
    sys.path.insert(0, entry)


def remove_from_path(entry: str) -> None:
    sys.path.remove(entry)


def test_get_versions_and_its_check_name_what_differs(proc_client, tmp_path):
    found = proc_client.get_versions(check=True, packages=("shoal-test-only-package",))
    assert found["client"]["python"] == found["scheduler"]["python"]
    assert set(found["workers"]) == set(proc_client.nthreads())
    assert found["client"]["packages"]["shoal"] is not None
    dist = tmp_path / "site" / "shoal_test_only_package-9.9.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shoal-test-only-package\n"
                                   "Version: 9.9\n")
    proc_client.run(add_to_path, str(tmp_path / "site"))  # on the workers only
    with pytest.raises(ValueError, match="shoal-test-only-package"):
        proc_client.get_versions(check=True, packages=("shoal-test-only-package",))
    proc_client.run(remove_from_path, str(tmp_path / "site"))


def test_upload_file_makes_a_module_importable_on_every_worker(proc_client, tmp_path):
    module = tmp_path / "uploaded_helper_module.py"
    module.write_text("VALUE = 41\n\ndef answer():\n    return VALUE + 1\n")
    paths = proc_client.upload_file(str(module))
    assert set(paths) == set(proc_client.nthreads())

    def use() -> int:
        import uploaded_helper_module

        return uploaded_helper_module.answer()

    assert set(proc_client.run(use).values()) == {42}
    module.write_text("VALUE = 99\n\ndef answer():\n    return VALUE + 1\n")
    proc_client.upload_file(str(module))  # uploaded again: reloaded
    assert set(proc_client.run(use).values()) == {100}


def test_replicate_puts_copies_on_more_workers(proc_client):
    futures = proc_client.map(sum, [[i, 1] for i in range(4)])
    proc_client.replicate(futures, n=2)  # once they are done, as dask's does
    holders = proc_client.who_has(futures)
    assert all(len(holders[f.key]) == 2 for f in futures)
    assert proc_client.gather(futures) == [1, 2, 3, 4]


def test_shutdown_closes_the_scheduler_the_workers_and_the_cluster():
    import psutil

    from shoal import Client, LocalCluster

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        client = Client(cluster.scheduler_address, timeout=20)  # knows no cluster object
        pids = [*client.run(os.getpid).values(), client.run_on_scheduler(os.getpid)]
        client.shutdown()
        assert client.status == "closed"
        wait_for(lambda: not any(running(p) for p in pids), timeout=30,
                 what="the scheduler and worker processes to exit")
    with Client(n_workers=1, threads_per_worker=1, dashboard_address=None) as owner:
        owned = owner.cluster
        owner.shutdown()
        assert owner.status == "closed" and owned.status == "closed"


def held_keys(dask_worker) -> list[str]:
    return sorted(k for k, t in dask_worker.state.tasks.items() if t.state == "memory")


def test_rebalance_evens_out_the_bytes_held_and_who_has_stays_true():
    from shoal import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster, timeout=20) as client:
        first, second = sorted(client.scheduler_info()["workers"])
        futures = client.scatter([bytes([i]) * 200_000 for i in range(10)], workers=[first])
        assert {len(v) for v in client.has_what().values()} == {0, 10}
        client.rebalance(futures[:2])  # only these may move
        assert len(client.has_what()[second]) == 2
        client.rebalance()
        has_what = client.has_what()
        assert sorted(len(v) for v in has_what.values()) == [5, 5]
        assert {k: len(v) for k, v in client.who_has(futures).items()} == {
            f.key: 1 for f in futures}
        assert {a: sorted(keys) for a, keys in has_what.items()} == client.run(held_keys)
        assert client.gather(futures) == [bytes([i]) * 200_000 for i in range(10)]
