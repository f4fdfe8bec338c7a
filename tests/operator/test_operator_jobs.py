"""ShoalJob: the operator makes a cluster, runs the runner in it, records the
outcome and deletes the cluster."""

from __future__ import annotations

from typing import Any

from operator_harness import NAMESPACE, Harness, wait_for

from shoal.cluster.kube import API_VERSION


def job_body(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("runner", {"image": "shoal:test", "command": ["python", "-c", "print(1)"]})
    spec.setdefault("cluster", {"image": "shoal:test",
                                "workerGroups": [{"name": "default", "replicas": 1}]})
    return {"apiVersion": API_VERSION, "kind": "ShoalJob",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


def job_status(h: Harness, name: str) -> dict[str, Any]:
    job = h.get("shoaljobs", name)
    assert job is not None
    return job.get("status") or {}


def runner_pod(h: Harness, job: str) -> dict[str, Any] | None:
    return h.get("pods", f"{job}-runner", api_version="v1")


def test_job_runs_in_its_own_cluster_and_cleans_up(operator: Harness) -> None:
    operator.apply(job_body("etl"))
    cluster = wait_for(lambda: operator.get("shoalclusters", "etl-cluster"),
                       message="the job's cluster")
    job = operator.get("shoaljobs", "etl")
    assert cluster["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    pod = wait_for(lambda: runner_pod(operator, "etl"), message="the runner pod")
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["SHOAL_SCHEDULER_ADDRESS"] == \
        f"tls://etl-cluster-scheduler.{NAMESPACE}.svc.cluster.local:8786"
    assert pod["spec"]["containers"][0]["command"] == ["python", "-c", "print(1)"]
    assert pod["spec"]["restartPolicy"] == "Never"
    state = wait_for(lambda: job_status(operator, "etl").get("phase") == "Running"
                     and job_status(operator, "etl"), message="job Running")
    assert state["clusterName"] == "etl-cluster" and state["startTime"]
    wait_for(lambda: (runner_pod(operator, "etl") or {}).get("status", {}).get("phase")
             == "Running", message="runner running")
    operator.kubelet.set_phase(runner_pod(operator, "etl"), "Succeeded", ready=False,
                               exit_code=0)
    state = wait_for(lambda: job_status(operator, "etl").get("phase") == "Succeeded"
                     and job_status(operator, "etl"), message="job Succeeded")
    assert state["endTime"] >= state["startTime"]
    assert "exited with code 0" in state["message"]
    wait_for(lambda: operator.get("shoalclusters", "etl-cluster") is None,
             message="the cluster deleted")


def test_failed_runner_fails_the_job(operator: Harness) -> None:
    operator.apply(job_body("crash"))
    wait_for(lambda: (runner_pod(operator, "crash") or {}).get("status", {}).get("phase")
             == "Running", message="runner running")
    operator.kubelet.set_phase(runner_pod(operator, "crash"), "Failed", ready=False,
                               exit_code=3)
    state = wait_for(lambda: job_status(operator, "crash").get("phase") == "Failed"
                     and job_status(operator, "crash"), message="job Failed")
    assert "exited with code 3" in state["message"]
    wait_for(lambda: operator.get("shoalclusters", "crash-cluster") is None,
             message="the cluster deleted")


def test_job_with_invalid_cluster_spec_fails_clearly(operator: Harness) -> None:
    operator.apply(job_body("broken", cluster={"workerGroups": [
        {"name": "a"}, {"name": "a"}]}))
    state = wait_for(lambda: job_status(operator, "broken").get("phase") == "Failed"
                     and job_status(operator, "broken"), message="job Failed")
    assert "duplicate group names a" in state["message"]
    assert operator.get("shoalclusters", "broken-cluster") is None
