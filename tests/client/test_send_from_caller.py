"""A submit from the user's thread goes straight onto the scheduler's socket
when the stream is idle (Client._send_from_caller), and never overtakes what
the loop still has to send: real processes over real sockets."""

from __future__ import annotations

import threading
from operator import add

from shoal import Client


def inc(x: int) -> int:
    return x + 1


def _record_direct_sends(client: Client) -> list[bool]:
    """What each send_threadsafe of the client's stream answered, from now on."""
    stream = client._stream
    assert stream is not None
    answers: list[bool] = []
    original = stream.send_threadsafe

    def recorded(*msgs):
        answers.append(original(*msgs))
        return answers[-1]

    stream.send_threadsafe = recorded  # type: ignore[method-assign]
    return answers


def test_a_lone_submit_is_written_by_the_calling_thread(proc_client):
    answers = _record_direct_sends(proc_client)
    for i in range(20):  # each waits for its result: nothing queued, the stream idle
        assert proc_client.submit(inc, i).result(timeout=20) == i + 1
    # the loop may be writing something of its own now and then (a round of
    # releases): then the submit goes through the loop, which is as correct
    assert answers.count(True) >= 10


def test_a_submit_never_overtakes_what_is_queued_for_the_loop(proc_client):
    """With the loop held up, a map's slices wait in its queue: the submit
    summing their results finds them there and queues behind them, though
    the stream is idle (written first, it would name keys the scheduler has
    not heard of, and err)."""
    answers = _record_direct_sends(proc_client)
    held, holding = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        held.wait(20)

    proc_client.loop.call_soon_threadsafe(hold)
    assert holding.wait(20)
    try:
        futures = proc_client.map(inc, range(3000), pure=False)
        total = proc_client.submit(sum, futures)
    finally:
        held.set()
    assert total.result(timeout=30) == sum(range(1, 3001))
    assert answers == []  # the submit never tried the socket itself


def test_chains_submitted_from_threads_at_once_come_out_right(proc_client):
    """Submits in a loop, each on the previous result, from several threads:
    direct writes, the flood's batches and the loop's calls interleave."""
    results: dict[int, int] = {}

    def chain(start: int) -> None:
        future = proc_client.submit(inc, start, pure=False)
        for _ in range(99):
            future = proc_client.submit(add, future, 1, pure=False)
        results[start] = future.result(timeout=60)

    threads = [threading.Thread(target=chain, args=(1000 * n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert results == {1000 * n: 1000 * n + 100 for n in range(4)}
