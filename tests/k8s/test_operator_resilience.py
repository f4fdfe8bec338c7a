"""Faults and edge cases on the real cluster.

- a worker pod deleted by hand is replaced, and the results it held are
  recomputed from lineage (nothing a client holds is lost);
- the scheduler pod deleted by hand: its Deployment starts a new one; the
  old scheduler stops its workers as it shuts down, the operator replaces
  them, and the cluster is Running again with fresh workers; the old
  scheduler's tasks and results are gone (clients connect and submit anew);
- the operator killed (SIGKILL) in the middle of scaling up and of scaling
  down: it restarts, recounts, and ends with exactly the wanted pods, each
  owned by its ShoalCluster and known to the scheduler, no result lost;
- two ShoalClusters of the same name in two namespaces at once;
- an invalid spec refused by the API server's schema where a schema can
  say it, else by the operator with phase Failed, a SpecValid=False
  condition and a Warning event, and fixed by editing the spec;
- deleting a ShoalCluster removes every child (the real garbage collector,
  through ownerReferences; no finalizer).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.k8s import shoal_tier as tier
from tests.k8s.cluster import KubeNode
from tests.polling import wait_for


@pytest.fixture
def operator(kube_node: KubeNode, request: pytest.FixtureRequest) -> Iterator[tier.Operator]:
    with tier.operator_fixture(kube_node, request) as op:
        yield op


def owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    return any(ref["uid"] == owner["metadata"]["uid"] and ref["kind"] == owner["kind"]
               for ref in obj["metadata"].get("ownerReferences", []))


def test_a_worker_pod_deleted_by_hand_is_replaced_and_recomputed(
        kube_node: KubeNode, kube_namespace: str, operator: tier.Operator) -> None:
    ns, name = kube_namespace, "victim"
    tier.start_cluster(kube_node, ns, name, workers=2)
    url = tier.scheduler_http(kube_node, ns, name)
    with tier.client_for(kube_node, ns, name, timeout=60) as client:
        held = tier.HeldResults(client, 30)
        before = tier.wait_scheduler_knows(kube_node, ns, name)
        victim = max(before, key=lambda pod: held.on({pod}))
        on_victim = held.on({victim})
        assert on_victim > 0
        kube_node.kubectl("delete", "pod", victim, "-n", ns, "--wait=true")
        tier.wait_running(kube_node, ns, name, workers=2)
        after = tier.wait_scheduler_knows(kube_node, ns, name)
        assert victim not in after and len(after - before) == 1
        lost = held.lost()  # gathers every result: the lost ones are computed again
        assert len(lost) == on_victim, (lost, on_victim)
        assert tier.recomputed(url) >= on_victim
    tier.log(f"worker pod deleted: replaced; {on_victim} results it held were recomputed")


def test_the_scheduler_pod_deleted_by_hand(kube_node: KubeNode, kube_namespace: str,
                                           operator: tier.Operator) -> None:
    ns, name = kube_namespace, "headless"
    tier.start_cluster(kube_node, ns, name, workers=2)
    workers = tier.wait_scheduler_knows(kube_node, ns, name)
    old = tier.scheduler_pod(kube_node, ns, name)
    kube_node.kubectl("delete", "pod", old["metadata"]["name"], "-n", ns, "--wait=true")

    def new_scheduler() -> dict[str, Any] | None:
        pod = tier.scheduler_pod(kube_node, ns, name)
        return pod if pod["metadata"]["uid"] != old["metadata"]["uid"] else None

    wait_for(new_scheduler, timeout=tier.POD_START, interval=tier.POLL,
             what="a new scheduler pod from the Deployment")
    tier.wait_running(kube_node, ns, name, workers=2)
    # A scheduler that is stopped tells its workers to stop too: their pods
    # complete, and the operator replaces them with workers of the new scheduler.
    replaced = tier.wait_scheduler_knows(kube_node, ns, name, timeout=120)
    assert len(replaced) == 2 and replaced.isdisjoint(workers), (workers, replaced)
    with tier.client_for(kube_node, ns, name) as client:
        assert client.gather(client.submit(sum, [1, 2, 3])) == 6


def kill_operator(node: KubeNode, operator: tier.Operator) -> None:
    """SIGKILL the operator's process through containerd: a crash, not a graceful stop."""
    pod = operator.pod(node)
    container = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    node.ctr("tasks", "kill", "--signal", "SIGKILL", container)

    def restarted() -> bool:
        found = tier.pods(node, operator.namespace, tier.OPERATOR_SELECTOR)
        return any(tier.pod_ready(p) and p["status"]["containerStatuses"][0]["restartCount"] >
                   pod["status"]["containerStatuses"][0]["restartCount"] for p in found)

    wait_for(restarted, timeout=180, interval=tier.POLL, what="the operator restarted")


def assert_exactly(node: KubeNode, namespace: str, name: str, n: int) -> None:
    """n worker pods, each owned by the ShoalCluster and known to its scheduler."""
    cluster = tier.get(node, namespace, "shoalcluster", name)
    assert cluster is not None
    pods = tier.worker_pods(node, namespace, name)
    assert len(pods) == n, [p["metadata"]["name"] for p in pods]
    assert all(owned_by(p, cluster) for p in pods)
    assert len(tier.wait_scheduler_knows(node, namespace, name)) == n


def test_the_operator_killed_while_scaling(kube_node: KubeNode, kube_namespace: str,
                                           operator: tier.Operator) -> None:
    ns, name = kube_namespace, "steady"
    tier.start_cluster(kube_node, ns, name, workers=1)
    with tier.client_for(kube_node, ns, name, timeout=60) as client:
        held = tier.HeldResults(client, 20)
        kube_node.kubectl("scale", f"shoalcluster/{name}", "--replicas=4", "-n", ns)
        kill_operator(kube_node, operator)
        tier.wait_running(kube_node, ns, name, workers=4)
        assert_exactly(kube_node, ns, name, 4)
        kube_node.kubectl("scale", f"shoalcluster/{name}", "--replicas=2", "-n", ns)
        wait_for(lambda: len(tier.worker_pods(kube_node, ns, name)) < 4, timeout=60,
                 interval=0.2, what="scale-down under way")
        kill_operator(kube_node, operator)
        tier.wait_running(kube_node, ns, name, workers=2)
        assert_exactly(kube_node, ns, name, 2)
        assert held.lost() == []
        assert tier.recomputed(tier.scheduler_http(kube_node, ns, name)) == 0


@pytest.fixture
def second_namespace(kube_node: KubeNode, kube_namespace: str) -> Iterator[str]:
    name = f"{kube_namespace[:50]}-b"
    kube_node.kubectl("create", "namespace", name)
    yield name
    kube_node.kubectl("delete", "namespace", name, "--wait=false")  # as kube_namespace


def test_two_clusters_in_two_namespaces(kube_node: KubeNode, kube_namespace: str,
                                        second_namespace: str, operator: tier.Operator) -> None:
    spaces = (kube_namespace, second_namespace)
    for ns in spaces:
        tier.apply(kube_node, ns, tier.cluster_spec("twin", workers=1))
    for ns in spaces:
        tier.wait_running(kube_node, ns, "twin", workers=1)
    clients = [tier.client_for(kube_node, ns, "twin") for ns in spaces]
    try:
        futures = [c.map(lambda x, k=k: x * k, range(50)) for k, c in enumerate(clients, 1)]
        assert [sum(c.gather(f)) for c, f in zip(clients, futures, strict=True)] == [1225, 2450]
    finally:
        for c in clients:
            c.close()
    for ns in spaces:
        assert tier.wait_scheduler_knows(kube_node, ns, "twin") == tier.pod_names(
            kube_node, ns, "twin")


SCHEMA_REFUSALS = {
    "spec.workerGroups.memory": {"name": "a", "memory": "4 gigs"},
    "spec.workerGroups.nthreads": {"name": "a", "nthreads": 0},
    "spec.workerGroups.name": {"name": "Not_A_Label"},
    "spec.workerGroups.resources.requests.cpu": {"name": "a",
                                                 "resources": {"requests": {"cpu": "lots"}}},
}


def test_an_invalid_spec_is_refused(kube_node: KubeNode, kube_namespace: str,
                                    operator: tier.Operator) -> None:
    ns = kube_namespace
    for field, group in SCHEMA_REFUSALS.items():
        spec = tier.cluster_spec("bad")
        spec["spec"]["workerGroups"] = [group]
        with pytest.raises(subprocess.CalledProcessError) as refused:
            tier.apply(kube_node, ns, spec)
        assert field in refused.value.stderr, refused.value.stderr
    twice = tier.cluster_spec("bad")
    twice["spec"]["workerGroups"] *= 2
    with pytest.raises(subprocess.CalledProcessError) as refused:
        tier.apply(kube_node, ns, twice)
    assert "Duplicate value" in refused.value.stderr, refused.value.stderr
    assert tier.get(kube_node, ns, "shoalcluster", "bad") is None

    # What no 1.20 schema can say is the operator's to refuse.
    tier.apply(kube_node, ns, tier.cluster_spec("bad", minReplicas=3, maxReplicas=1))
    expected = "minReplicas (3) is greater than maxReplicas (1)"

    def refused_by_operator() -> dict[str, Any] | None:
        current = tier.status(kube_node, ns, "bad")
        return current if current.get("phase") == "Failed" else None

    status = wait_for(refused_by_operator, timeout=60, interval=tier.POLL,
                      what="the operator to refuse the spec")
    (condition,) = [c for c in status["conditions"] if c["type"] == "SpecValid"]
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert expected in condition["message"] and expected in status["message"]
    warnings = wait_for(lambda: [e for e in tier.events(kube_node, ns, "bad")
                                 if e["type"] == "Warning" and e["reason"] == "InvalidSpec"],
                        timeout=30, interval=tier.POLL, what="a Warning event")
    assert expected in warnings[0]["message"]
    assert tier.worker_pods(kube_node, ns, "bad") == []
    described = kube_node.kubectl("describe", "shoalcluster", "bad", "-n", ns).stdout
    assert expected in described

    kube_node.kubectl("patch", "shoalcluster", "bad", "-n", ns, "--type=json", "-p",
                      '[{"op": "replace", "path": "/spec/workerGroups/0/minReplicas", '
                      '"value": 1}]')
    fixed = tier.wait_running(kube_node, ns, "bad", workers=1)
    assert tier.conditions(fixed)["SpecValid"] == "True"


def test_deleting_a_cluster_removes_every_child(kube_node: KubeNode, kube_namespace: str,
                                                operator: tier.Operator) -> None:
    ns, name = kube_namespace, "doomed"
    tier.start_cluster(kube_node, ns, name, workers=2)
    cluster = tier.get(kube_node, ns, "shoalcluster", name)
    assert cluster is not None and not cluster["metadata"].get("finalizers")
    selector = f"shoal.dev/cluster={name}"
    kinds = "pods,services,deployments,replicasets"
    children = tier.kubectl_json(kube_node, "get", kinds, "-n", ns, "-l", selector)["items"]
    assert sorted({c["kind"] for c in children}) == ["Deployment", "Pod", "ReplicaSet",
                                                     "Service"]
    direct = [c for c in children if c["kind"] != "ReplicaSet"
              and not (c["kind"] == "Pod" and "scheduler" in c["metadata"]["name"])]
    assert all(owned_by(c, cluster) for c in direct), [c["metadata"]["name"] for c in direct]
    kube_node.kubectl("delete", "shoalcluster", name, "-n", ns)
    wait_for(lambda: not tier.kubectl_json(kube_node, "get", kinds, "-n", ns, "-l",
                                           selector)["items"],
             timeout=120, interval=tier.POLL, what="every child garbage-collected")
