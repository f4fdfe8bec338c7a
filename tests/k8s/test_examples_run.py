"""Every file in manifests/examples/ reaches its goal on the real cluster.

Each example is applied unchanged (``kubectl apply -n NS -f FILE``) into a
namespace of its own and served by the session's Helm-installed operator.
The status must be truthful (phase, conditions, ready/desired per group,
addresses) and show in ``kubectl get``'s printer columns; the small cluster
computes; the job succeeds and its cluster is deleted afterwards; the
notebook RBAC grants what KubeCluster needs and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.k8s import shoal_tier as tier
from tests.k8s.cluster import KubeNode
from tests.polling import wait_for

JOB_TIMEOUT = 300.0


@pytest.fixture
def operator(kube_node: KubeNode, request: pytest.FixtureRequest) -> Iterator[tier.Operator]:
    with tier.operator_fixture(kube_node, request) as op:
        yield op


def apply_example(node: KubeNode, namespace: str, filename: str) -> None:
    node.kubectl("apply", "-n", namespace, "-f", str(tier.EXAMPLES / filename))


def printed_row(node: KubeNode, namespace: str, kind: str, name: str,
                *extra: str) -> dict[str, str]:
    """``kubectl get KIND NAME`` as {column: value}."""
    header, row = node.kubectl("get", kind, name, "-n", namespace, *extra).stdout.splitlines()
    return dict(zip(header.split(), row.split(), strict=False))


def assert_truthful(status: dict, namespace: str, name: str, groups: dict[str, int]) -> None:
    assert tier.conditions(status) == {"SpecValid": "True", "SchedulerReady": "True",
                                       "WorkersReady": "True", "Secured": "True"}, \
        status["conditions"]
    assert status["workerGroups"] == {g: {"desired": n, "ready": n} for g, n in groups.items()}
    host = f"{name}-scheduler.{namespace}.svc.cluster.local"
    assert status["schedulerAddress"] == f"tls://{host}:8786"
    assert status["dashboardAddress"] == f"https://{host}:8787"
    assert status["security"]["clientSecret"] == f"{name}-client-tls"
    assert "message" not in status  # nothing to explain once Running


def test_small_cluster(kube_node: KubeNode, kube_namespace: str,
                       operator: tier.Operator) -> None:
    apply_example(kube_node, kube_namespace, "small-cluster.yaml")
    status = tier.wait_running(kube_node, kube_namespace, "small", workers=2)
    assert_truthful(status, kube_namespace, "small", {"default": 2})
    row = printed_row(kube_node, kube_namespace, "shoalcluster", "small", "-o", "wide")
    assert (row["PHASE"], row["WORKERS"], row["DESIRED"]) == ("Running", "2", "2"), row
    assert row["SCHEDULER"] == status["schedulerAddress"]
    for pod in tier.worker_pods(kube_node, kube_namespace, "small"):
        (container,) = pod["spec"]["containers"]
        assert container["image"] == tier.IMAGE and container["imagePullPolicy"] == "IfNotPresent"
        assert container["resources"]["limits"]["memory"] == "1Gi"
    with tier.client_for(kube_node, kube_namespace, "small") as client:
        assert sum(client.gather(client.map(lambda x: x * x, range(100)))) == 328350
        workers = {w["name"] for w in client.scheduler_info()["workers"].values()}
    assert workers == {p["metadata"]["name"]
                       for p in tier.worker_pods(kube_node, kube_namespace, "small")}


def test_autoscaling_gpu_cluster(kube_node: KubeNode, kube_namespace: str,
                                 operator: tier.Operator) -> None:
    apply_example(kube_node, kube_namespace, "autoscaling-gpu-cluster.yaml")
    # No GPU node here: the gpu group stays at its minimum, zero; cpu at its minimum, one.
    status = tier.wait_running(kube_node, kube_namespace, "autoscaling", workers=1)
    assert_truthful(status, kube_namespace, "autoscaling", {"cpu": 1, "gpu": 0})
    row = printed_row(kube_node, kube_namespace, "shoalcluster", "autoscaling")
    assert (row["PHASE"], row["WORKERS"], row["DESIRED"]) == ("Running", "1", "1"), row
    (pod,) = tier.worker_pods(kube_node, kube_namespace, "autoscaling")
    assert pod["metadata"]["labels"]["shoal.dev/worker-group"] == "cpu"


def test_job(kube_node: KubeNode, kube_namespace: str, operator: tier.Operator) -> None:
    apply_example(kube_node, kube_namespace, "job.yaml")
    job = "monte-carlo-pi"

    def finished() -> dict | None:
        found = tier.get(kube_node, kube_namespace, "shoaljob", job) or {}
        phase = (found.get("status") or {}).get("phase")
        return found["status"] if phase in ("Succeeded", "Failed") else None

    status = wait_for(finished, timeout=JOB_TIMEOUT, what="the job finished", interval=1)
    logs = kube_node.kubectl("logs", "-n", kube_namespace, f"{job}-runner").stdout
    assert status["phase"] == "Succeeded", (status, logs)
    assert "pi is about 3.1" in logs, logs
    assert status["startTime"] <= status["endTime"]
    assert status["clusterName"] == f"{job}-cluster"
    row = printed_row(kube_node, kube_namespace, "shoaljob", job)
    assert (row["PHASE"], row["CLUSTER"]) == ("Succeeded", f"{job}-cluster"), row
    tier.wait_gone(kube_node, kube_namespace, "shoalcluster", f"{job}-cluster")
    wait_for(lambda: not tier.pods(kube_node, kube_namespace,
                                   f"shoal.dev/cluster={job}-cluster,"
                                   "shoal.dev/component in (scheduler,worker)"),
             timeout=120, what="the job's cluster pods gone", interval=tier.POLL)


def test_notebook_rbac(kube_node: KubeNode, kube_namespace: str,
                       operator: tier.Operator) -> None:
    # the operator's install brings the CRDs: without them the resource is unknown
    # to the authorizer and every can-i answers no (alone, nothing installed them)
    apply_example(kube_node, kube_namespace, "notebook-rbac.yaml")
    account = f"system:serviceaccount:{kube_namespace}:shoal-notebook"

    def allowed(*args: str, namespace: str = kube_namespace) -> bool:
        answer = kube_node.kubectl("auth", "can-i", *args, "-n", namespace,
                                   f"--as={account}", check=False)
        return answer.stdout.strip() == "yes"

    # the API server's authorizer learns of a new RoleBinding from its watch,
    # a moment after the apply returns
    wait_for(lambda: allowed("get", "shoalclusters.shoal.dev"), timeout=60,
             what="the notebook's RoleBinding in effect", interval=tier.POLL)
    for verb in ("create", "get", "patch", "delete", "watch"):
        assert allowed(verb, "shoalclusters.shoal.dev"), verb
    assert allowed("get", "pods", "--subresource=log")
    assert allowed("get", "secrets")  # a cluster's client credentials, by name
    assert not allowed("list", "secrets") and not allowed("watch", "secrets")
    assert not allowed("create", "pods")
    assert not allowed("create", "shoalclusters.shoal.dev", namespace="default")
