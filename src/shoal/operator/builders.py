"""Pure manifest builders: a validated spec in, a Kubernetes object (dict) out.

Nothing here talks to Kubernetes, so every object the operator can create is
checked by tests against the upstream schemas. The handlers only adopt these
dicts (ownerReferences) and send them. Every child carries the shoal labels,
which is how the handlers find them again:

- ``app.kubernetes.io/name=shoal``
- ``shoal.dev/cluster=NAME``
- ``shoal.dev/component=scheduler|worker|runner``
- ``shoal.dev/worker-group=GROUP`` (workers)

Security (``spec.security``, on by default): the cluster's credentials live in
four Secrets the operator fills (``credentials.py``); the builders here only
name them, mount them and point the environment at them:

- ``NAME-ca``: the CA certificate and key (the operator's alone, never mounted);
- ``NAME-tls``: the pod certificate, mounted in the scheduler and workers;
- ``NAME-client-tls``: a client certificate plus the HTTP token, for notebooks
  (KubeCluster reads it) and job runners (mounted);
- ``NAME-token``: the HTTP bearer token, mounted in the scheduler and workers.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import secrets
import string
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shoal.operator.spec import ClusterSpec, WorkerGroup

if TYPE_CHECKING:
    from shoal.operator.pki import ClusterPki

COMM_PORT = 8786
HTTP_PORT = 8787
WORKER_HTTP_PORT = 8788
LABEL_NAME = "app.kubernetes.io/name"
LABEL_CLUSTER = "shoal.dev/cluster"
LABEL_COMPONENT = "shoal.dev/component"
LABEL_GROUP = "shoal.dev/worker-group"
LABEL_JOB = "shoal.dev/job"
ANNOTATION_SPEC_HASH = "shoal.dev/spec-hash"
ANNOTATION_CREDENTIALS = "shoal.dev/credentials"  # fingerprint of the CA a pod was given
ANNOTATION_ROTATION = "shoal.dev/rotation"  # the spec.security.rotation a Secret was made for
LABEL_CLIENT_OF = "shoal.dev/client-of"  # on a pod: admitted by that cluster's NetworkPolicy
# On a pod: admitted by every cluster's NetworkPolicy in its namespace (a notebook
# creating clusters with KubeCluster cannot know their names in advance).
LABEL_CLIENT = "shoal.dev/client"
OPERATOR_LABELS = {"shoal.dev/operator": "true"}  # on the operator pods (chart, manifests)
TLS_DIR = "/etc/shoal/tls"
TOKEN_DIR = "/etc/shoal/token"
SECRET_MODE = 0o440  # readable by the pod's fsGroup (the image's group), not by others
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


def scheduler_address(cluster: str, namespace: str, tls: bool = True) -> str:
    """The in-cluster comm address workers and clients connect to."""
    return f"{'tls' if tls else 'tcp'}://{scheduler_host(cluster, namespace)}:{COMM_PORT}"


def dashboard_address(cluster: str, namespace: str, tls: bool = True) -> str:
    return f"{'https' if tls else 'http'}://{scheduler_host(cluster, namespace)}:{HTTP_PORT}"


def scheduler_dns_names(cluster: str, namespace: str) -> list[str]:
    """Every name of the scheduler's Service (the pod certificate's names)."""
    service = scheduler_service_name(cluster)
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            scheduler_host(cluster, namespace), "localhost"]


def ca_secret_name(cluster: str) -> str:
    return f"{cluster}-ca"


def pod_secret_name(cluster: str) -> str:
    return f"{cluster}-tls"


def client_secret_name(cluster: str) -> str:
    return f"{cluster}-client-tls"


def token_secret_name(cluster: str) -> str:
    return f"{cluster}-token"


def network_policy_name(cluster: str) -> str:
    return f"{cluster}-access"


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


def _probe(tls: bool, path: str, **timing: int) -> dict[str, Any]:
    """An HTTP probe of ``path`` (https with TLS: the kubelet does not check certificates)."""
    get: dict[str, Any] = {"path": path, "port": "http"}
    if tls:
        get["scheme"] = "HTTPS"
    return {"httpGet": get, **timing}


def _readiness(tls: bool, path: str = "/health") -> dict[str, Any]:
    return _probe(tls, path, periodSeconds=5, failureThreshold=3)


def _liveness(tls: bool) -> dict[str, Any]:
    return _probe(tls, "/health", initialDelaySeconds=10, periodSeconds=10, failureThreshold=6)


def _secret_volume(name: str, secret: str) -> dict[str, Any]:
    return {"name": name, "secret": {"secretName": secret, "defaultMode": SECRET_MODE}}


def credential_env(tls: bool, token_file: str) -> list[dict[str, Any]]:
    """The environment that makes shoal find its credentials (see docs/security.md)."""
    env = [{"name": "SHOAL_HTTP_TOKEN_FILE", "value": token_file}]
    if tls:
        env += [{"name": "SHOAL_TLS_CA_FILE", "value": f"{TLS_DIR}/ca.crt"},
                {"name": "SHOAL_TLS_CERT", "value": f"{TLS_DIR}/tls.crt"},
                {"name": "SHOAL_TLS_KEY", "value": f"{TLS_DIR}/tls.key"},
                {"name": "SHOAL_REQUIRE_ENCRYPTION", "value": "1"}]
    return env


def with_credentials(pod: dict[str, Any], container: str, mounted: dict[str, str],
                     env: list[dict[str, Any]]) -> dict[str, Any]:
    """``pod`` with Secrets mounted read-only in ``container`` ({mount path: secret}).

    The volumes are named after the directory (``shoal-tls``, ``shoal-token``).
    """
    volumes = {"shoal-" + path.rsplit("/", 1)[-1]: (path, name) for path, name in mounted.items()}
    mounts = [{"name": volume, "mountPath": path, "readOnly": True}
              for volume, (path, _) in volumes.items()]
    extra = {"containers": [{"name": container, "volumeMounts": mounts, "env": env}],
             "volumes": [_secret_volume(volume, name) for volume, (_, name) in volumes.items()]}
    return merge_template(pod, extra)


def _server_credentials(spec: ClusterSpec, pod: dict[str, Any], container: str) -> dict[str, Any]:
    """The scheduler's or a worker's pod with the pod certificate and the token mounted."""
    mounted = {TOKEN_DIR: token_secret_name(spec.name)}
    if spec.security.tls:
        mounted = {TLS_DIR: pod_secret_name(spec.name), **mounted}
    return with_credentials(pod, container, mounted,
                            credential_env(spec.security.tls, f"{TOKEN_DIR}/token"))


def scheduler_deployment(spec: ClusterSpec) -> Manifest:
    selector = labels(spec.name, "scheduler")
    tls = spec.security.tls
    container = {
        "name": "scheduler",
        "image": spec.scheduler.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["shoal", "scheduler", "--host", "0.0.0.0", "--port", str(COMM_PORT),
                    "--http-port", str(HTTP_PORT)],
        "ports": [{"name": "comm", "containerPort": COMM_PORT, "protocol": "TCP"},
                  {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": [{"name": "SHOAL_CLUSTER_NAME", "value": spec.name}, *spec.scheduler.env],
        "readinessProbe": _readiness(tls),
        "livenessProbe": _liveness(tls),
    }
    resources = _container_resources(spec.scheduler.resources)
    if resources:
        container["resources"] = resources
    # The template is merged last: a user's override wins over the generated mounts too.
    scheduler_pod = merge_template(
        _server_credentials(spec, pod_spec(container, {}), "scheduler"), spec.scheduler.template)
    template_meta: dict[str, Any] = {"labels": dict(selector)}
    if spec.credentials:
        # A new CA changes the template, so the Deployment restarts the scheduler.
        template_meta["annotations"] = {ANNOTATION_CREDENTIALS: spec.credentials}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": scheduler_service_name(spec.name), "namespace": spec.namespace,
                     "labels": dict(selector),
                     "annotations": {ANNOTATION_SPEC_HASH: spec_hash(
                         {"spec": scheduler_pod, "credentials": spec.credentials})}},
        "spec": {
            "replicas": 1,
            # One scheduler at a time: two would split the workers between them.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": dict(selector)},
            "template": {"metadata": template_meta, "spec": scheduler_pod},
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
    command = ["shoal", "worker", scheduler_address(spec.name, spec.namespace, spec.security.tls),
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
        # ready (counted, and behind the Service) once registered with the
        # scheduler: /ready; alive while it serves at all: /health
        "readinessProbe": _readiness(spec.security.tls, "/ready"),
        "livenessProbe": _liveness(spec.security.tls),
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "SHOAL_SCHEDULER_ADDRESS",
             "value": scheduler_address(spec.name, spec.namespace, spec.security.tls)},
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
    pod = pod_spec(container, {}, restartPolicy="OnFailure")
    return merge_template(_server_credentials(spec, pod, "worker"), group.template)


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A short digest of a pod spec: workers with another digest are rolled over."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def new_worker_name(cluster: str, group: str) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return f"{cluster}-{group}-" + "".join(secrets.choice(alphabet) for _ in range(5))


def worker_hash(spec: ClusterSpec, group: WorkerGroup) -> str:
    """The digest of a group's current pods: their spec and the credentials they hold."""
    return spec_hash({"spec": worker_pod_spec(spec, group), "credentials": spec.credentials})


def worker_pod(spec: ClusterSpec, group: WorkerGroup, name: str) -> Manifest:
    """One worker: the pod's name is the worker's name in the scheduler."""
    annotations = {ANNOTATION_SPEC_HASH: worker_hash(spec, group)}
    if spec.credentials:
        annotations[ANNOTATION_CREDENTIALS] = spec.credentials
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": labels(spec.name, "worker", group.name),
            "annotations": annotations,
        },
        "spec": worker_pod_spec(spec, group),
    }


def runner_pod(job: str, namespace: str, cluster: ClusterSpec,
               runner: Mapping[str, Any]) -> Manifest:
    """The pod of a ShoalJob; it finds its cluster through SHOAL_SCHEDULER_ADDRESS."""
    container: dict[str, Any] = {
        "name": "runner",
        "image": runner.get("image") or cluster.image,
        "imagePullPolicy": cluster.image_pull_policy,
        "env": [{"name": "SHOAL_SCHEDULER_ADDRESS",
                 "value": scheduler_address(cluster.name, namespace, cluster.security.tls)},
                {"name": "SHOAL_JOB_NAME", "value": job}, *runner.get("env", [])],
    }
    for key in ("command", "args"):
        if runner.get(key):
            container[key] = list(runner[key])
    resources = _container_resources(runner.get("resources") or {})
    if resources:
        container["resources"] = resources
    # The runner is a client: the client certificate and the token, in one Secret.
    runner_spec = with_credentials(pod_spec(container, {}, restartPolicy="Never"), "runner",
                                   {TLS_DIR: client_secret_name(cluster.name)},
                                   credential_env(cluster.security.tls, f"{TLS_DIR}/token"))
    runner_spec = merge_template(runner_spec, runner.get("template") or {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{job}-runner", "namespace": namespace,
                     "labels": {**labels(cluster.name, "runner"), LABEL_JOB: job}},
        "spec": runner_spec,
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def secret(spec: ClusterSpec, name: str, data: Mapping[str, bytes], *, tls: bool,
           fingerprint: str) -> Manifest:
    """One of the cluster's credential Secrets (``kubernetes.io/tls`` when it holds a key pair).

    The annotations say which CA the data belongs to and for which
    ``spec.security.rotation`` it was made, which is how the operator knows
    whether it is current.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls" if tls else "Opaque",
        "metadata": {"name": name, "namespace": spec.namespace,
                     "labels": labels(spec.name, "credentials"),
                     "annotations": {ANNOTATION_CREDENTIALS: fingerprint,
                                     ANNOTATION_ROTATION: spec.security.rotation}},
        "data": {key: _b64(value) for key, value in sorted(data.items())},
    }


def credential_secrets(spec: ClusterSpec, pki: ClusterPki, token: bytes) -> list[Manifest]:
    """The four Secrets of a cluster, from its certificates and HTTP token."""
    ca, fingerprint = pki.ca.cert_pem, pki.fingerprint

    def pair(name: str, cert: bytes, key: bytes, **more: bytes) -> Manifest:
        return secret(spec, name, {"ca.crt": ca, "tls.crt": cert, "tls.key": key, **more},
                      tls=True, fingerprint=fingerprint)

    return [
        pair(ca_secret_name(spec.name), ca, pki.ca.key_pem),
        pair(pod_secret_name(spec.name), pki.pod.cert_pem, pki.pod.key_pem),
        pair(client_secret_name(spec.name), pki.client.cert_pem, pki.client.key_pem,
             token=token),
        secret(spec, token_secret_name(spec.name), {"token": token}, tls=False,
               fingerprint=fingerprint),
    ]


def network_policy(spec: ClusterSpec) -> Manifest:
    """Who may open a connection to the cluster's scheduler and workers.

    Admitted: the cluster's own pods (scheduler, workers, a job's runner),
    pods of the same namespace labelled ``shoal.dev/client-of: NAME`` (a
    notebook) or ``shoal.dev/client: "true"`` (a notebook that makes clusters
    with KubeCluster), and the operator's pods (in any namespace, since namespaces
    carry no name label before Kubernetes 1.21), the latter on the scheduler's
    HTTP port only, where every mutation needs the token. With a NodePort or
    LoadBalancer Service the scheduler's two ports are open to any source:
    that is what such a Service is for (TLS then decides who gets in).
    The kubelet's probes are not subject to NetworkPolicy.
    """
    ours = {LABEL_NAME: "shoal", LABEL_CLUSTER: spec.name}
    ingress: list[dict[str, Any]] = [
        {"from": [{"podSelector": {"matchLabels": dict(ours)}},
                  {"podSelector": {"matchLabels": {LABEL_CLIENT_OF: spec.name}}},
                  {"podSelector": {"matchLabels": {LABEL_CLIENT: "true"}}}]},
        {"from": [{"namespaceSelector": {},
                   "podSelector": {"matchLabels": dict(OPERATOR_LABELS)}}],
         "ports": [{"protocol": "TCP", "port": HTTP_PORT}]},
    ]
    if spec.scheduler.service_type != "ClusterIP":
        ingress.append({"ports": [{"protocol": "TCP", "port": COMM_PORT},
                                  {"protocol": "TCP", "port": HTTP_PORT}]})
    policy_spec = {
        "podSelector": {"matchLabels": dict(ours), "matchExpressions": [
            {"key": LABEL_COMPONENT, "operator": "In", "values": ["scheduler", "worker"]}]},
        "policyTypes": ["Ingress"],
        "ingress": ingress,
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": network_policy_name(spec.name), "namespace": spec.namespace,
                     "labels": labels(spec.name, "network-policy"),
                     "annotations": {ANNOTATION_SPEC_HASH: spec_hash(policy_spec)}},
        "spec": policy_spec,
    }
