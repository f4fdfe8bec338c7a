"""Bad peers affect only themselves: one regression test per defect of issue 9.

A real scheduler and worker run in this process on loopback TCP; the bad
peers are real connections speaking the real protocol, sending what a buggy
or hostile worker or client would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import socket

import pytest

from shoal import Client
from shoal.cli import main as cli_main
from shoal.comm import connect
from shoal.comm._rpc import MAX_BAD_MESSAGES
from shoal.protocol import serialize
from shoal.worker import Worker
from tests.fuzz.peers import InProcessCluster, Stream, request
from tests.polling import wait_for


@pytest.fixture(scope="module")
def cluster():
    c = InProcessCluster()
    yield c
    c.close()


@pytest.fixture
def client(cluster):
    with Client(cluster.address, timeout=10) as c:
        yield c


def closer(stream: Stream):
    async def close() -> None:
        stream.close()
    return close


def inc(x):
    return x + 1


def fail(x):
    raise ValueError(f"failing on {x}")


# ------------------------------------------------------------ registration


@pytest.mark.parametrize("nthreads", [0, "x", -3, 2.5, True])
def test_a_registration_with_bad_nthreads_is_refused_naming_the_field(cluster, nthreads):
    answer = cluster.run(lambda: request(cluster.address, {
        "op": "register-worker", "address": "tcp://127.0.0.1:9", "name": "bad",
        "nthreads": nthreads, "memory_limit": 0}))
    assert answer["status"] == "error" and answer["field"] == "nthreads"
    assert "nthreads" in answer["message"]
    cluster.healthy()


def test_worker_and_cli_refuse_zero_threads():
    with pytest.raises(ValueError, match="nthreads"):
        Worker("tcp://127.0.0.1:1", nthreads=0)
    with pytest.raises(SystemExit) as exc:
        cli_main(["worker", "tcp://127.0.0.1:1", "--nthreads", "0"])
    assert exc.value.code == 2


@pytest.mark.parametrize("msg", [
    {"op": "register-client", "client": 5},
    {"op": "register-client"},
    {"op": "register-worker", "address": "tcp://127.0.0.1:9"},
    {"op": "register-worker", "address": "tcp://127.0.0.1:9", "name": "n", "nthreads": 1,
     "memory_limit": 0, "resources": {"GPU": "x"}},
])
def test_a_bad_registration_is_answered_not_left_hanging(cluster, msg):
    answer = cluster.run(lambda: request(cluster.address, msg, timeout=5))
    assert answer is not None and answer["status"] == "error"
    cluster.healthy()


# ------------------------------------------------------------ task fields


def test_a_task_with_bad_retries_fails_its_own_future_only(cluster, client):
    bad = client.submit(fail, 1, retries="x")
    with pytest.raises(Exception, match="retries"):
        bad.result(timeout=10)
    assert client.submit(inc, 1).result(timeout=10) == 2
    cluster.healthy()


def test_a_string_resource_amount_is_refused_at_submission(cluster, client):
    bad = client.submit(inc, 2, resources={"GPU": "lots"})
    with pytest.raises(Exception, match="resources"):
        bad.result(timeout=10)
    assert client.submit(inc, 3).result(timeout=10) == 4
    cluster.healthy()


def test_update_data_with_null_or_negative_nbytes_leaves_state_consistent(cluster, client):
    worker = cluster.workers[0].address
    stream = Stream(cluster.address, {"op": "register-client", "client": "scatterer"})

    async def send() -> None:
        await stream.send([{"op": "update-data", "who_has": {"s-1": [worker]}, "nbytes": None},
                           {"op": "update-data", "who_has": {"s-2": [worker]},
                            "nbytes": {"s-2": -5}}])
        stream.close()

    cluster.run(send)
    wait_for(lambda: "scatterer" not in cluster.scheduler.client_streams, 10, "client gone")
    assert "s-1" not in cluster.scheduler.state.tasks
    assert "s-2" not in cluster.scheduler.state.tasks
    cluster.healthy()


def test_a_negative_nbytes_report_fails_that_task_not_the_cluster(cluster, client):
    """A worker reporting nbytes -1 for its task: the task errs, the state is sound."""
    fake = "tcp://127.0.0.1:7"
    stream = Stream(cluster.address, {"op": "register-worker", "address": fake,
                                      "name": "liar", "nthreads": 1, "memory_limit": 0})
    cluster.run(stream.open)
    try:
        future = client.submit(inc, 41, workers=[fake], pure=False)
        wait_for(lambda: any(ts.processing_on is not None and ts.processing_on.address == fake
                             for ts in cluster.scheduler.state.tasks.values()), 10, "assignment")
        cluster.run(lambda: stream.send([{"op": "task-finished", "key": future.key,
                                          "nbytes": -1}]))
        with pytest.raises(Exception, match="invalid report"):
            future.result(timeout=10)
        cluster.scheduler.state.validate()
    finally:
        cluster.run(closer(stream))
    wait_for(lambda: fake not in cluster.scheduler.state.workers, 10, "fake worker removed")
    cluster.healthy()


def test_a_worker_sending_garbage_is_disconnected_after_a_threshold(cluster):
    fake = "tcp://127.0.0.1:8"
    stream = Stream(cluster.address, {"op": "register-worker", "address": fake,
                                      "name": "noisy", "nthreads": 1, "memory_limit": 0})

    async def spam() -> None:
        await stream.open()
        await stream.send([{"op": "heartbeat", "metrics": {"cpu": "hot"}}] * MAX_BAD_MESSAGES)

    cluster.run(spam)
    wait_for(lambda: fake not in cluster.scheduler.state.workers, 10, "noisy worker dropped")
    cluster.run(closer(stream))
    cluster.healthy()


def test_a_request_with_a_bad_field_gets_an_error_naming_it(cluster):
    answer = cluster.run(lambda: request(cluster.address, {"op": "who_has", "keys": [1]}))
    assert answer["status"] == "error" and answer["field"] == "keys[0]"


# ------------------------------------------------------------ the shells


class Unpicklable:
    """Fine where it was made; unpickling it anywhere raises."""

    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise RuntimeError("this value cannot be rebuilt here")


def make_unpicklable(_):
    return Unpicklable()


def length(x):
    return len(pickle.dumps(x)) if not isinstance(x, Unpicklable) else -1


def test_an_input_that_fails_to_unpickle_fails_its_task_and_frees_the_peer(cluster, client):
    a, b = (w.address for w in cluster.workers)
    source = client.submit(make_unpicklable, 0, workers=[a], pure=False)
    consumer = client.submit(length, source, workers=[b], pure=False)
    with pytest.raises(Exception, match="cannot unpickle"):
        consumer.result(timeout=20)
    receiving = cluster.workers[1]
    wait_for(lambda: a not in receiving.state.busy_workers, 10, "the peer no longer busy")
    ok = client.submit(inc, 1, workers=[a], pure=False)
    assert client.submit(inc, ok, workers=[b]).result(timeout=20) == 3  # a to b still works
    cluster.healthy()


def test_a_raising_done_callback_stops_no_result_delivery(cluster, client, caplog):
    first = client.submit(inc, 10)

    def boom(_):
        raise RuntimeError("callback bug")

    with caplog.at_level(logging.ERROR, logger="shoal.client._future"):
        first.add_done_callback(boom)
        assert first.result(timeout=10) == 11
        later = client.map(inc, range(20))
        assert client.gather(later) == list(range(1, 21))
    assert client.status == "running"
    wait_for(lambda: any("callback" in r.getMessage() for r in caplog.records), 10, "logged")


# ------------------------------------------------------------ HTTP


def _http(cluster, head: bytes, body: bytes) -> tuple[int, str]:
    """Send a raw HTTP request; the status and body of the answer."""
    host, port = cluster.scheduler.http_address.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 2:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.decode(errors="replace").partition("\r\n")
    return int(status_line.split()[1]), rest.split("\r\n\r\n", 1)[-1]


def _post_head(length: int) -> bytes:
    return (b"POST /api/v1/retire_workers HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {length}\r\n\r\n".encode())


def test_deeply_nested_json_is_a_400_not_a_500(cluster):
    body = b"[" * 100_000 + b"]" * 100_000
    status, text = _http(cluster, _post_head(len(body)), body)
    assert status == 400 and "nested too deeply" in json.loads(text)["error"]
    cluster.healthy()


def test_a_body_over_the_limit_is_refused_before_it_is_read(cluster):
    status, text = _http(cluster, _post_head(95 * 1024 * 1024), b"{" * 1000)
    assert status == 413 and "limit" in json.loads(text)["error"]
    cluster.healthy()


def test_a_chunked_body_over_the_limit_is_refused(cluster):
    head = (b"POST /api/v1/retire_workers HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * (256 * 1024)
    chunks = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n") * 5 + b"0\r\n\r\n"
    status, text = _http(cluster, head, chunks)
    assert status == 413 and "limit" in json.loads(text)["error"]
    cluster.healthy()


def test_stream_handler_errors_reach_the_peer(cluster):
    async def main() -> dict:
        comm = await connect(cluster.address)
        try:
            await comm.write({"op": "register-client", "client": "twin"})
            assert (await comm.read())["status"] == "ok"
            other = await connect(cluster.address)
            await other.write({"op": "register-client", "client": "twin"})
            async with asyncio.timeout(5):
                answer = await other.read()
            other.abort()
            return answer
        finally:
            comm.abort()

    answer = cluster.run(main)
    assert answer["status"] == "error" and "in use" in answer["message"]


def test_a_large_json_body_is_parsed_off_the_loop_and_judged(cluster):
    body = json.dumps({"n": -1, "pad": "x" * 600_000}).encode()  # over PARSE_ON_THREAD_BYTES
    status, text = _http(cluster, _post_head(len(body)), body)
    assert status == 400 and '"n" must be a non-negative integer' in json.loads(text)["error"]
    cluster.healthy()


def test_a_scatter_with_one_unpicklable_value_keeps_none_of_them(cluster):
    from shoal.protocol import serialize

    worker = cluster.workers[0]
    answer = cluster.run(lambda: request(worker.address, {
        "op": "update_data", "data": {"fine": serialize(1).compact(), "broken": b"\x80\x05junk"}}))
    assert answer["status"] == "error" and "unpickle" in answer["message"]
    assert "fine" not in worker.data and "fine" not in worker.state.tasks
    cluster.healthy()


# ------------------------------------------------------------ pickle bombs

#: 11 bytes that, unguarded, make the unpickler zero a memo of 2**25 entries
#: (0.5 GB; the fuzzer's find named 1.2e9: 19 GB and 30 s of a blocked loop).
BOMB = b"]r" + (2**25).to_bytes(4, "little") + b"."


def test_a_pickle_bomb_sent_to_a_worker_is_refused_and_it_keeps_serving(cluster):
    worker = cluster.workers[0]
    for msg in ({"op": "update_data", "data": {"bomb": BOMB}},
                {"op": "run", "function": BOMB},
                {"op": "run", "function": serialize(inc).compact(), "args": BOMB}):
        answer = cluster.run(lambda msg=msg: request(worker.address, msg))
        assert answer["status"] == "error" and "memo index 33554432" in answer["message"]
    assert "bomb" not in worker.data
    cluster.healthy()


def test_a_pickle_bomb_sent_to_the_scheduler_is_refused_and_it_keeps_serving(cluster):
    for fields in ({"function": BOMB}, {"function": serialize(inc).compact(), "args": BOMB},
                   {"function": serialize(inc).compact(), "kwargs": BOMB}):
        answer = cluster.run(lambda f=fields: request(cluster.address,
                                                      {"op": "run_function", **f}))
        assert answer["status"] == "error" and "memo index 33554432" in answer["message"]
    cluster.healthy()


def test_a_task_whose_arguments_are_a_pickle_bomb_fails_with_a_clear_error(cluster, client):
    """Task arguments are unpickled by the worker that runs the task: that task
    errs, naming the memo index, and the worker goes on running others."""
    async def submit() -> dict:
        comm = await connect(cluster.address)
        try:
            await comm.write({"op": "register-client", "client": "bomber"})
            assert (await comm.read())["status"] == "ok"
            await comm.write({"op": "update-graph", "wanted": ["bomb-1"],
                              "functions": {"inc-fn": serialize(inc).compact()},
                              "tasks": [{"key": "bomb-1", "func": "inc-fn", "args": BOMB}]})
            async with asyncio.timeout(20):
                while True:
                    for msg in _batch(await comm.read()):
                        if msg.get("op") == "task-erred" and msg.get("key") == "bomb-1":
                            return msg
        finally:
            comm.abort()

    erred = cluster.run(submit)
    assert "memo index 33554432" in erred["exception_text"]
    futures = client.map(inc, range(10), pure=False)
    assert [f.result(timeout=20) for f in futures] == list(range(1, 11))
    cluster.healthy()


def _batch(msg: object) -> list[dict]:
    msgs = msg if isinstance(msg, list) else [msg]
    return [m for m in msgs if isinstance(m, dict)]
