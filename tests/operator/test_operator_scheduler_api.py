"""The operator's client of the scheduler HTTP API: paths, JSON shapes, and
errors that kopf retries (TemporaryError) with a message saying where."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import kopf
import pytest
from operator_harness import FakeScheduler

from shoal.operator import scheduler_api
from shoal.operator.metrics import OperatorConfig


@pytest.fixture(autouse=True)
def _restore_resolver() -> Iterator[None]:
    yield
    scheduler_api.set_url_resolver(None)


def test_in_cluster_url_by_default() -> None:
    assert scheduler_api.base_url("c", "ns") == "http://c-scheduler.ns.svc.cluster.local:8787"


def test_calls_follow_the_documented_api() -> None:
    async def scenario() -> None:
        double = FakeScheduler()
        await double.start()
        scheduler_api.set_url_resolver(lambda cluster, namespace: double.url + "/")
        try:
            double.connect("w1", memory=500)
            double.connect("w2", memory=10)
            double.connect("w3", memory=20)
            double.target = 7
            assert await scheduler_api.adaptive_target("c", "ns") == 7
            assert await scheduler_api.idle("c", "ns") == (False, None)
            double.idle_since = 1000.0
            assert await scheduler_api.idle("c", "ns") == (True, 1000.0)
            assert {w["name"] for w in await scheduler_api.workers("c", "ns")} == \
                {"w1", "w2", "w3"}
            assert await scheduler_api.retire_workers("c", "ns", n=1) == ["w2"]
            assert await scheduler_api.retire_workers("c", "ns", names=["w1", "nope"]) == ["w1"]
            assert double.requests[-1] == ("POST", "api/v1/retire_workers",
                                           {"workers": ["w1", "nope"]})
        finally:
            await double.stop()
    asyncio.run(scenario())


def test_unreachable_scheduler_is_a_temporary_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    scheduler_api.set_url_resolver(lambda cluster, namespace: f"http://127.0.0.1:{port}")
    with pytest.raises(kopf.TemporaryError, match=r"scheduler of ns/c is unreachable"):
        asyncio.run(scheduler_api.adaptive_target("c", "ns"))


def test_error_answers_are_temporary_errors_with_the_body() -> None:
    async def scenario() -> None:
        double = FakeScheduler()
        await double.start()
        scheduler_api.set_url_resolver(lambda cluster, namespace: double.url + "/missing")
        try:
            with pytest.raises(scheduler_api.SchedulerUnavailable, match="answered 404"):
                await scheduler_api.workers("c", "ns")
        finally:
            await double.stop()
    asyncio.run(scenario())


def test_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_OPERATOR_RECONCILE_INTERVAL", "2.5")
    monkeypatch.setenv("SHOAL_OPERATOR_SCALE_DOWN_WINDOW", "300")
    config = OperatorConfig.from_environment()
    assert (config.reconcile_interval, config.scale_down_window, config.error_delay) == \
        (2.5, 300.0, 5.0)
