"""The operator, for real (kopf), against kmock's Kubernetes emulator: create,
children, status, replacement, scaling, deletion, restarts without duplicates."""

from __future__ import annotations

import time
from typing import Any

import kubernetes_validate
from operator_harness import NAMESPACE, OTHER_NAMESPACE, Harness, wait_for

from shoal.operator import builders, handlers, metrics

K8S_VERSION = "1.33.0"


def cluster(h: Harness, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    obj = h.get("shoalclusters", name, namespace)
    assert obj is not None, f"ShoalCluster {name} is gone"
    return obj


def status(h: Harness, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    return cluster(h, name, namespace).get("status") or {}


def wait_running(h: Harness, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    return wait_for(lambda: status(h, name, namespace).get("phase") == "Running"
                    and status(h, name, namespace), message=f"{name} Running")


def wait_pods(h: Harness, name: str, n: int, namespace: str = NAMESPACE,
              ready: bool = False) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        pods = h.pods(name, namespace=namespace)
        if len(pods) != n:
            return None
        if ready and not all((p.get("status") or {}).get("phase") == "Running" for p in pods):
            return None
        return pods or [{}]
    return wait_for(check, message=f"{n} worker pods of {name}")


def strip_server_fields(obj: dict[str, Any]) -> dict[str, Any]:
    obj = dict(obj)
    obj.pop("status", None)
    return obj


def test_create_makes_labelled_owned_valid_children(operator: Harness, make_cluster) -> None:
    operator.scheduler("alpha")
    operator.apply(make_cluster("alpha"))
    pods = wait_pods(operator, "alpha", 2)
    deployment = wait_for(lambda: operator.get("deployments", "alpha-scheduler",
                                               api_version="apps/v1"))
    service = operator.get("services", "alpha-scheduler", api_version="v1")
    assert service is not None
    assert [p["port"] for p in service["spec"]["ports"]] == [8786, 8787]
    uid = cluster(operator, "alpha")["metadata"]["uid"]
    for child in [*pods, deployment, service]:
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["uid"], owner["kind"], owner["controller"]) == (uid, "ShoalCluster", True)
        assert child["metadata"]["labels"][builders.LABEL_CLUSTER] == "alpha"
        kubernetes_validate.validate(strip_server_fields(child), K8S_VERSION, strict=True)
    for pod in pods:
        command = pod["spec"]["containers"][0]["command"]
        assert command[:3] == ["shoal", "worker",
                               f"tls://alpha-scheduler.{NAMESPACE}.svc.cluster.local:8786"]
        assert pod["metadata"]["labels"][builders.LABEL_GROUP] == "default"
    state = wait_running(operator, "alpha")
    assert state["schedulerAddress"] == f"tls://alpha-scheduler.{NAMESPACE}.svc.cluster.local:8786"
    assert state["dashboardAddress"] == f"https://alpha-scheduler.{NAMESPACE}.svc.cluster.local:8787"
    wait_for(lambda: status(operator, "alpha").get("readyWorkers") == 2, message="2 ready")
    conditions = {c["type"]: c["status"] for c in status(operator, "alpha")["conditions"]}
    assert conditions == {"SpecValid": "True", "SchedulerReady": "True", "WorkersReady": "True",
                          "Secured": "True"}
    assert status(operator, "alpha")["workerGroups"] == {"default": {"desired": 2, "ready": 2}}
    assert not cluster(operator, "alpha")["metadata"].get("finalizers")
    assert empty_strings(status(operator, "alpha")) == []


def empty_strings(value: Any, path: str = "status") -> list[str]:
    """Paths of "" values: some 1.20 API servers (built with Go >= 1.19) refuse them."""
    if value == "":
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in empty_strings(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in empty_strings(v, f"{path}[{i}]")]
    return []


def test_restart_mid_way_never_duplicates(harness: Harness, make_cluster) -> None:
    harness.scheduler("beta")
    harness.kubelet.paused = True
    harness.start_operator()
    harness.apply(make_cluster("beta", workerGroups=[{"name": "default", "replicas": 3}]))
    wait_for(lambda: harness.pods("beta"), message="the first worker pod")
    harness.stop_operator()
    harness.start_operator()
    wait_pods(harness, "beta", 3)
    harness.stop_operator()
    harness.start_operator()
    harness.kubelet.paused = False
    wait_running(harness, "beta")
    wait_for(lambda: status(harness, "beta").get("readyWorkers") == 3, message="3 ready")
    assert len(harness.pods("beta")) == 3
    deployments = harness.api.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments")["items"]
    assert [d["metadata"]["name"] for d in deployments] == ["beta-scheduler"]


def test_dead_or_deleted_workers_are_replaced(operator: Harness, make_cluster) -> None:
    operator.scheduler("gamma")
    operator.apply(make_cluster("gamma"))
    first, second = wait_pods(operator, "gamma", 2, ready=True)
    operator.api.delete(f"/api/v1/namespaces/{NAMESPACE}/pods/{first['metadata']['name']}")
    operator.kubelet.set_phase(second, "Failed", ready=False, exit_code=137)
    old = {first["metadata"]["name"], second["metadata"]["name"]}
    wait_for(lambda: len(operator.pods("gamma")) == 2
             and not old & {p["metadata"]["name"] for p in operator.pods("gamma")},
             message="two fresh workers")


def test_kubectl_scale_up_then_down_retires_through_scheduler(operator: Harness,
                                                               make_cluster) -> None:
    double = operator.scheduler("delta")
    operator.apply(make_cluster("delta"))
    wait_pods(operator, "delta", 2, ready=True)
    operator.api.patch(f"/apis/shoal.dev/v1alpha1/namespaces/{NAMESPACE}/shoalclusters/delta",
                       {"spec": {"replicas": 4}})
    pods = wait_pods(operator, "delta", 4, ready=True)
    wait_for(lambda: len(double.workers) == 4, message="4 workers connected")
    # The scheduler retires the workers holding the least data: make that choice visible.
    keep = pods[0]["metadata"]["name"]
    for i, name in enumerate(sorted(double.workers)):
        double.workers[name]["memory"] = 10**9 if name == keep else i
    operator.api.patch(f"/apis/shoal.dev/v1alpha1/namespaces/{NAMESPACE}/shoalclusters/delta",
                       {"spec": {"replicas": 1}})
    wait_for(lambda: [p["metadata"]["name"] for p in operator.pods("delta")] == [keep],
             message="only the worker the scheduler kept")
    assert ("POST", "api/v1/retire_workers", {"n": 3}) in double.requests
    assert sorted(double.retired) == sorted(p["metadata"]["name"] for p in pods[1:])
    wait_for(lambda: status(operator, "delta").get("replicas") == 1, message="status.replicas")


def desired(h: Harness, name: str, group: str = "default") -> int | None:
    return (status(h, name).get("workerGroups") or {}).get(group, {}).get("desired")


def test_autoscaling_scales_up_promptly_and_down_after_the_window(operator: Harness,
                                                                  make_cluster) -> None:
    window = metrics.config.scale_down_window = 4.0  # restored by _fast_operator
    double = operator.scheduler("auto")
    double.target = 1
    operator.apply(make_cluster("auto", workerGroups=[
        {"name": "default", "minReplicas": 1, "maxReplicas": 5}]))
    wait_pods(operator, "auto", 1, ready=True)
    double.target = 9  # beyond maxReplicas
    raised = time.monotonic()
    wait_for(lambda: desired(operator, "auto") == 5, message="desired 5")
    assert time.monotonic() - raised < window  # up: at the next round, no window
    wait_pods(operator, "auto", 5, ready=True)
    double.target = 2
    wait_for(lambda: desired(operator, "auto") == 2, message="desired 2")
    # Down: only once the target has stayed lower for a whole window after the
    # last time the scheduler answered a high one.
    last_high = max(when for when, target in double.answers if target > 2)
    assert time.monotonic() - last_high >= window
    wait_pods(operator, "auto", 2)


def test_spec_change_rolls_workers_over(operator: Harness, make_cluster) -> None:
    double = operator.scheduler("roll")
    operator.apply(make_cluster("roll"))
    old = {p["metadata"]["name"] for p in wait_pods(operator, "roll", 2, ready=True)}
    wait_for(lambda: len(double.workers) == 2, message="workers connected")
    operator.api.patch(f"/apis/shoal.dev/v1alpha1/namespaces/{NAMESPACE}/shoalclusters/roll",
                       {"spec": {"image": "shoal:v2"}})

    def rolled() -> bool:
        pods = operator.pods("roll")
        return len(pods) == 2 and all(p["spec"]["containers"][0]["image"] == "shoal:v2"
                                      for p in pods)
    wait_for(rolled, message="workers on the new image")
    assert set(double.retired) == old
    deployment = operator.get("deployments", "roll-scheduler", api_version="apps/v1")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "shoal:v2"


def test_removing_a_group_retires_its_workers(operator: Harness, make_cluster) -> None:
    double = operator.scheduler("duo")
    operator.apply(make_cluster("duo", workerGroups=[{"name": "a", "replicas": 1},
                                                     {"name": "b", "replicas": 2}]))
    wait_for(lambda: len(double.workers) == 3, message="3 workers connected")
    group_b = {p["metadata"]["name"] for p in operator.objects("pods")
               if p["metadata"]["labels"].get(builders.LABEL_GROUP) == "b"}
    operator.api.patch(f"/apis/shoal.dev/v1alpha1/namespaces/{NAMESPACE}/shoalclusters/duo",
                       {"spec": {"workerGroups": [{"name": "a", "replicas": 1}]}})
    wait_pods(operator, "duo", 1)
    assert set(double.retired) == group_b
    assert operator.pods("duo")[0]["metadata"]["labels"][builders.LABEL_GROUP] == "a"


def test_idle_cluster_is_deleted(operator: Harness, make_cluster) -> None:
    double = operator.scheduler("sleepy")
    operator.apply(make_cluster("sleepy", idleTimeout=1))
    wait_running(operator, "sleepy")
    double.idle_since = time.time() - 5
    wait_for(lambda: operator.get("shoalclusters", "sleepy") is None, message="deletion")


def test_delete_never_hangs_and_children_are_owned(operator: Harness, make_cluster) -> None:
    operator.scheduler("eps")
    operator.apply(make_cluster("eps"))
    wait_pods(operator, "eps", 2)
    operator.api.delete(f"/apis/shoal.dev/v1alpha1/namespaces/{NAMESPACE}/shoalclusters/eps")
    assert operator.get("shoalclusters", "eps") is None  # no finalizer held it
    wait_for(lambda: (NAMESPACE, "eps") not in handlers.loops, message="the loop to stop")
    operator.collect_garbage()
    assert operator.pods("eps") == []
    assert operator.get("deployments", "eps-scheduler", api_version="apps/v1") is None


def test_invalid_spec_is_refused_with_condition_and_event(operator: Harness,
                                                          make_cluster) -> None:
    operator.scheduler("bad")
    operator.apply(make_cluster("bad", workerGroups=[
        {"name": "default", "minReplicas": 5, "maxReplicas": 2}]))
    state = wait_for(lambda: status(operator, "bad").get("phase") == "Failed"
                     and status(operator, "bad"), message="phase Failed")
    (condition,) = [c for c in state["conditions"] if c["type"] == "SpecValid"]
    assert condition["status"] == "False"
    assert "minReplicas (5) is greater than maxReplicas (2)" in condition["message"]
    events = wait_for(lambda: [e for e in operator.api.get(
        f"/api/v1/namespaces/{NAMESPACE}/events")["items"] if e.get("reason") == "InvalidSpec"],
        message="a warning event")
    assert events[0]["type"] == "Warning"
    assert operator.pods("bad") == []
    # The operator keeps serving: another cluster works, and fixing the spec heals this one.
    operator.scheduler("good")
    operator.apply(make_cluster("good", workerGroups=[{"name": "default", "replicas": 1}]))
    wait_running(operator, "good")
    operator.api.patch(f"/apis/shoal.dev/v1alpha1/namespaces/{NAMESPACE}/shoalclusters/bad",
                       {"spec": {"workerGroups": [
                           {"name": "default", "minReplicas": 1, "maxReplicas": 2}]}})
    wait_running(operator, "bad")


def test_template_refused_by_kubernetes_is_reported(operator: Harness, make_cluster) -> None:
    operator.scheduler("typo")
    operator.apply(make_cluster("typo", workerGroups=[
        {"name": "default", "template": {"nodeSelecter": {"disk": "ssd"}}}]))
    state = wait_for(lambda: status(operator, "typo").get("phase") == "Failed"
                     and status(operator, "typo"), message="phase Failed")
    (condition,) = [c for c in state["conditions"] if c["type"] == "SpecValid"]
    assert condition["reason"] == "ObjectRefused"
    assert "nodeSelecter" in condition["message"]
    assert operator.pods("typo") == []


def test_clusters_in_several_namespaces(operator: Harness, make_cluster) -> None:
    operator.scheduler("one")
    body = make_cluster("one")
    body["metadata"]["namespace"] = OTHER_NAMESPACE
    operator.apply(body)
    wait_pods(operator, "one", 2, namespace=OTHER_NAMESPACE)
    wait_running(operator, "one", OTHER_NAMESPACE)
    assert operator.pods("one") == []  # nothing leaked into the other namespace


def test_all_namespaces_mode(harness: Harness, make_cluster) -> None:
    harness.start_operator("--all-namespaces")
    for namespace, name in ((NAMESPACE, "east"), (OTHER_NAMESPACE, "west")):
        harness.scheduler(name)
        body = make_cluster(name, workerGroups=[{"name": "default", "replicas": 1}])
        body["metadata"]["namespace"] = namespace
        harness.apply(body)
    wait_running(harness, "east")
    wait_running(harness, "west", OTHER_NAMESPACE)
    assert len(harness.pods("west", namespace=OTHER_NAMESPACE)) == 1
