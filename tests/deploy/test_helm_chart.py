"""The Helm chart, linted and rendered by the real Helm library (helm-sdkpy).

helm-sdkpy needs Python >= 3.12, so this module runs in its own venv (see
docs/kubernetes.md and .ci/run) and skips itself where helm_sdkpy is missing.
The chart is linted with its defaults and with every variant below, then
installed into kmock's Kubernetes emulator (see helm_release) with each
variant; every object Helm renders is validated against the upstream
Kubernetes schemas and checked for what the operator needs: the RBAC switch,
one non-root replica with a read-only root filesystem and probes, and
monitors that really select the operator.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

helm_sdkpy = pytest.importorskip("helm_sdkpy", reason="helm-sdkpy needs Python >= 3.12")

# Imported after the skip: these modules need helm_sdkpy.
import helm_release
from deploy_schemas import (
    CHART_DIR,
    CRDS_DIR,
    MANIFESTS_DIR,
    cluster_scoped_rules,
    load_documents,
    validate_upstream,
)

Obj = dict[str, Any]
RELEASE = "shoal-operator"
NAMESPACE = "shoal-system"
MONITORING = "monitoring.coreos.com/v1"
PORT_ARGS = ["--metrics-port", "8080", "--health-port", "8081"]

VARIANTS: dict[str, Obj] = {
    "defaults": {},
    "namespaced": {"rbac": {"namespaced": True, "watchNamespace": "team-a"}},
    "monitors": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "podMonitor": {"enabled": True, "interval": "15s"},
        }
    },
    "peering": {"peering": {"enabled": True, "name": "shoal"}},
    "own-rbac": {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"},
                 "metrics": {"service": {"enabled": False}}},
    "everything": {
        "rbac": {"namespaced": True},
        "peering": {"enabled": True},
        "metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
        "image": {"tag": "1.2.3", "pullPolicy": "Always"},
        "clusterImage": "registry.example/shoal-gpu:1.2.3",
        "imagePullSecrets": [{"name": "registry"}],
        "extraArgs": ["--verbose"],
        "extraEnv": [{"name": "SHOAL_LOG_LEVEL", "value": "debug"}],
        "podAnnotations": {"example.com/team": "data"},
        "podLabels": {"team": "data"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops",
                         "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
        "serviceAccount": {"annotations": {"example.com/role": "shoal"}},
    },
}


def _merged(base: Obj, override: Obj) -> Obj:
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@pytest.fixture(scope="module")
def releases() -> dict[str, helm_release.Release]:
    return {
        name: helm_release.install(str(CHART_DIR), values, name=RELEASE, namespace=NAMESPACE)
        for name, values in VARIANTS.items()
    }


def _kinds(release: helm_release.Release, kind: str) -> list[Obj]:
    return [doc for doc in release.rendered if doc["kind"] == kind]


def _deployment(release: helm_release.Release) -> Obj:
    (deployment,) = _kinds(release, "Deployment")
    return deployment


def _container(release: helm_release.Release) -> Obj:
    (container,) = _deployment(release)["spec"]["template"]["spec"]["containers"]
    return container


def _assert_lint_clean(result: Obj) -> None:
    assert result["TotalChartsLinted"] == 1
    assert not result["Errors"], result
    assert not result["Messages"], result  # not even INFO (e.g. a missing icon)


# --- lint ---


def test_the_chart_lints_clean() -> None:
    _assert_lint_clean(helm_release.lint(str(CHART_DIR)))


@pytest.mark.parametrize("variant", [name for name in VARIANTS if VARIANTS[name]])
def test_the_chart_lints_clean_with(variant: str, tmp_path: Path) -> None:
    chart = tmp_path / "shoal-operator"
    shutil.copytree(CHART_DIR, chart)
    values = yaml.safe_load((chart / "values.yaml").read_text(encoding="utf-8"))
    (chart / "values.yaml").write_text(yaml.safe_dump(_merged(values, VARIANTS[variant])))
    _assert_lint_clean(helm_release.lint(str(chart)))


def test_lint_reports_a_broken_template(tmp_path: Path) -> None:
    chart = tmp_path / "shoal-operator"
    shutil.copytree(CHART_DIR, chart)
    (chart / "templates" / "broken.yaml").write_text("kind: {{ .Values.nope.missing }}\n")
    result = helm_release.lint(str(chart))
    assert result["Errors"] or any(m["Severity"] >= 3 for m in result["Messages"] or [])


# --- render (install into the emulator) ---


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_rendered_object_is_valid(variant: str, releases: dict[str, Any]) -> None:
    release = releases[variant]
    assert release.rendered
    for doc in release.rendered:
        if doc["apiVersion"] == MONITORING:
            assert doc["kind"] in ("ServiceMonitor", "PodMonitor")
        else:
            validate_upstream(doc)
    # Helm created every rendered object on the server, and the CRDs before them.
    names = {(key[1], key[2]) for key in release.stored}
    for doc in release.rendered:
        assert (doc["metadata"].get("namespace"), doc["metadata"]["name"]) in names


def test_helm_installs_the_crds_of_the_manifests(releases: dict[str, Any]) -> None:
    stored = {
        name: obj for (plural, _, name), obj in releases["defaults"].stored.items()
        if plural == "customresourcedefinitions"
    }
    expected = {doc["metadata"]["name"]: doc for path in sorted(CRDS_DIR.glob("*.yaml"))
                for doc in load_documents(path)}
    assert set(stored) == set(expected)
    for name, crd in expected.items():
        assert stored[name]["spec"] == crd["spec"], name


def test_the_operator_runs_once_as_non_root(releases: dict[str, Any]) -> None:
    deployment = _deployment(releases["defaults"])
    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = _container(releases["defaults"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}


def test_the_chart_and_the_manifests_run_the_same_operator(releases: dict[str, Any]) -> None:
    (manifest,) = load_documents(MANIFESTS_DIR / "operator" / "deployment.yaml")
    (expected,) = manifest["spec"]["template"]["spec"]["containers"]
    container = _container(releases["defaults"])
    for key in ("image", "command", "env", "ports", "livenessProbe", "readinessProbe",
                "resources", "securityContext", "volumeMounts"):
        assert container[key] == expected[key], key
    pod = _deployment(releases["defaults"])["spec"]["template"]["spec"]
    assert pod["securityContext"] == manifest["spec"]["template"]["spec"]["securityContext"]
    assert pod["volumes"] == manifest["spec"]["template"]["spec"]["volumes"]


def test_defaults_serve_all_namespaces_with_a_cluster_role(releases: dict[str, Any]) -> None:
    release = releases["defaults"]
    assert _kinds(release, "Role") == [] and _kinds(release, "RoleBinding") == []
    (role,) = _kinds(release, "ClusterRole")
    (binding,) = _kinds(release, "ClusterRoleBinding")
    (account,) = _kinds(release, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    (manifest_role,) = load_documents(MANIFESTS_DIR / "rbac" / "clusterrole.yaml")
    assert role["rules"] == manifest_role["rules"]
    assert _container(release)["command"] == [
        "shoal", "operator", "--all-namespaces", "--standalone", *PORT_ARGS
    ]


def test_namespaced_rbac_has_no_cluster_scope(releases: dict[str, Any]) -> None:
    release = releases["namespaced"]
    assert _kinds(release, "ClusterRole") == [] and _kinds(release, "ClusterRoleBinding") == []
    (role,) = _kinds(release, "Role")
    (binding,) = _kinds(release, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "team-a"
    assert cluster_scoped_rules(role["rules"]) == []
    (manifest_role,) = load_documents(MANIFESTS_DIR / "rbac" / "role.yaml")
    assert role["rules"] == manifest_role["rules"]
    assert binding["subjects"][0]["namespace"] == NAMESPACE  # the operator stays put
    assert _container(release)["command"] == [
        "shoal", "operator", "--namespace", "team-a", "--standalone", *PORT_ARGS
    ]


def test_namespaced_defaults_to_the_release_namespace(releases: dict[str, Any]) -> None:
    release = releases["everything"]
    (role,) = _kinds(release, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert cluster_scoped_rules(role["rules"]) == []
    assert any("kopfpeerings" in rule["resources"] for rule in role["rules"])
    assert _container(release)["command"][:4] == ["shoal", "operator", "--namespace", NAMESPACE]


def test_peering_replaces_standalone(releases: dict[str, Any]) -> None:
    release = releases["peering"]
    command = _container(release)["command"]
    assert command[-6:] == ["--peering", "shoal", *PORT_ARGS]
    assert "--standalone" not in command
    (role,) = _kinds(release, "ClusterRole")
    assert any(rule["apiGroups"] == ["kopf.dev"] and "clusterkopfpeerings" in rule["resources"]
               for rule in role["rules"])
    assert _deployment(release)["spec"]["replicas"] == 1


def test_rbac_and_service_account_can_be_brought_along(releases: dict[str, Any]) -> None:
    release = releases["own-rbac"]
    kinds = {doc["kind"] for doc in release.rendered}
    assert kinds == {"Deployment"}
    assert _deployment(release)["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


def test_monitors_are_off_by_default(releases: dict[str, Any]) -> None:
    kinds = {doc["kind"] for doc in releases["defaults"].rendered}
    assert not kinds & {"ServiceMonitor", "PodMonitor"}


def test_the_service_monitor_scrapes_the_metrics_service(releases: dict[str, Any]) -> None:
    release = releases["monitors"]
    (monitor,) = _kinds(release, "ServiceMonitor")
    (service,) = _kinds(release, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    pod_labels = _deployment(release)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_the_pod_monitor_scrapes_the_operator_pod(releases: dict[str, Any]) -> None:
    release = releases["monitors"]
    (monitor,) = _kinds(release, "PodMonitor")
    pod_labels = _deployment(release)["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {port["name"] for port in _container(release)["ports"]}
    assert endpoint["interval"] == "15s"


def test_values_reach_the_pod(releases: dict[str, Any]) -> None:
    release = releases["everything"]
    container = _container(release)
    pod = _deployment(release)["spec"]["template"]
    assert container["image"].endswith(":1.2.3") and container["imagePullPolicy"] == "Always"
    env = {var["name"]: var.get("value") for var in container["env"]}
    assert env["SHOAL_DEFAULT_IMAGE"] == "registry.example/shoal-gpu:1.2.3"
    assert env["SHOAL_LOG_LEVEL"] == "debug"
    assert container["command"][-1] == "--verbose"
    assert pod["metadata"]["labels"]["team"] == "data"
    assert pod["spec"]["tolerations"][0]["key"] == "dedicated"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]


def test_the_notes_say_what_is_served(releases: dict[str, Any]) -> None:
    assert "every namespace" in releases["defaults"].notes
    assert "namespace team-a only" in releases["namespaced"].notes
    assert "ServiceMonitor and the PodMonitor" in releases["monitors"].notes


# --- Helm refuses bad values ---


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rbac": {"namespaced": "yes"}}, "namespaced"),
        ({"replicaCount": 2}, "replicaCount"),
        ({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
         "needs metrics.service.enabled"),
    ],
    ids=["wrong-type", "unknown-value", "monitor-without-service"],
)
def test_helm_refuses_bad_values(values: Obj, message: str) -> None:
    with pytest.raises(helm_sdkpy.HelmError, match=message):
        helm_release.install(str(CHART_DIR), values, name=RELEASE, namespace=NAMESPACE)
