"""KubeCluster: create (or attach to) a ShoalCluster from a notebook.

The operator does the real work; this class only writes a ShoalCluster,
waits until the operator reports its scheduler ready, and exposes
``scheduler_address`` so that ``Client(cluster)`` connects. Waiting fails
with errors that say what to do: the CRDs are not installed, no operator
picked the cluster up, the spec was refused, or the scheduler is crash
looping (with its logs).

It also holds :class:`KubeApi`, the small dict-in/dict-out Kubernetes REST
helper the operator uses too (the layers import downwards: operator ->
cluster). ``kubernetes`` is imported lazily: ``import shoal`` needs only the
core dependencies; this module needs ``pip install shoal[kubernetes]``.

A secured cluster (the default) names in its status the Secret with a
client's credentials (``status.security.clientSecret``: CA, certificate,
key and HTTP token). KubeCluster reads it once the cluster is up, writes the
PEMs into a private temporary directory and offers them as ``security``,
which ``Client(cluster)`` uses: no code of the user's deals with
certificates. Reading it needs ``get`` on Secrets in the namespace
(manifests/examples/notebook-rbac.yaml).
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import secrets
import shutil
import string
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlencode

from .._exceptions import KubeApiError, KubeClusterError
from ..comm import Security

GROUP = "shoal.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CLUSTER_PLURAL = "shoalclusters"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
POLL_INTERVAL = 0.5
DEFAULT_TIMEOUT = 300.0
OPERATOR_TIMEOUT = 30.0
LOG_LINES = 50






def api_path(api_version: str, plural: str, namespace: str | None = None,
             name: str | None = None, subresource: str | None = None) -> str:
    """The REST path of a collection or object (``v1`` is the core group)."""
    path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespace is not None:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name is not None:
        path += f"/{name}"
    if subresource is not None:
        path += f"/{subresource}"
    return path


def _kubernetes() -> Any:
    try:
        import kubernetes
    except ImportError as exc:
        raise KubeClusterError(
            "Kubernetes support needs the kubernetes extra: pip install 'shoal[kubernetes]'"
        ) from exc
    return kubernetes


class KubeApi:
    """Plain-dict access to the Kubernetes REST API through the official client."""

    def __init__(self, configuration: Any = None) -> None:
        self._client = _kubernetes().client.ApiClient(configuration)

    @classmethod
    def for_host(cls, host: str) -> KubeApi:
        """An unauthenticated client of ``host`` (tests, ``kubectl proxy``)."""
        configuration = _kubernetes().client.Configuration()
        configuration.host = host.rstrip("/")
        return cls(configuration)

    @classmethod
    def from_environment(cls) -> KubeApi:
        """In-cluster service account if there is one, else the kubeconfig."""
        config = _kubernetes().config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                config.load_kube_config()
            except (config.ConfigException, OSError) as exc:
                raise KubeClusterError(
                    f"no Kubernetes credentials: not in a pod and no kubeconfig ({exc})"
                ) from exc
        return cls()

    def request(self, method: str, path: str, body: Any = None,
                query: Mapping[str, Any] | None = None, content_type: str | None = None,
                raw: bool = False) -> Any:
        from kubernetes.client.exceptions import ApiException

        url = self._client.configuration.host + path
        if query:
            url += "?" + urlencode(query)
        headers = {"Accept": "application/json"}
        self._client.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        try:
            response = self._client.call_api(method, url, header_params=headers, body=body,
                                             _request_timeout=30)
            data = response.read()
        except (ApiException, OSError) as exc:
            raise KubeApiError(0, f"{method} {path}: {exc}") from exc
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        if response.status >= 400:
            raise KubeApiError(response.status, f"{method} {path}: {_reason(text)}")
        return text if raw else (json.loads(text) if text else None)

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def create(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def close(self) -> None:
        self._client.close()


def _reason(text: str) -> str:
    try:
        return str(json.loads(text).get("message") or text)[:1000]
    except (ValueError, AttributeError):
        return text[:1000]


def current_namespace() -> str:
    """The pod's namespace, else the kubeconfig context's, else ``default``."""
    if NAMESPACE_FILE.exists():
        return NAMESPACE_FILE.read_text().strip()
    try:
        from kubernetes import config

        _, context = config.list_kube_config_contexts()
        return str(context["context"].get("namespace") or "default")
    except Exception:  # noqa: BLE001 - no kubeconfig is a normal case here
        return "default"


def cluster_manifest(name: str, namespace: str, *, image: str | None, n_workers: int,
                     resources: Mapping[str, Any] | None, nthreads: int,
                     memory: str | None, env: Mapping[str, str] | None,
                     idle_timeout: int, tls: bool = True) -> dict[str, Any]:
    group: dict[str, Any] = {"name": "default", "replicas": n_workers, "nthreads": nthreads}
    if memory:
        group["memory"] = memory
    if resources:
        group["resources"] = dict(resources)
    if env:
        group["env"] = [{"name": k, "value": str(v)} for k, v in env.items()]
    spec: dict[str, Any] = {"workerGroups": [group], "idleTimeout": idle_timeout}
    if not tls:
        spec["security"] = {"tls": False}
    if image:
        spec["image"] = image
    return {"apiVersion": API_VERSION, "kind": "ShoalCluster",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/created-by": "shoal-kubecluster"}},
            "spec": spec}


def _private_file(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(data)
    return path


def security_from_secret(api: KubeApi, namespace: str, secret: str) -> Security:
    """A client's :class:`Security` from a cluster's client Secret (ca.crt, tls.crt,
    tls.key, token), its PEMs in a private temporary directory removed at exit."""
    try:
        data = api.get(api_path("v1", "secrets", namespace, secret)).get("data") or {}
    except KubeApiError as exc:
        hint = (" (the notebook's ServiceAccount needs get on secrets: see "
                "manifests/examples/notebook-rbac.yaml)" if exc.status == 403 else "")
        raise KubeClusterError(f"cannot read the cluster's client credentials, Secret "
                               f"{namespace}/{secret}: {exc}{hint}") from exc
    return security_from_secret_data(namespace, secret, data)


def security_from_secret_data(namespace: str, secret: str,
                              data: Mapping[str, str]) -> Security:
    """:func:`security_from_secret` for the Secret's ``data`` (base64 values) in hand."""
    missing = sorted({"ca.crt", "tls.crt", "tls.key"} - set(data))
    if missing:
        raise KubeClusterError(f"Secret {namespace}/{secret} lacks {', '.join(missing)}")
    directory = tempfile.mkdtemp(prefix="shoal-kube-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    paths = {key: _private_file(directory, key, base64.b64decode(data[key]))
             for key in ("ca.crt", "tls.crt", "tls.key")}
    token = base64.b64decode(data["token"]).decode() if data.get("token") else None
    cert, key = paths["tls.crt"], paths["tls.key"]
    return Security(tls_ca_file=paths["ca.crt"], tls_client_cert=cert, tls_client_key=key,
                    tls_worker_cert=cert, tls_worker_key=key, require_encryption=True,
                    http_token=token)


def _random_name() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "shoal-" + "".join(secrets.choice(alphabet) for _ in range(6))


class KubeCluster:
    """A ShoalCluster seen from Python: ``Client(KubeCluster(n_workers=4))``.

    ``close()`` deletes the ShoalCluster (and with it, through
    ownerReferences, every pod) unless the cluster was attached to with
    :meth:`from_name`, which leaves it running.
    """

    def __init__(self, name: str | None = None, image: str | None = None, n_workers: int = 1,
                 resources: Mapping[str, Any] | None = None, namespace: str | None = None, *,
                 nthreads: int = 1, memory: str | None = None,
                 env: Mapping[str, str] | None = None, idle_timeout: int = 0,
                 timeout: float = DEFAULT_TIMEOUT, operator_timeout: float = OPERATOR_TIMEOUT,
                 api: KubeApi | None = None, scheduler_address: str | None = None,
                 create: bool = True, tls: bool = True) -> None:
        """``scheduler_address`` replaces the in-cluster address, e.g. to connect
        through ``kubectl port-forward svc/NAME-scheduler 8786`` from outside
        (``tls://localhost:8786`` for a secured cluster). ``tls=False`` creates the
        cluster without TLS (``spec.security.tls: false``; loudly reported)."""
        self.api = api or KubeApi.from_environment()
        self.namespace = namespace or current_namespace()
        self.name = name or _random_name()
        self._address_override = scheduler_address
        self.scheduler_address = ""
        self.dashboard_address = ""
        #: The client credentials of a secured cluster (``Client(cluster)`` uses them).
        self.security = Security()
        self.shutdown_on_close = create
        self._closed = False
        if create:
            body = cluster_manifest(self.name, self.namespace, image=image, n_workers=n_workers,
                                    resources=resources, nthreads=nthreads, memory=memory,
                                    env=env, idle_timeout=idle_timeout, tls=tls)
            self._create(body)
        try:
            self.wait(timeout, operator_timeout)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_name(cls, name: str, namespace: str | None = None, *,
                  timeout: float = DEFAULT_TIMEOUT, api: KubeApi | None = None,
                  scheduler_address: str | None = None) -> KubeCluster:
        """Attach to an existing ShoalCluster; ``close()`` leaves it running."""
        return cls(name=name, namespace=namespace, timeout=timeout, api=api,
                   scheduler_address=scheduler_address, create=False)

    @property
    def dashboard_link(self) -> str | None:
        return f"{self.dashboard_address}/" if self.dashboard_address else None

    @property
    def path(self) -> str:
        return api_path(API_VERSION, CLUSTER_PLURAL, self.namespace, self.name)

    def _create(self, body: Mapping[str, Any]) -> None:
        try:
            self.api.create(api_path(API_VERSION, CLUSTER_PLURAL, self.namespace), body)
        except KubeApiError as exc:
            if exc.status == 404:
                raise KubeClusterError(
                    "the ShoalCluster resource is not known to this Kubernetes cluster: install "
                    "the CRDs (kubectl apply -f manifests/crds/, or helm install the "
                    f"shoal-operator chart) ({exc})") from exc
            if exc.status == 409:
                raise KubeClusterError(
                    f"a ShoalCluster {self.namespace}/{self.name} already exists; use "
                    "KubeCluster.from_name() to connect to it") from exc
            raise

    def status(self) -> dict[str, Any]:
        try:
            return dict(self.api.get(self.path).get("status") or {})
        except KubeApiError as exc:
            if exc.status == 404:
                raise KubeClusterError(
                    f"ShoalCluster {self.namespace}/{self.name} does not exist") from exc
            raise

    def wait(self, timeout: float = DEFAULT_TIMEOUT,
             operator_timeout: float = OPERATOR_TIMEOUT) -> None:
        """Block until the scheduler is ready, or raise a KubeClusterError saying why not."""
        start = time.monotonic()
        status: dict[str, Any] = {}
        while time.monotonic() - start < timeout:
            status = self.status()
            if status.get("phase") == "Failed":
                raise KubeClusterError(f"ShoalCluster {self.namespace}/{self.name} failed: "
                                       f"{status.get('message', 'no message')}")
            if status.get("phase") == "Running" and status.get("schedulerAddress"):
                security = status.get("security") or {}
                if security.get("tls") and security.get("clientSecret"):
                    self.security = security_from_secret(self.api, self.namespace,
                                                         security["clientSecret"])
                self.scheduler_address = self._address_override or status["schedulerAddress"]
                self.dashboard_address = status.get("dashboardAddress", "")
                return
            if not status and time.monotonic() - start > operator_timeout:
                raise KubeClusterError(
                    f"no shoal operator picked up ShoalCluster {self.namespace}/{self.name} "
                    f"within {operator_timeout:.0f}s: is the operator running and watching "
                    f"namespace {self.namespace}? (kubectl get pods -A -l "
                    "app.kubernetes.io/name=shoal-operator)")
            self._check_scheduler_pods()
            time.sleep(POLL_INTERVAL)
        raise KubeClusterError(
            f"ShoalCluster {self.namespace}/{self.name} was not ready after {timeout:.0f}s: "
            f"phase {status.get('phase')}, conditions {status.get('conditions', [])}")

    def _check_scheduler_pods(self) -> None:
        selector = f"shoal.dev/cluster={self.name},shoal.dev/component=scheduler"
        pods = self.api.get(api_path("v1", "pods", self.namespace), labelSelector=selector)
        for pod in pods.get("items", []):
            labels = pod.get("metadata", {}).get("labels", {})
            if labels.get("shoal.dev/cluster") != self.name or \
                    labels.get("shoal.dev/component") != "scheduler":
                continue
            for container in pod.get("status", {}).get("containerStatuses", []):
                waiting = container.get("state", {}).get("waiting") or {}
                if waiting.get("reason") in ("CrashLoopBackOff", "ErrImagePull",
                                             "ImagePullBackOff", "CreateContainerConfigError"):
                    raise KubeClusterError(self._crash_report(pod, waiting))

    def _crash_report(self, pod: Mapping[str, Any], waiting: Mapping[str, Any]) -> str:
        pod_name = pod["metadata"]["name"]
        try:
            logs = self.api.request("GET", api_path("v1", "pods", self.namespace, pod_name, "log"),
                                    query={"tailLines": LOG_LINES, "previous": "true"}, raw=True)
        except KubeApiError as exc:
            logs = f"(logs unavailable: {exc})"
        return (f"the scheduler of ShoalCluster {self.namespace}/{self.name} is failing "
                f"({waiting.get('reason')}: {waiting.get('message', '')}); pod {pod_name} "
                f"logs:\n{logs}")

    def scale(self, n: int) -> None:
        """Set the number of workers of the first worker group (stops autoscaling it)."""
        self._set_bounds(None, None)
        self.api.patch(self.path, {"spec": {"replicas": int(n)}})

    def adapt(self, minimum: int = 0, maximum: int = 10) -> None:
        """Let the operator autoscale the first worker group between the bounds."""
        if minimum > maximum:
            raise ValueError(f"minimum ({minimum}) is greater than maximum ({maximum})")
        self._set_bounds(minimum, maximum)

    def _set_bounds(self, minimum: int | None, maximum: int | None) -> None:
        spec = self.api.get(self.path).get("spec", {})
        groups = [dict(g) for g in spec.get("workerGroups") or [{"name": "default"}]]
        if groups[0].get("minReplicas") == minimum and groups[0].get("maxReplicas") == maximum:
            return
        groups[0]["minReplicas"], groups[0]["maxReplicas"] = minimum, maximum
        groups[0] = {k: v for k, v in groups[0].items() if v is not None}
        self.api.patch(self.path, {"spec": {"workerGroups": groups}})

    def close(self) -> None:
        """Delete the ShoalCluster if this object created it."""
        if self._closed:
            return
        self._closed = True
        if self.shutdown_on_close:
            try:
                self.api.delete(self.path)
            except KubeApiError as exc:
                if exc.status != 404:
                    raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KubeCluster({self.namespace}/{self.name}, {self.scheduler_address or 'pending'})"
