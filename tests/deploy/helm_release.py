"""Install the chart with the real Helm library into kmock's Kubernetes emulator.

helm-sdkpy (Helm's Go code behind a Python API) can lint a chart but has no
`helm template`; it can only install. No cluster runs in CI, so we install
into kmock's in-memory Kubernetes emulator served on a local port: Helm does
everything it does against a real API server (API discovery, the CRDs from
``crds/`` first, value schema checks, rendering, mapping every object to a
served resource, creating it) and returns the release with its rendered
manifest and notes, while the emulator keeps every object it was sent.

One gap is bridged here: Helm stores its release record as a core/v1 Secret
sent in Kubernetes' protobuf encoding, which the emulator (JSON only) cannot
decode. Those requests are answered with a minimal JSON Secret, which is all
Helm reads back. Every chart object is sent as JSON and reaches the emulator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import warnings
from typing import Any

import aiohttp.web
import helm_sdkpy
import kmock
import yaml

PROTOBUF = "application/vnd.kubernetes.protobuf"
INSTALL_TIMEOUT = 60  # seconds; an install takes well under one

# Resources of the Prometheus Operator that the chart may create; a cluster
# with the monitoring CRDs serves them.
MONITORING_RESOURCES = {
    "monitoring.coreos.com/v1/servicemonitors": "ServiceMonitor",
    "monitoring.coreos.com/v1/podmonitors": "PodMonitor",
}

Obj = dict[str, Any]


@dataclasses.dataclass
class Release:
    """What a Helm install produced: the rendered objects and what the server received."""

    rendered: list[Obj]
    notes: str
    stored: dict[tuple[str, str | None, str], Obj]  # (resource, namespace, name) -> object
    raw: Obj


class _Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus a JSON answer to Helm's protobuf release-record requests."""

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.content_type.startswith(PROTOBUF) and "/secrets" in raw_request.path:
            await raw_request.read()
            namespace = _namespace_of(raw_request.path)
            name = raw_request.path.rstrip("/").rsplit("/", 1)[-1]
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
            }
            status = 201 if raw_request.method == "POST" else 200
            return aiohttp.web.json_response(secret, status=status)
        return await super().__call__(raw_request)


def _namespace_of(path: str) -> str:
    parts = path.split("/")
    return parts[parts.index("namespaces") + 1] if "namespaces" in parts else ""


def _kubeconfig(server: str, namespace: str) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
        "contexts": [
            {
                "name": "emulator",
                "context": {"cluster": "emulator", "user": "tester", "namespace": namespace},
            }
        ],
        "current-context": "emulator",
    }
    return yaml.safe_dump(config)


def _core_v1_discovery(emulator: kmock.KubernetesEmulator) -> Any:
    """kmock answers /api/v1 with groupVersion "/v1"; client-go needs "v1"."""

    async def serve(request: kmock.Request) -> Obj:
        document = await emulator._serve_version(request)
        assert isinstance(document, dict)
        return {**document, "groupVersion": "v1"}

    return serve


def _prepare(emulator: kmock.KubernetesEmulator) -> None:
    with warnings.catch_warnings():  # kmock reads its bundle with a deprecated call
        warnings.simplefilter("ignore", DeprecationWarning)
        emulator.resources.load_bundled()
    for key, kind in MONITORING_RESOURCES.items():
        emulator.resources[key] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=True,
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        )
    emulator["get /api/v1"] << _core_v1_discovery(emulator)


async def _install(chart: str, values: Obj, name: str, namespace: str) -> Release:
    async with _Emulator() as emulator, kmock.Server(emulator) as server:
        _prepare(emulator)
        config = helm_sdkpy.Configuration(
            namespace=namespace, kubeconfig=_kubeconfig(str(server.url).rstrip("/"), namespace)
        )
        install = helm_sdkpy.Install(config)
        raw = await asyncio.wait_for(
            install.run(name, chart, values=values or None, wait=False, timeout=INSTALL_TIMEOUT),
            INSTALL_TIMEOUT,
        )
        stored = {
            (str(resource.plural), ns, obj_name): dict(obj.raw)
            for (resource, ns, obj_name), obj in emulator.objects.items()
            if not obj.deleted
        }
    rendered = [doc for doc in yaml.safe_load_all(raw.get("manifest", "")) if doc]
    notes = raw.get("info", {}).get("notes", "")
    return Release(rendered=rendered, notes=notes, stored=stored, raw=raw)


def install(chart: str, values: Obj | None = None, *, name: str = "shoal",
            namespace: str = "shoal-system") -> Release:
    """Install the chart with these values into a fresh emulator; return the release."""
    return asyncio.run(_install(chart, values or {}, name, namespace))


def lint(chart: str) -> Obj:
    """helm lint the chart directory (with its own values.yaml)."""
    config = helm_sdkpy.Configuration(
        namespace="default", kubeconfig=_kubeconfig("http://127.0.0.1:1", "default")
    )
    result: Obj = asyncio.run(helm_sdkpy.Lint(config).run(chart))
    return result
