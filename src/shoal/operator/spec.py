"""Validation and normalisation of a ShoalCluster spec.

The API server checks the CRD's OpenAPI schema, but not everything a
cluster needs (unique group names, min <= max, names short enough to fit a
pod name, parseable quantities), and a schema can be bypassed (old CRD,
``--validate=false``). Every handler therefore goes through
:func:`parse_cluster_spec`, which either returns a typed, defaulted
:class:`ClusterSpec` or raises :class:`InvalidSpec` with a message meant for
``kubectl describe``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.operator.crds import DNS_LABEL_PATTERN, MAX_GROUP_NAME

from .._exceptions import InvalidSpec

DEFAULT_IMAGE = "ghcr.io/shoal-dev/shoal:0.1.0"
DEFAULT_GROUP_NAME = "default"
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
MAX_NAME = 63
POD_SUFFIX_LEN = 5  # NAME-GROUP-xxxxx

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_SUFFIXES = {
    None: 1, "m": 1e-3, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}




def default_image() -> str:
    """The image used when a spec names none (the operator's SHOAL_DEFAULT_IMAGE)."""
    return os.environ.get("SHOAL_DEFAULT_IMAGE") or DEFAULT_IMAGE


def parse_quantity(value: object, what: str) -> float:
    """A Kubernetes quantity (``4Gi``, ``500M``, ``2``) as a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidSpec(f"{what}: expected a quantity such as 4Gi, got {value!r}")
    match = _QUANTITY.match(str(value).strip())
    if match is None:
        raise InvalidSpec(f"{what}: {value!r} is not a Kubernetes quantity (e.g. 512Mi, 4Gi)")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


@dataclass(frozen=True)
class SchedulerSpec:
    image: str
    service_type: str = "ClusterIP"
    resources: Mapping[str, Any] = field(default_factory=dict)
    env: list[Mapping[str, Any]] = field(default_factory=list)
    template: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerGroup:
    name: str
    replicas: int
    image: str
    min_replicas: int | None = None
    max_replicas: int | None = None
    nthreads: int = 1
    memory_bytes: int | None = None
    memory: str | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    worker_resources: Mapping[str, float] = field(default_factory=dict)
    env: list[Mapping[str, Any]] = field(default_factory=list)
    template: Mapping[str, Any] = field(default_factory=dict)

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas is not None and self.max_replicas is not None

    def clamp(self, n: int) -> int:
        """``n`` bounded by minReplicas/maxReplicas when autoscaled."""
        if self.min_replicas is not None and self.max_replicas is not None:
            return max(self.min_replicas, min(self.max_replicas, n))
        return n


@dataclass(frozen=True)
class SecuritySpec:
    """``spec.security``: secure unless told otherwise.

    ``tls``: mutual TLS with certificates the operator makes (off: plain
    ``tcp://``, reported loudly in status). ``network_policy``: a NetworkPolicy
    that admits only the cluster's own pods, the operator and client pods
    labelled ``shoal.dev/client-of: NAME``. ``rotation``: any string; a new
    value makes the operator issue new credentials and restart every pod.
    """

    tls: bool = True
    network_policy: bool = True
    rotation: str = ""


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    namespace: str
    image: str
    image_pull_policy: str
    idle_timeout: int
    scheduler: SchedulerSpec
    groups: list[WorkerGroup]
    security: SecuritySpec = field(default_factory=SecuritySpec)
    # Fingerprint of the credentials in the cluster's Secrets, filled in by the
    # operator once they exist: it is part of every pod template, so new
    # credentials (a rotation) roll the pods.
    credentials: str = ""

    def group(self, name: str) -> WorkerGroup:
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)


def _int(value: object, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpec(f"{what}: expected an integer, got {value!r}")
    if value < minimum:
        raise InvalidSpec(f"{what}: must be at least {minimum}, got {value}")
    return value


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidSpec(f"{what}: expected a mapping, got {type(value).__name__}")
    return value


def _env(value: object, what: str) -> list[Mapping[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidSpec(f"{what}: expected a list of {{name, value}}")
    for i, item in enumerate(value):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise InvalidSpec(f"{what}[{i}]: each variable needs a string `name`")
    return list(value)


def _string(value: object, what: str, default: str, choices: tuple[str, ...] = ()) -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise InvalidSpec(f"{what}: expected a string, got {value!r}")
    if choices and value not in choices:
        raise InvalidSpec(f"{what}: {value!r} is not one of {', '.join(choices)}")
    return value


def _resources(value: object, what: str) -> Mapping[str, Any]:
    resources = _mapping(value, what)
    for kind, quantities in resources.items():
        if kind not in ("requests", "limits", "claims"):
            raise InvalidSpec(f"{what}: unknown key {kind!r} (use requests and limits)")
        if kind != "claims":
            for key, amount in _mapping(quantities, f"{what}.{kind}").items():
                parse_quantity(amount, f"{what}.{kind}.{key}")
    return resources


def _worker_resources(raw: Mapping[str, Any], resources: Mapping[str, Any],
                      what: str) -> Mapping[str, float]:
    declared = _mapping(raw.get("workerResources"), f"{what}.workerResources")
    for key, amount in declared.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise InvalidSpec(f"{what}.workerResources.{key}: expected a number")
        if not re.match(r"^[A-Za-z0-9_.-]+$", key):
            raise InvalidSpec(f"{what}.workerResources: bad resource name {key!r}")
    if declared:
        return dict(declared)
    gpus = _mapping(resources.get("limits"), "limits").get("nvidia.com/gpu")
    return {"GPU": parse_quantity(gpus, "nvidia.com/gpu")} if gpus else {}


def _group(raw: object, index: int, image: str, replicas_override: int | None) -> WorkerGroup:
    what = f"spec.workerGroups[{index}]"
    group = _mapping(raw, what)
    name = group.get("name")
    if not isinstance(name, str) or not re.match(DNS_LABEL_PATTERN, name):
        raise InvalidSpec(f"{what}.name: {name!r} must be a DNS label (a-z, 0-9, '-')")
    if len(name) > MAX_GROUP_NAME:
        raise InvalidSpec(f"{what}.name: {name!r} is longer than {MAX_GROUP_NAME} characters")
    low, high = group.get("minReplicas"), group.get("maxReplicas")
    if (low is None) != (high is None):
        raise InvalidSpec(f"{what}: set both minReplicas and maxReplicas to autoscale, or neither")
    if low is not None:
        low, high = _int(low, f"{what}.minReplicas"), _int(high, f"{what}.maxReplicas")
        if low > high:
            raise InvalidSpec(f"{what}: minReplicas ({low}) is greater than maxReplicas ({high})")
    # An autoscaled group starts at minReplicas unless told otherwise.
    replicas = _int(group.get("replicas", 1 if low is None else low), f"{what}.replicas")
    if replicas_override is not None:
        replicas = replicas_override
    memory = group.get("memory")
    memory_bytes = None if memory is None else int(parse_quantity(memory, f"{what}.memory"))
    resources = _resources(group.get("resources"), f"{what}.resources")
    return WorkerGroup(
        name=name, replicas=replicas, min_replicas=low, max_replicas=high,
        image=_string(group.get("image"), f"{what}.image", image),
        nthreads=_int(group.get("nthreads", 1), f"{what}.nthreads", minimum=1),
        memory_bytes=memory_bytes, memory=None if memory is None else str(memory),
        resources=resources, worker_resources=_worker_resources(group, resources, what),
        env=_env(group.get("env"), f"{what}.env"),
        template=_mapping(group.get("template"), f"{what}.template"),
    )


def _groups(spec: Mapping[str, Any], image: str) -> list[WorkerGroup]:
    raw = spec.get("workerGroups")
    if raw is None:
        raw = [{"name": DEFAULT_GROUP_NAME}]
    if not isinstance(raw, list) or not raw:
        raise InvalidSpec("spec.workerGroups: needs at least one worker group")
    override = spec.get("replicas")
    if override is not None:
        override = _int(override, "spec.replicas")
    groups = [_group(item, i, image, override if i == 0 else None) for i, item in enumerate(raw)]
    names = [group.name for group in groups]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidSpec(f"spec.workerGroups: duplicate group names {', '.join(duplicates)}")
    return groups


def _bool(value: object, what: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidSpec(f"{what}: expected true or false, got {value!r}")
    return value


def _security(value: object) -> SecuritySpec:
    raw = _mapping(value, "spec.security")
    unknown = sorted(set(raw) - {"tls", "networkPolicy", "rotation"})
    if unknown:
        raise InvalidSpec(f"spec.security: unknown field(s) {', '.join(unknown)} "
                          "(known: tls, networkPolicy, rotation)")
    rotation = raw.get("rotation")
    if isinstance(rotation, int) and not isinstance(rotation, bool):
        rotation = str(rotation)
    return SecuritySpec(tls=_bool(raw.get("tls"), "spec.security.tls", True),
                        network_policy=_bool(raw.get("networkPolicy"),
                                             "spec.security.networkPolicy", True),
                        rotation=_string(rotation, "spec.security.rotation", ""))


def _check_name(name: str, groups: list[WorkerGroup]) -> None:
    longest = max(len(group.name) for group in groups)
    if len(name) + 1 + longest + 1 + POD_SUFFIX_LEN > MAX_NAME:
        raise InvalidSpec(
            f"metadata.name: {name!r} is too long: worker pods are named NAME-GROUP-xxxxx and "
            f"must fit in {MAX_NAME} characters"
        )


def parse_cluster_spec(name: str, namespace: str, spec: object) -> ClusterSpec:
    """Validate a ShoalCluster spec and fill in defaults, or raise InvalidSpec."""
    raw = _mapping(spec, "spec")
    image = _string(raw.get("image"), "spec.image", default_image())
    sched = _mapping(raw.get("scheduler"), "spec.scheduler")
    scheduler = SchedulerSpec(
        image=_string(sched.get("image"), "spec.scheduler.image", image),
        service_type=_string(sched.get("serviceType"), "spec.scheduler.serviceType",
                             "ClusterIP", SERVICE_TYPES),
        resources=_resources(sched.get("resources"), "spec.scheduler.resources"),
        env=_env(sched.get("env"), "spec.scheduler.env"),
        template=_mapping(sched.get("template"), "spec.scheduler.template"),
    )
    groups = _groups(raw, image)
    _check_name(name, groups)
    return ClusterSpec(
        name=name, namespace=namespace, image=image,
        image_pull_policy=_string(raw.get("imagePullPolicy"), "spec.imagePullPolicy",
                                  "IfNotPresent", PULL_POLICIES),
        idle_timeout=_int(raw.get("idleTimeout", 0), "spec.idleTimeout"),
        scheduler=scheduler, groups=groups, security=_security(raw.get("security")),
    )
