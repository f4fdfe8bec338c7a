"""The shoal side of the real-cluster tier: image, operator install, clusters, waits.

The cluster fixtures (``kube_node``, ``kube_namespace``) come from
``conftest.py``; this module adds what the shoal scenarios share:

- :func:`image_on_node`: the project's image, built once, loaded into the
  node under the name the chart, the manifests and the examples use, plus a
  second tag of the same image for the rolling-update scenario;
- :func:`helm_operator`: the operator installed once per session with the
  real Helm library (``helm install`` of ``helm/shoal-operator``, run in
  ``.venv-helm`` since helm-sdkpy needs Python >= 3.12), with short timer
  intervals set through the chart's ``extraEnv``; the kustomize scenario
  uninstalls it and the next scenario installs it again;
- small ShoalCluster specs that fit many clusters' pods on one 2-core node,
  and bounded waits on their status, pods and schedulers;
- a Client from the test process to a scheduler: the host routes the pod
  range, so the scheduler's and the workers' pod IPs are reachable directly;
  clusters are secured by default, so the Client takes the credentials of
  the cluster's client Secret, and the HTTP helpers speak HTTPS (without
  checking the certificate, as the kubelet's probes: the security scenarios
  check it) with the cluster's token.

Every wait is bounded (tests/polling.py); operator logs are kept as test
artifacts when a scenario fails (:func:`keep_operator_logs`).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.k8s.cluster import ARTIFACTS, KubeNode
from tests.k8s.image import ImageBuildError, build_image
from tests.polling import wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "shoal-operator"
MANIFESTS = REPO / "manifests"
EXAMPLES = MANIFESTS / "examples"
HELM_PYTHON = REPO / ".venv-helm" / "bin" / "python"
HELM_CLIENT = Path(__file__).with_name("helm_client.py")
IN_CI = os.environ.get("CI", "").lower() == "true"

IMAGE = "ghcr.io/shoal-dev/shoal:" + yaml.safe_load((CHART / "Chart.yaml").read_text())[
    "appVersion"]
ROLLED_IMAGE = IMAGE + "-rolled"  # the same image under a second tag
RELEASE = "shoal-operator"
OPERATOR_NAMESPACE = "shoal-system"
OPERATOR_SELECTOR = "app.kubernetes.io/name=shoal-operator,app.kubernetes.io/component=operator"
RECONCILE_INTERVAL = 1.0
SCALE_DOWN_WINDOW = 20.0
TIER_ENV = {"SHOAL_OPERATOR_RECONCILE_INTERVAL": f"{RECONCILE_INTERVAL:g}",
            "SHOAL_OPERATOR_SCALE_DOWN_WINDOW": f"{SCALE_DOWN_WINDOW:g}",
            "SHOAL_OPERATOR_ERROR_DELAY": "2"}
HELM_VALUES: dict[str, Any] = {
    "extraEnv": [{"name": k, "value": v} for k, v in TIER_ENV.items()],
    "resources": {"requests": {"cpu": "50m", "memory": "128Mi"},
                  "limits": {"memory": "512Mi"}},
}
SMALL = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
POD_START = 240.0  # bound on pods of a new cluster becoming ready on a busy 2-core node
POLL = 0.5

_state: dict[str, Any] = {}


# ------------------------------------------------------------------ kubectl


def kubectl_json(node: KubeNode, *args: str) -> Any:
    return json.loads(node.kubectl(*args, "-o", "json").stdout)


def apply(node: KubeNode, namespace: str, *objects: dict[str, Any]) -> None:
    node.kubectl("apply", "-n", namespace, "-f", "-",
                 input="\n---\n".join(yaml.safe_dump(o) for o in objects))


def get(node: KubeNode, namespace: str | None, kind: str, name: str) -> dict[str, Any] | None:
    """The object (cluster-scoped when ``namespace`` is None), or None when it does not exist."""
    where = ["-n", namespace] if namespace else []
    result = node.kubectl("get", kind, name, *where, "-o", "json", check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr:
            return None
        raise AssertionError(f"kubectl get {kind} {name}: {result.stderr}")
    return dict(json.loads(result.stdout))


def pods(node: KubeNode, namespace: str, selector: str) -> list[dict[str, Any]]:
    """Pods matching the selector that are not being deleted."""
    items = kubectl_json(node, "get", "pods", "-n", namespace, "-l", selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def pod_ready(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod["status"].get("conditions", []))


def events(node: KubeNode, namespace: str, name: str) -> list[dict[str, Any]]:
    return list(kubectl_json(node, "get", "events", "-n", namespace, "--field-selector",
                             f"involvedObject.name={name}")["items"])


# -------------------------------------------------------------------- image


def image_on_node(node: KubeNode) -> str:
    """Build (or reuse) the image, load it into the node; answer its name there."""
    if "image" not in _state:
        try:
            info = build_image()
        except ImageBuildError as exc:
            if IN_CI:
                pytest.fail(f"the image cannot be built under CI: {exc}", pytrace=False)
            pytest.skip(f"the project's image cannot be built here: {exc}")
        node.import_image(info.archive)
        for name in {IMAGE, ROLLED_IMAGE} - {info.ref}:
            node.ctr("images", "tag", "--force", info.ref, name)
        listed = node.ctr("images", "list", "-q").stdout.split()
        assert IMAGE in listed and ROLLED_IMAGE in listed, listed
        _state["image"] = IMAGE
    return str(_state["image"])


# --------------------------------------------------------------------- Helm


def helm(node: KubeNode, request: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    """Run one Helm action (helm_client.py) with the real Helm library in .venv-helm."""
    if not HELM_PYTHON.exists():
        reason = "no .venv-helm (Python >= 3.12 with helm-sdkpy); .ci/run creates it"
        if IN_CI:
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    payload = {"kubeconfig": Path(node.kubeconfig).read_text(), **request}
    done = subprocess.run([str(HELM_PYTHON), str(HELM_CLIENT)], input=json.dumps(payload),
                          capture_output=True, text=True, timeout=timeout, check=False)
    if "which is incompatible with Kubernetes v0.0.0" in done.stderr:
        pytest.fail("the test cluster's API server answers GET /version with v0.0.0-master, "
                    "so Helm refuses the chart's kubeVersion: build-kubernetes.sh must set the "
                    "version -X ldflags for k8s.io/client-go/pkg/version as well as for "
                    f"component-base/version\n{done.stderr[-2000:]}", pytrace=False)
    assert done.returncode == 0, f"helm {request['action']} failed:\n{done.stderr[-4000:]}"
    return dict(json.loads(done.stdout))


@dataclass(frozen=True)
class Operator:
    """An installed operator: where it runs and under which identity."""

    namespace: str
    deployment: str
    service_account: str
    release: dict[str, Any]

    def pod(self, node: KubeNode) -> dict[str, Any]:
        running = [p for p in pods(node, self.namespace, OPERATOR_SELECTOR) if pod_ready(p)]
        assert len(running) == 1, [p["metadata"]["name"] for p in running]
        return running[0]

    def logs(self, node: KubeNode) -> str:
        result = node.kubectl("logs", "-n", self.namespace, f"deployment/{self.deployment}",
                              "--tail=-1", check=False, timeout=60)
        return result.stdout + result.stderr


def wait_rollout(node: KubeNode, namespace: str, deployment: str, timeout: float = 180) -> None:
    node.kubectl("rollout", "status", "-n", namespace, f"deployment/{deployment}",
                 f"--timeout={timeout:.0f}s", timeout=timeout + 30)


def helm_operator(node: KubeNode) -> Operator:
    """The session's operator, installed by Helm (again, if a scenario removed it)."""
    if "operator" not in _state:
        image_on_node(node)
        release = helm(node, {"action": "install", "release": RELEASE,
                              "namespace": OPERATOR_NAMESPACE, "chart": str(CHART),
                              "values": HELM_VALUES, "create_namespace": True})
        operator = Operator(OPERATOR_NAMESPACE, RELEASE, RELEASE, release)
        wait_rollout(node, OPERATOR_NAMESPACE, RELEASE)
        _state["operator"] = operator
    return _state["operator"]  # type: ignore[no-any-return]


def uninstall_helm_operator(node: KubeNode) -> None:
    """Remove the Helm release (if this session installed it) and wait for its pod to go."""
    if _state.pop("operator", None) is None:
        return
    helm(node, {"action": "uninstall", "release": RELEASE, "namespace": OPERATOR_NAMESPACE})
    wait_for(lambda: not pods(node, OPERATOR_NAMESPACE, OPERATOR_SELECTOR), timeout=120,
             what="the Helm-installed operator pod gone", interval=POLL)


def keep_operator_logs(node: KubeNode, request: pytest.FixtureRequest,
                       operator: Operator) -> None:
    """After a failed scenario: the operator's logs and description as artifacts."""
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    dest = ARTIFACTS / request.node.name
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "operator.log").write_text(operator.logs(node))
    described = node.kubectl("describe", "pods", "-n", operator.namespace, "-l",
                             OPERATOR_SELECTOR, check=False)
    (dest / "operator-describe.txt").write_text(described.stdout + described.stderr)


@contextmanager
def operator_fixture(node: KubeNode, request: pytest.FixtureRequest) -> Iterator[Operator]:
    operator = helm_operator(node)
    yield operator
    keep_operator_logs(node, request, operator)


# ------------------------------------------------------------ ShoalClusters


def cluster_spec(name: str, workers: int = 2, **group: Any) -> dict[str, Any]:
    """A ShoalCluster small enough that several fit on one 2-core node."""
    worker_group = {"name": "default", "replicas": workers, "nthreads": 1,
                    "resources": SMALL, **group}
    if "minReplicas" in group:
        worker_group.pop("replicas")
    return {"apiVersion": "shoal.dev/v1alpha1", "kind": "ShoalCluster",
            "metadata": {"name": name},
            "spec": {"scheduler": {"resources": SMALL}, "workerGroups": [worker_group]}}


def status(node: KubeNode, namespace: str, name: str) -> dict[str, Any]:
    obj = get(node, namespace, "shoalcluster", name)
    return dict((obj or {}).get("status") or {})


def conditions(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status.get("conditions", [])}


def worker_pods(node: KubeNode, namespace: str, cluster: str) -> list[dict[str, Any]]:
    return pods(node, namespace, f"shoal.dev/cluster={cluster},shoal.dev/component=worker")


def wait_running(node: KubeNode, namespace: str, name: str, workers: int,
                 timeout: float = POD_START) -> dict[str, Any]:
    """Wait for phase Running with exactly ``workers`` ready of ``workers`` desired."""
    def done() -> dict[str, Any] | None:
        current = status(node, namespace, name)
        ok = (current.get("phase") == "Running" and current.get("readyWorkers") == workers
              and current.get("desiredWorkers") == workers
              and conditions(current).get("WorkersReady") == "True"
              and len(worker_pods(node, namespace, name)) == workers)
        return current if ok else None
    return wait_for(done, timeout=timeout, interval=POLL,
                    what=f"ShoalCluster {namespace}/{name} Running with {workers} workers")


def scheduler_pod(node: KubeNode, namespace: str, cluster: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        found = [p for p in pods(node, namespace, f"shoal.dev/cluster={cluster},"
                                 "shoal.dev/component=scheduler") if pod_ready(p)]
        return found[0] if len(found) == 1 else None
    return wait_for(ready, timeout=POD_START, interval=POLL,
                    what=f"one ready scheduler pod of {namespace}/{cluster}")


def secured(node: KubeNode, namespace: str, cluster: str) -> bool:
    """Whether the cluster runs with TLS (its status says tls://)."""
    return str(status(node, namespace, cluster).get("schedulerAddress", "")).startswith("tls://")


def scheduler_http(node: KubeNode, namespace: str, cluster: str) -> str:
    scheme = "https" if secured(node, namespace, cluster) else "http"
    return f"{scheme}://{scheduler_pod(node, namespace, cluster)['status']['podIP']}:8787"


def scheduler_comm(node: KubeNode, namespace: str, cluster: str) -> str:
    scheme = "tls" if secured(node, namespace, cluster) else "tcp"
    return f"{scheme}://{scheduler_pod(node, namespace, cluster)['status']['podIP']}:8786"


def client_secret(node: KubeNode, namespace: str, cluster: str) -> dict[str, bytes]:
    """The cluster's client Secret, decoded: ca.crt, tls.crt, tls.key, token."""
    secret = get(node, namespace, "secret", f"{cluster}-client-tls")
    assert secret is not None, f"no client Secret for {namespace}/{cluster}"
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def security_for(node: KubeNode, namespace: str, cluster: str) -> Any:
    """A client's Security from the cluster's Secret (as KubeCluster makes it)."""
    from shoal.cluster.kube import security_from_secret_data

    secret = get(node, namespace, "secret", f"{cluster}-client-tls")
    assert secret is not None, f"no client Secret for {namespace}/{cluster}"
    return security_from_secret_data(namespace, f"{cluster}-client-tls", secret["data"])


# The test helpers read the scheduler's own pod IP: like the kubelet's probes they
# do not check its certificate (test_operator_security.py checks it against the CA).
UNVERIFIED = ssl.create_default_context()
UNVERIFIED.check_hostname = False
UNVERIFIED.verify_mode = ssl.CERT_NONE


def http_json(url: str, body: Any = None, token: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=10, context=UNVERIFIED) as response:
        return json.loads(response.read())


def scheduler_workers(url: str) -> set[str]:
    """Names of the workers the scheduler knows (the worker pods' names)."""
    return {str(w["name"]) for w in http_json(f"{url}/api/v1/workers")["workers"]}


Sample = tuple[str, dict[str, str], float]


def scrape(url: str) -> list[Sample]:
    """A /metrics page parsed by prometheus_client's parser: (sample name, labels, value)."""
    with urllib.request.urlopen(url, timeout=10, context=UNVERIFIED) as response:
        text = response.read().decode()
    return [(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def metric(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The sum of the samples called ``name`` that carry ``labels``; None if there is none."""
    values = [value for sample, found, value in samples if sample == name
              and all(found.get(k) == v for k, v in labels.items())]
    return sum(values) if values else None


def wait_gone(node: KubeNode, namespace: str, kind: str, name: str,
              timeout: float = 120) -> None:
    wait_for(lambda: get(node, namespace, kind, name) is None, timeout=timeout,
             interval=POLL, what=f"{kind} {namespace}/{name} gone")


def timed(what: str) -> Callable[[], float]:
    """A stopwatch: call the answer to get the seconds since ``timed`` was called."""
    started = time.monotonic()
    return lambda: time.monotonic() - started


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------ held results


def _made_here() -> Callable[[int, int], tuple[int, str, bytes]]:
    """A task returning (i, the pod it ran on, some bytes); nested, so pickled by value."""
    def made_here(i: int, size: int) -> tuple[int, str, bytes]:
        import socket

        return i, socket.gethostname(), bytes(size)
    return made_here


class HeldResults:
    """Results a client holds, each remembering the pod that computed it.

    A result moved to another worker (retirement) still names the pod that
    made it; a result lost and recomputed names the pod that recomputed it.
    So :meth:`lost` counts exactly the results that did not survive.
    """

    def __init__(self, client: Any, n: int, size: int = 100_000,
                 spread_over: list[str] | None = None) -> None:
        """``n`` results; with ``spread_over`` (worker names), an equal share on each."""
        self.client = client
        made_here = _made_here()
        if spread_over:
            by_index: dict[int, Any] = {}
            for k, worker in enumerate(spread_over):
                share = list(range(n))[k::len(spread_over)]
                futures = client.map(made_here, share, size=size, pure=False, workers=[worker])
                by_index.update(zip(share, futures, strict=True))
            self.futures = [by_index[i] for i in range(n)]
        else:
            self.futures = client.map(made_here, range(n), size=size, pure=False)
        self.made_on = {i: host for i, host, _ in client.gather(self.futures)}

    def on(self, pods: set[str]) -> int:
        """How many of the results were made on these pods."""
        return sum(host in pods for host in self.made_on.values())

    def lost(self) -> list[int]:
        gathered = self.client.gather(self.futures)
        assert [i for i, _, _ in gathered] == sorted(self.made_on)
        return [i for i, host, _ in gathered if self.made_on[i] != host]


def recomputed(http_url: str) -> float:
    """The scheduler's count of results computed again because a worker lost them."""
    value = metric(scrape(f"{http_url}/metrics"), "shoal_scheduler_tasks_recomputed_total")
    assert value is not None, "shoal_scheduler_tasks_recomputed_total is not served"
    return value


def pod_names(node: KubeNode, namespace: str, cluster: str) -> set[str]:
    return {p["metadata"]["name"] for p in worker_pods(node, namespace, cluster)}


def wait_scheduler_knows(node: KubeNode, namespace: str, cluster: str,
                         timeout: float = 60) -> set[str]:
    """Wait until the scheduler's workers are exactly the cluster's worker pods."""
    url = scheduler_http(node, namespace, cluster)

    def same() -> set[str] | None:
        names = pod_names(node, namespace, cluster)
        return names if names and scheduler_workers(url) == names else None
    return wait_for(same, timeout=timeout, interval=POLL,
                    what=f"the scheduler of {namespace}/{cluster} to know exactly its pods")


def start_cluster(node: KubeNode, namespace: str, name: str, workers: int = 2,
                  **group: Any) -> dict[str, Any]:
    """Apply :func:`cluster_spec` and wait until it is Running; answers its status."""
    apply(node, namespace, cluster_spec(name, workers, **group))
    return wait_running(node, namespace, name, workers)


def client_for(node: KubeNode, namespace: str, name: str, timeout: float = 30) -> Any:
    """A Client of the cluster's scheduler, at its pod IP, from the test process,
    with the cluster's client credentials when it is secured."""
    from shoal import Client, Security

    address = scheduler_comm(node, namespace, name)
    security = security_for(node, namespace, name) if address.startswith("tls://") \
        else Security()
    return Client(address, timeout=timeout, security=security)
