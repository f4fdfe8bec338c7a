"""Tasks that submit tasks, on a multi-process cluster: ``get_client``,
``worker_client``, ``secede``/``rejoin``, ``get_worker``; a task waiting on its
subtasks never deadlocks the cluster."""

from __future__ import annotations

import pytest

from shoal import Client, get_client, get_worker, rejoin, secede, wait, worker_client


@pytest.fixture
def client(proc_client: Client) -> Client:
    return proc_client


def inc(x: int) -> int:
    return x + 1


def fan_out(n: int) -> int:
    with worker_client() as client:
        return sum(client.gather(client.map(inc, range(n), pure=False)))


def two_levels(n: int) -> tuple[int, str]:
    client = get_client()
    secede()
    total = client.submit(fan_out, n, pure=False).result()
    rejoin()
    return total, get_worker().address


def test_more_waiting_tasks_than_threads_do_not_deadlock(client):
    parents = client.map(fan_out, range(2, 10))  # 8 parents, 2 threads in the cluster
    _, not_done = wait(parents, timeout=60)
    assert not not_done
    assert client.gather(parents) == [sum(range(1, n + 1)) for n in range(2, 10)]


def test_get_client_secede_rejoin_and_get_worker_at_top_level(client):
    futures = [client.submit(two_levels, n, pure=False) for n in (3, 4, 5)]
    results = client.gather(futures)
    assert [total for total, _ in results] == [6, 10, 15]
    where = client.who_has(futures)
    assert [address for _, address in results] == [where[f.key][0] for f in futures]


def test_secede_outside_a_task_is_a_clear_error():
    with pytest.raises(ValueError, match="inside a task"):
        secede()

