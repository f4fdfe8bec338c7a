"""The operator's RBAC and Deployment in manifests/ do what the operator needs.

All-namespaces mode gets a ClusterRole; single-namespace mode a Role that must
not name any cluster-scoped resource (a Role cannot grant those, so such a rule
would be dead and the operator would fail at runtime). The Deployment runs one
replica with the Recreate strategy, as non-root with a read-only root
filesystem, probes kopf's health endpoint and exposes the metrics port.
"""

from __future__ import annotations

from typing import Any

import pytest
from deploy_schemas import MANIFESTS_DIR, cluster_scoped_rules, load_documents

Obj = dict[str, Any]
NAMESPACE = "shoal-system"
SERVICE_ACCOUNT = "shoal-operator"

# What the operator does, as (apiGroup, resource, verb).
NEEDED_IN_NAMESPACE = [
    *[("shoal.dev", res, verb) for res in ("shoalclusters", "shoaljobs")
      for verb in ("get", "list", "watch", "patch", "create", "delete")],
    *[("shoal.dev", f"{res}/status", "patch") for res in ("shoalclusters", "shoaljobs")],
    ("shoal.dev", "shoalclusters/scale", "get"),
    *[("", res, verb) for res in ("pods", "services")
      for verb in ("get", "list", "watch", "create", "patch", "delete")],
    *[("apps", "deployments", verb) for verb in ("get", "list", "watch", "create", "patch", "delete")],
    ("", "pods/log", "get"),
    ("", "events", "create"),
    *[("", "secrets", verb) for verb in ("get", "list", "create", "patch")],
    *[("networking.k8s.io", "networkpolicies", verb)
      for verb in ("get", "create", "patch", "delete")],
]
NEEDED_CLUSTER_WIDE = [
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
]


def _one(relpath: str) -> Obj:
    (doc,) = load_documents(MANIFESTS_DIR / relpath)
    return doc


def _allows(rules: list[Obj], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule.get("apiGroups", [])
        and resource in rule.get("resources", [])
        and verb in rule.get("verbs", [])
        for rule in rules
    )


def _container(deployment: Obj) -> Obj:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("needed", NEEDED_IN_NAMESPACE + NEEDED_CLUSTER_WIDE, ids=str)
def test_the_cluster_role_grants(needed: tuple[str, str, str]) -> None:
    assert _allows(_one("rbac/clusterrole.yaml")["rules"], *needed)


@pytest.mark.parametrize("needed", NEEDED_IN_NAMESPACE, ids=str)
def test_the_namespaced_role_grants(needed: tuple[str, str, str]) -> None:
    assert _allows(_one("rbac/role.yaml")["rules"], *needed)


def test_the_namespaced_role_has_no_cluster_scoped_rule() -> None:
    role = _one("rbac/role.yaml")
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == NAMESPACE
    assert cluster_scoped_rules(role["rules"]) == []


def test_the_scope_check_flags_cluster_scoped_resources() -> None:
    rules = _one("rbac/clusterrole.yaml")["rules"]
    flagged = cluster_scoped_rules(rules)
    assert "apiextensions.k8s.io/customresourcedefinitions" in flagged
    assert "core/namespaces" in flagged
    assert cluster_scoped_rules([{"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}])
    assert cluster_scoped_rules([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}])


def test_no_rule_grants_wildcards_and_secrets_only_what_credentials_need() -> None:
    for path in ("rbac/clusterrole.yaml", "rbac/role.yaml"):
        for rule in _one(path)["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (path, rule)
            if "secrets" in rule["resources"]:
                # The clusters' credentials: no watch (nothing to follow), no delete
                # (the garbage collector removes them with their cluster).
                assert rule["resources"] == ["secrets"], (path, rule)
                assert sorted(rule["verbs"]) == ["create", "get", "list", "patch"], (path, rule)


@pytest.mark.parametrize(
    ("binding", "role_kind"),
    [("rbac/clusterrolebinding.yaml", "ClusterRole"), ("rbac/rolebinding.yaml", "Role")],
)
def test_bindings_grant_the_role_to_the_operator(binding: str, role_kind: str) -> None:
    doc = _one(binding)
    role = _one(f"rbac/{role_kind.lower()}.yaml")
    assert doc["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": role_kind,
        "name": role["metadata"]["name"],
    }
    assert doc["subjects"] == [
        {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
    ]
    account = _one("operator/serviceaccount.yaml")
    assert (account["metadata"]["name"], account["metadata"]["namespace"]) == (
        SERVICE_ACCOUNT,
        NAMESPACE,
    )


@pytest.mark.parametrize("path", ["operator/deployment.yaml", "operator/deployment-namespaced.yaml"])
def test_the_operator_runs_once_safely(path: str) -> None:
    deployment = _one(path)
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    # The "restricted" Pod Security Standard also wants a seccomp profile.
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = _container(deployment)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"/tmp"} <= {mount["mountPath"] for mount in container["volumeMounts"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert "--standalone" in container["command"]


@pytest.mark.parametrize("path", ["operator/deployment.yaml", "operator/deployment-namespaced.yaml"])
def test_the_probes_and_metrics_ports(path: str) -> None:
    container = _container(_one(path))
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_the_two_modes_differ_only_in_scope() -> None:
    cluster = _container(_one("operator/deployment.yaml"))
    single = _container(_one("operator/deployment-namespaced.yaml"))
    ports = ["--metrics-port", "8080", "--health-port", "8081"]
    assert cluster["command"] == ["shoal", "operator", "--all-namespaces", "--standalone", *ports]
    assert single["command"] == ["shoal", "operator", "--namespace", "$(POD_NAMESPACE)",
                                 "--standalone", *ports]
    env = {var["name"]: var for var in single["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert {k: v for k, v in cluster.items() if k != "command"} == {
        k: v for k, v in single.items() if k != "command"
    }


def test_the_metrics_service_selects_the_operator_pod() -> None:
    service = _one("operator/service.yaml")
    deployment = _one("operator/deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("metrics", 8080, "metrics")


def test_everything_lives_in_the_operator_namespace() -> None:
    namespace = _one("namespace.yaml")
    assert namespace["metadata"]["name"] == NAMESPACE
    for path in ("operator", "rbac"):
        for file in (MANIFESTS_DIR / path).glob("*.yaml"):
            for doc in load_documents(file):
                if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
                    assert doc["metadata"]["namespace"] == NAMESPACE, file


def test_the_kustomization_installs_all_namespaces_mode() -> None:
    (kustomization,) = load_documents(MANIFESTS_DIR / "kustomization.yaml")
    listed = kustomization["resources"]
    for entry in listed:
        assert (MANIFESTS_DIR / entry).is_file(), entry
    crds = sorted(f"crds/{p.name}" for p in (MANIFESTS_DIR / "crds").glob("*.yaml"))
    assert set(crds) <= set(listed)
    assert "operator/deployment.yaml" in listed and "rbac/clusterrole.yaml" in listed
    assert not {"operator/deployment-namespaced.yaml", "rbac/role.yaml"} & set(listed)
    # CRDs first, so that nothing refers to a kind the server does not know yet.
    assert listed[: len(crds)] == crds


@pytest.mark.parametrize("path", ["operator/deployment.yaml", "operator/deployment-namespaced.yaml"])
def test_the_command_parses_with_the_real_cli(path: str) -> None:
    cli = pytest.importorskip("shoal.operator.cli")
    container = _container(_one(path))
    command = [arg.replace("$(POD_NAMESPACE)", NAMESPACE) for arg in container["command"]]
    assert command[:2] == ["shoal", "operator"]
    args = cli.build_parser().parse_args(command[2:])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert (args.metrics_port, args.health_port) == (ports["metrics"], ports["health"])
    assert args.standalone and args.peering is None
    assert args.all_namespaces or args.namespace == [NAMESPACE]


# What KubeCluster does from a notebook (shoal.cluster.kube), as (group, resource, verb).
NOTEBOOK_NEEDS = [
    *[("shoal.dev", "shoalclusters", verb) for verb in ("create", "get", "patch", "delete")],
    ("", "pods", "list"),
    ("", "pods/log", "get"),
    ("", "secrets", "get"),  # the cluster's client credentials
]


def test_the_notebook_role_allows_kube_cluster() -> None:
    docs = {doc["kind"]: doc for doc in load_documents(MANIFESTS_DIR / "examples" /
                                                       "notebook-rbac.yaml")}
    rules = docs["Role"]["rules"]
    for needed in NOTEBOOK_NEEDS:
        assert _allows(rules, *needed), needed
    for verb in ("list", "watch", "create", "patch", "delete"):
        assert not _allows(rules, "", "secrets", verb), verb
    assert cluster_scoped_rules(rules) == []
    binding = docs["RoleBinding"]
    assert binding["roleRef"]["name"] == docs["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == docs["ServiceAccount"]["metadata"]["name"]


def test_rbac_covers_every_resource_the_operator_touches() -> None:
    kubeops = pytest.importorskip("shoal.operator.kubeops")
    groups = {"Pod": "", "Service": "", "Event": "", "Deployment": "apps",
              "ShoalCluster": "shoal.dev", "ShoalJob": "shoal.dev", "Secret": "",
              "NetworkPolicy": "networking.k8s.io"}
    assert set(kubeops.PLURALS) == set(groups), "a new kind: grant it in the RBAC files"
    for path in ("rbac/clusterrole.yaml", "rbac/role.yaml"):
        rules = _one(path)["rules"]
        for kind, plural in kubeops.PLURALS.items():
            assert _allows(rules, groups[kind], plural, "create"), (path, kind)
