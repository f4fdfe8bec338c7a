"""Prometheus metrics scraped from the operator, scheduler and worker pods at their pod IPs.

What a PodMonitor would do: GET /metrics on each pod's metrics port (the
operator's 8080, the scheduler's 8787, the workers' 8788), parsed with
prometheus_client's own text parser, with named metrics checked against
what the cluster really did.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.k8s import shoal_tier as tier
from tests.k8s.cluster import KubeNode

TASKS = 25


@pytest.fixture
def operator(kube_node: KubeNode, request: pytest.FixtureRequest) -> Iterator[tier.Operator]:
    with tier.operator_fixture(kube_node, request) as op:
        yield op


def test_metrics_of_every_pod(kube_node: KubeNode, kube_namespace: str,
                              operator: tier.Operator) -> None:
    ns, name = kube_namespace, "observed"
    tier.start_cluster(kube_node, ns, name, workers=2)
    with tier.client_for(kube_node, ns, name) as client:
        assert len(client.gather(client.map(lambda x: x, range(TASKS)))) == TASKS

    operator_ip = operator.pod(kube_node)["status"]["podIP"]
    samples = tier.scrape(f"http://{operator_ip}:8080/metrics")
    assert (tier.metric(samples, "shoal_operator_reconciles_total", handler="reconcile")
            or 0) > 0
    assert (tier.metric(samples, "shoal_operator_clusters", phase="Running") or 0) >= 1
    assert (tier.metric(samples, "shoal_operator_scaling_actions_total", action="create")
            or 0) >= 2

    samples = tier.scrape(f"{tier.scheduler_http(kube_node, ns, name)}/metrics")
    assert tier.metric(samples, "shoal_scheduler_workers", state="running") == 2
    assert tier.metric(samples, "shoal_scheduler_threads") == 2
    assert (tier.metric(samples, "shoal_scheduler_tasks_finished_total") or 0) >= TASKS

    executed = 0.0
    for pod in tier.worker_pods(kube_node, ns, name):
        samples = tier.scrape(f"https://{pod['status']['podIP']}:8788/metrics")
        assert tier.metric(samples, "shoal_worker_threads") == 1
        assert tier.metric(samples, "shoal_worker_memory_limit_bytes") == 512 * 2**20
        executed += tier.metric(samples, "shoal_worker_tasks_executed_total") or 0
    assert executed >= TASKS
