"""Validation of deployment artifacts without a Kubernetes cluster.

No cluster runs in CI, so every object we ship (the files in ``manifests/``,
the examples, the objects the Helm chart renders) is checked the way an API
server would check it: built-in kinds against the upstream Kubernetes OpenAPI
schemas bundled with kubernetes-validate (strict mode: unknown fields are
errors), and ShoalCluster/ShoalJob objects against the openAPIV3Schema of our
own CRDs. The CRD schemas are made strict here on purpose: a real API server
silently *prunes* unknown fields, so a typo in an example would vanish instead
of failing; these tests turn it into an error.

Both test venvs import this module (the main Python 3.11 one and the 3.12 one
that has helm-sdkpy), so it only needs pyyaml, jsonschema, kubernetes-validate
and kmock.
"""

from __future__ import annotations

import copy
import functools
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS_DIR = REPO_ROOT / "manifests"
CRDS_DIR = MANIFESTS_DIR / "crds"
EXAMPLES_DIR = MANIFESTS_DIR / "examples"
CHART_DIR = REPO_ROOT / "helm" / "shoal-operator"

# The newest Kubernetes release whose schemas kubernetes-validate ships.
K8S_VERSION = kubernetes_validate.latest_version()

SHOAL_GROUP = "shoal.dev"
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

Obj = dict[str, Any]

# kopf's own peering CRDs (installed by users who enable peering): their scopes.
KOPF_PEERING_SCOPES = {("kopf.dev", "kopfpeerings"): True, ("kopf.dev", "clusterkopfpeerings"): False}


def load_documents(path: Path) -> list[Obj]:
    """Every non-empty YAML document of a file."""
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def load_yaml_text(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def manifest_files() -> list[Path]:
    """Every Kubernetes object file under manifests/ (kustomization files excluded)."""
    files = sorted(MANIFESTS_DIR.rglob("*.yaml")) + sorted(MANIFESTS_DIR.rglob("*.yml"))
    return [path for path in files if path.name not in ("kustomization.yaml", "kustomization.yml")]


def crd_files() -> list[Path]:
    return sorted(CRDS_DIR.glob("*.yaml"))


def validate_upstream(obj: Obj) -> None:
    """Validate a built-in object against the upstream schema (strict: no unknown fields)."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(part) for part in exc.path)
        raise AssertionError(f"{describe(obj)}: {where}: {exc.message}") from exc


def describe(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')} {meta.get('namespace', '')}/{meta.get('name')}"


def strict_schema(schema: Any) -> Any:
    """Turn a CRD's structural schema into a JSON schema that rejects unknown fields.

    ``x-kubernetes-int-or-string`` becomes "integer or string"; an object with
    declared ``properties`` and no ``additionalProperties`` or
    ``x-kubernetes-preserve-unknown-fields`` rejects other keys, since the API
    server would silently drop them.
    """
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict_schema(value) for key, value in schema.items()}
    if result.pop("x-kubernetes-int-or-string", False):
        result["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserve = result.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in result and "additionalProperties" not in result and not preserve:
        result["additionalProperties"] = False
    return result


def load_crd_schemas() -> dict[tuple[str, str], Obj]:
    """(apiVersion, kind) -> strict JSON schema of every served version of our CRDs."""
    schemas: dict[tuple[str, str], Obj] = {}
    for path in crd_files():
        for crd in load_documents(path):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served", True):
                    raw = version["schema"]["openAPIV3Schema"]
                    schemas[(f"{group}/{version['name']}", kind)] = strict_schema(raw)
    return schemas


def validate_custom(obj: Obj, schemas: dict[tuple[str, str], Obj]) -> None:
    """Validate a ShoalCluster/ShoalJob against its CRD, its metadata and its pod overrides."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    assert key in schemas, f"{describe(obj)}: no CRD serves {key}"
    body = copy.deepcopy(obj)
    metadata = body.pop("metadata", None) or {}
    validator = jsonschema.Draft202012Validator(schemas[key])
    errors = sorted(validator.iter_errors(body), key=lambda error: list(error.path))
    if errors:
        lines = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
        raise AssertionError(f"{describe(obj)} violates its CRD:\n" + "\n".join(lines))
    name = metadata.get("name", "")
    assert DNS_SUBDOMAIN.match(name) and len(name) <= 253, f"bad name {name!r}"
    # Metadata has no schema in a CRD: the API server checks it as ObjectMeta.
    validate_upstream({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata})
    for template, container in pod_overrides(obj):
        validate_pod_overrides(template, container, describe(obj))


def pod_overrides(obj: Obj) -> Iterator[tuple[Obj, str]]:
    """Every pod spec override (``template``) of a ShoalCluster or ShoalJob, with its
    main container's name."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "ShoalJob":
        runner = spec.get("runner") or {}
        if "template" in runner:
            yield runner["template"], "runner"
        spec = spec.get("cluster") or {}
    scheduler = spec.get("scheduler") or {}
    if "template" in scheduler:
        yield scheduler["template"], "scheduler"
    for group in spec.get("workerGroups") or []:
        if "template" in group:
            yield group["template"], "worker"


def validate_pod_overrides(template: Obj, container: str, where: str) -> None:
    """A pod spec override must be a valid (partial) core/v1 PodSpec."""
    spec = copy.deepcopy(template)
    spec.setdefault("containers", [{"name": container, "image": "placeholder"}])
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "override"}, "spec": spec}
    try:
        validate_upstream(pod)
    except AssertionError as exc:
        raise AssertionError(f"{where}: pod template override of {container}: {exc}") from exc


def validate_any(obj: Obj, schemas: dict[tuple[str, str], Obj]) -> None:
    """Validate a built-in object upstream, a shoal object against its CRD."""
    if obj.get("apiVersion", "").startswith(SHOAL_GROUP + "/"):
        validate_custom(obj, schemas)
    else:
        validate_upstream(obj)


@functools.cache
def resource_scopes() -> dict[tuple[str, str], bool]:
    """(apiGroup, plural) -> namespaced?, for the built-in resources and our CRDs.

    The built-in list is kmock's bundled copy of a real API server's discovery
    documents, so the scope of each resource is what Kubernetes says it is.
    """
    import kmock

    builtin = kmock.ResourcesArray()
    with warnings.catch_warnings():  # kmock reads its bundle with a deprecated call
        warnings.simplefilter("ignore", DeprecationWarning)
        builtin.load_bundled()
    scopes = {(str(res.group), str(res.plural)): bool(builtin[res].namespaced) for res in builtin}
    scopes.update(KOPF_PEERING_SCOPES)
    for path in crd_files():
        for crd in load_documents(path):
            spec = crd["spec"]
            scopes[(spec["group"], spec["names"]["plural"])] = spec["scope"] == "Namespaced"
    return scopes


def cluster_scoped_rules(rules: list[Obj]) -> list[str]:
    """The (group, resource) pairs of RBAC rules that are cluster-scoped or unknown."""
    scopes = resource_scopes()
    bad: list[str] = []
    for rule in rules:
        if rule.get("nonResourceURLs"):
            bad.append(f"nonResourceURLs {rule['nonResourceURLs']}")
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                parent = resource.split("/", 1)[0]
                if group == "*" or parent == "*" or not scopes.get((group, parent), False):
                    bad.append(f"{group or 'core'}/{resource}")
    return bad
