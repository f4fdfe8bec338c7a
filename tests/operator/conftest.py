"""Fixtures of the operator tests; the bench itself is in operator_harness.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from operator_harness import NAMESPACE, Harness, cluster_body, current

from shoal.operator import metrics


@pytest.fixture(autouse=True)
def _fast_operator() -> Iterator[None]:
    saved = (metrics.config.reconcile_interval, metrics.config.scale_down_window)
    metrics.config.reconcile_interval = 0.3
    metrics.config.scale_down_window = 1.5
    yield
    metrics.config.reconcile_interval, metrics.config.scale_down_window = saved


@pytest.fixture(scope="session")
def login_handler() -> None:
    """Point kopf at whatever emulator the current harness runs (registered once)."""
    import kopf

    @kopf.on.login()
    def _login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=current["url"], insecure=True,
                                   default_namespace=NAMESPACE)


@pytest.fixture()
def harness(login_handler: None) -> Iterator[Harness]:
    h = Harness()
    current["url"] = h.url
    try:
        yield h
    finally:
        h.close()


@pytest.fixture()
def operator(harness: Harness) -> Iterator[Harness]:
    harness.start_operator()
    yield harness


@pytest.fixture()
def make_cluster() -> Callable[..., dict[str, Any]]:
    return cluster_body
