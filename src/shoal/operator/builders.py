"""Pure manifest builders: a validated spec in, a Kubernetes object (dict) out.

Nothing here talks to Kubernetes, so every object the operator can create is
checked by tests against the upstream schemas. The handlers only adopt these
dicts (ownerReferences) and send them. Every child carries the shoal labels,
which is how the handlers find them again:

- ``app.kubernetes.io/name=shoal``
- ``shoal.dev/cluster=NAME``
- ``shoal.dev/component=scheduler|worker|runner``
- ``shoal.dev/worker-group=GROUP`` (workers)
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import string
from collections.abc import Mapping
from typing import Any

from shoal.operator.spec import ClusterSpec, WorkerGroup

COMM_PORT = 8786
HTTP_PORT = 8787
WORKER_HTTP_PORT = 8788
LABEL_NAME = "app.kubernetes.io/name"
LABEL_CLUSTER = "shoal.dev/cluster"
LABEL_COMPONENT = "shoal.dev/component"
LABEL_GROUP = "shoal.dev/worker-group"
LABEL_JOB = "shoal.dev/job"
ANNOTATION_SPEC_HASH = "shoal.dev/spec-hash"
MERGE_BY_NAME = ("containers", "initContainers", "volumes", "volumeMounts", "env")
# The image's user (see the Dockerfile); its root filesystem is mounted
# read-only, so the only writable paths are these emptyDirs.
IMAGE_UID = 10001
SCRATCH_MOUNTS = {"tmp": "/tmp", "home": "/home/shoal"}

Manifest = dict[str, Any]


def labels(cluster: str, component: str, group: str | None = None) -> dict[str, str]:
    result = {LABEL_NAME: "shoal", LABEL_CLUSTER: cluster, LABEL_COMPONENT: component}
    if group is not None:
        result[LABEL_GROUP] = group
    return result


def scheduler_service_name(cluster: str) -> str:
    return f"{cluster}-scheduler"


def scheduler_host(cluster: str, namespace: str) -> str:
    return f"{scheduler_service_name(cluster)}.{namespace}.svc.cluster.local"


def scheduler_address(cluster: str, namespace: str) -> str:
    """The in-cluster comm address workers and clients connect to."""
    return f"tcp://{scheduler_host(cluster, namespace)}:{COMM_PORT}"


def dashboard_address(cluster: str, namespace: str) -> str:
    return f"http://{scheduler_host(cluster, namespace)}:{HTTP_PORT}"


def worker_selector(cluster: str, group: str) -> str:
    """The label selector of one group's pods (the scale subresource's selector)."""
    return ",".join(f"{k}={v}" for k, v in labels(cluster, "worker", group).items())


def merge_template(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in (see the CRD's `template` description)."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merged[key] = merge_template(current, value)
        elif key in MERGE_BY_NAME and isinstance(current, list) and isinstance(value, list):
            merged[key] = _merge_by_name(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_by_name(base: list[Any], overrides: list[Any]) -> list[Any]:
    result = [copy.deepcopy(item) for item in base]
    index = {item.get("name"): i for i, item in enumerate(result) if isinstance(item, dict)}
    for item in overrides:
        name = item.get("name") if isinstance(item, Mapping) else None
        if name in index:
            result[index[name]] = merge_template(result[index[name]], item)
        else:
            result.append(copy.deepcopy(item))
    return result


def _container_resources(resources: Mapping[str, Any]) -> dict[str, Any]:
    return {k: dict(v) for k, v in resources.items() if k in ("requests", "limits") and v}


def _hardened(container: dict[str, Any]) -> dict[str, Any]:
    """``container`` with the restricted Pod Security Standard's settings and scratch mounts."""
    container["securityContext"] = {"allowPrivilegeEscalation": False,
                                     "readOnlyRootFilesystem": True,
                                     "capabilities": {"drop": ["ALL"]}}
    container["volumeMounts"] = [{"name": name, "mountPath": path}
                                 for name, path in SCRATCH_MOUNTS.items()]
    return container


def pod_spec(container: dict[str, Any], overrides: Mapping[str, Any],
             **fields: Any) -> dict[str, Any]:
    """A pod running ``container`` as the image's non-root user, with ``overrides`` merged in.

    Every shoal pod meets the ``restricted`` Pod Security Standard: non-root,
    read-only root filesystem (``/tmp`` and ``HOME`` are emptyDirs), no
    privilege escalation, no capabilities, the runtime's seccomp profile. A
    template can change any of it (the merge is by name).
    """
    base = {
        **fields,
        "securityContext": {"runAsNonRoot": True, "runAsUser": IMAGE_UID,
                            "runAsGroup": IMAGE_UID, "fsGroup": IMAGE_UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_hardened(container)],
        "volumes": [{"name": name, "emptyDir": {}} for name in SCRATCH_MOUNTS],
    }
    return merge_template(base, overrides)


def scheduler_deployment(spec: ClusterSpec) -> Manifest:
    selector = labels(spec.name, "scheduler")
    container = {
        "name": "scheduler",
        "image": spec.scheduler.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["shoal", "scheduler", "--host", "0.0.0.0", "--port", str(COMM_PORT),
                    "--http-port", str(HTTP_PORT)],
        "ports": [{"name": "comm", "containerPort": COMM_PORT, "protocol": "TCP"},
                  {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": [{"name": "SHOAL_CLUSTER_NAME", "value": spec.name}, *spec.scheduler.env],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"},
                           "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"},
                          "initialDelaySeconds": 10, "periodSeconds": 10,
                          "failureThreshold": 6},
    }
    resources = _container_resources(spec.scheduler.resources)
    if resources:
        container["resources"] = resources
    scheduler_pod = pod_spec(container, spec.scheduler.template)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": scheduler_service_name(spec.name), "namespace": spec.namespace,
                     "labels": dict(selector),
                     "annotations": {ANNOTATION_SPEC_HASH: spec_hash(scheduler_pod)}},
        "spec": {
            "replicas": 1,
            # One scheduler at a time: two would split the workers between them.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": dict(selector)},
            "template": {"metadata": {"labels": dict(selector)}, "spec": scheduler_pod},
        },
    }


def scheduler_service(spec: ClusterSpec) -> Manifest:
    selector = labels(spec.name, "scheduler")
    service_spec = {
        "type": spec.scheduler.service_type,
        "selector": dict(selector),
        "ports": [
            {"name": "comm", "port": COMM_PORT, "targetPort": "comm", "protocol": "TCP"},
            {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": scheduler_service_name(spec.name), "namespace": spec.namespace,
                     "labels": dict(selector),
                     "annotations": {ANNOTATION_SPEC_HASH: spec_hash(service_spec)}},
        "spec": service_spec,
    }


def worker_command(spec: ClusterSpec, group: WorkerGroup) -> list[str]:
    # The worker listens on (and so advertises) its pod's IP: peers and clients
    # connect to it there. Its HTTP port serves /health (the probes) and /metrics.
    command = ["shoal", "worker", scheduler_address(spec.name, spec.namespace),
               "--name", "$(POD_NAME)", "--host", "$(POD_IP)",
               "--http-port", str(WORKER_HTTP_PORT), "--nthreads", str(group.nthreads)]
    if group.memory_bytes is not None:
        command += ["--memory-limit", str(group.memory_bytes)]
    for key, amount in sorted(group.worker_resources.items()):
        command += ["--resources", f"{key}={amount:g}"]
    return command


def _worker_resources(group: WorkerGroup) -> dict[str, Any]:
    resources = _container_resources(group.resources)
    if group.memory is not None:
        # The memory limit is also what Kubernetes reserves, unless told otherwise.
        resources.setdefault("limits", {}).setdefault("memory", group.memory)
        resources.setdefault("requests", {}).setdefault("memory", group.memory)
    return resources


def worker_pod_spec(spec: ClusterSpec, group: WorkerGroup) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "worker",
        "image": group.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": worker_command(spec, group),
        "ports": [{"name": "http", "containerPort": WORKER_HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"},
                           "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"},
                          "initialDelaySeconds": 10, "periodSeconds": 10,
                          "failureThreshold": 6},
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "SHOAL_SCHEDULER_ADDRESS",
             "value": scheduler_address(spec.name, spec.namespace)},
            {"name": "SHOAL_CLUSTER_NAME", "value": spec.name},
            {"name": "SHOAL_WORKER_GROUP", "value": group.name},
            *group.env,
        ],
    }
    resources = _worker_resources(group)
    if resources:
        container["resources"] = resources
    # OnFailure: a crashed worker restarts in place; a retired worker exits 0 and
    # stays down until the operator deletes its pod.
    return pod_spec(container, group.template, restartPolicy="OnFailure")


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A short digest of a pod spec: workers with another digest are rolled over."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def new_worker_name(cluster: str, group: str) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return f"{cluster}-{group}-" + "".join(secrets.choice(alphabet) for _ in range(5))


def worker_pod(spec: ClusterSpec, group: WorkerGroup, name: str) -> Manifest:
    """One worker: the pod's name is the worker's name in the scheduler."""
    worker_spec = worker_pod_spec(spec, group)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": labels(spec.name, "worker", group.name),
            "annotations": {ANNOTATION_SPEC_HASH: spec_hash(worker_spec)},
        },
        "spec": worker_spec,
    }


def runner_pod(job: str, namespace: str, cluster: ClusterSpec,
               runner: Mapping[str, Any]) -> Manifest:
    """The pod of a ShoalJob; it finds its cluster through SHOAL_SCHEDULER_ADDRESS."""
    container: dict[str, Any] = {
        "name": "runner",
        "image": runner.get("image") or cluster.image,
        "imagePullPolicy": cluster.image_pull_policy,
        "env": [{"name": "SHOAL_SCHEDULER_ADDRESS",
                 "value": scheduler_address(cluster.name, namespace)},
                {"name": "SHOAL_JOB_NAME", "value": job}, *runner.get("env", [])],
    }
    for key in ("command", "args"):
        if runner.get(key):
            container[key] = list(runner[key])
    resources = _container_resources(runner.get("resources") or {})
    if resources:
        container["resources"] = resources
    runner_spec = pod_spec(container, runner.get("template") or {}, restartPolicy="Never")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{job}-runner", "namespace": namespace,
                     "labels": {**labels(cluster.name, "runner"), LABEL_JOB: job}},
        "spec": runner_spec,
    }
