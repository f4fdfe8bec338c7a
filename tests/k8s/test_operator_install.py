"""Installing the operator as users do, on the real cluster.

- ``helm install`` of ``helm/shoal-operator`` with the real Helm library
  (the session's shared operator; Helm checks the chart's kubeVersion
  against the real server, so this also proves the lower end of the
  supported range);
- ``kubectl apply -k manifests/`` (kustomize built into kubectl), which is
  then removed again;
- ``helm install`` in single-namespace mode (``rbac.namespaced=true``): a
  Role and no cluster-scoped permission, serving its namespace only.

Either way the operator runs as a pod from the project's image, under its
own ServiceAccount and the RBAC that came with it and nothing else (the
cluster runs the RBAC authorizer), as a non-root user with a read-only root
filesystem, and its probes pass; and it serves a ShoalCluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.k8s import shoal_tier as tier
from tests.k8s.cluster import KubeNode
from tests.polling import wait_for


def assert_hardened_and_healthy(pod: dict[str, Any], service_account: str) -> None:
    spec = pod["spec"]
    assert spec["serviceAccountName"] == service_account
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    (container,) = spec["containers"]
    assert container["image"] == tier.IMAGE
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (state,) = pod["status"]["containerStatuses"]
    assert state["ready"] is True and state["restartCount"] == 0, state
    assert "running" in state["state"], state


def can_i(node: KubeNode, account: str, *args: str) -> bool:
    result = node.kubectl("auth", "can-i", *args, f"--as={account}", check=False)
    return result.stdout.strip() == "yes"


def assert_least_privilege(node: KubeNode, namespace: str, service_account: str,
                           other_namespace: str) -> None:
    account = f"system:serviceaccount:{namespace}:{service_account}"
    assert can_i(node, account, "create", "pods", "-n", other_namespace)
    assert can_i(node, account, "patch", "shoalclusters.shoal.dev/status", "-n", other_namespace)
    assert can_i(node, account, "create", "secrets", "-n", other_namespace)  # credentials
    assert can_i(node, account, "create", "networkpolicies.networking.k8s.io", "-n",
                 other_namespace)
    for forbidden in (("watch", "secrets"), ("delete", "secrets"),
                      ("create", "roles.rbac.authorization.k8s.io"),
                      ("delete", "nodes"), ("create", "namespaces")):
        assert not can_i(node, account, *forbidden, "-n", other_namespace), forbidden


def serve_one_cluster(node: KubeNode, namespace: str, name: str) -> None:
    tier.apply(node, namespace, tier.cluster_spec(name, workers=1))
    tier.wait_running(node, namespace, name, workers=1)
    node.kubectl("delete", "shoalcluster", name, "-n", namespace)
    tier.wait_gone(node, namespace, "shoalcluster", name)


def test_helm_install_runs_the_operator_under_its_own_rbac(
        kube_node: KubeNode, kube_namespace: str, request: pytest.FixtureRequest) -> None:
    with tier.operator_fixture(kube_node, request) as operator:
        info = operator.release.get("info", {})
        assert info.get("status") == "deployed", operator.release
        pod = operator.pod(kube_node)
        assert_hardened_and_healthy(pod, operator.service_account)
        assert_least_privilege(kube_node, operator.namespace, operator.service_account,
                               kube_namespace)
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["SHOAL_DEFAULT_IMAGE"] == tier.IMAGE
        serve_one_cluster(kube_node, kube_namespace, "helm-installed")


@pytest.fixture
def no_helm_operator(kube_node: KubeNode) -> Iterator[None]:
    """The kustomize install must be the only operator (both would serve every namespace)."""
    tier.image_on_node(kube_node)
    tier.uninstall_helm_operator(kube_node)
    yield


def kustomized(node: KubeNode) -> list[dict[str, Any]]:
    rendered = node.kubectl("kustomize", str(tier.MANIFESTS)).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def test_kubectl_apply_k_installs_a_working_operator(
        kube_node: KubeNode, kube_namespace: str, no_helm_operator: None) -> None:
    objects = kustomized(kube_node)
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                     "Deployment", "Namespace", "Service", "ServiceAccount"], kinds
    kube_node.kubectl("apply", "-k", str(tier.MANIFESTS))
    try:
        tier.wait_rollout(kube_node, "shoal-system", "shoal-operator")
        (pod,) = [p for p in tier.pods(kube_node, "shoal-system", tier.OPERATOR_SELECTOR)
                  if tier.pod_ready(p)]
        assert_hardened_and_healthy(pod, "shoal-operator")
        assert_least_privilege(kube_node, "shoal-system", "shoal-operator", kube_namespace)
        serve_one_cluster(kube_node, kube_namespace, "kustomized")
    finally:
        # Everything but the CRDs: deleting those would delete every ShoalCluster.
        rest = [o for o in objects if o["kind"] != "CustomResourceDefinition"]
        kube_node.kubectl("delete", "--wait=true", "--ignore-not-found", "-f", "-",
                          input="\n---\n".join(yaml.safe_dump(o) for o in rest), timeout=180)
        wait_for(lambda: tier.get(kube_node, None, "namespace", "shoal-system") is None,
                 timeout=120, what="namespace shoal-system deleted", interval=tier.POLL)


def test_helm_install_in_single_namespace_mode(kube_node: KubeNode, kube_namespace: str,
                                               no_helm_operator: None) -> None:
    served = kube_namespace
    other = f"{served[:50]}-other"
    values = {**tier.HELM_VALUES, "rbac": {"namespaced": True}}
    tier.helm(kube_node, {"action": "install", "release": tier.RELEASE, "namespace": served,
                          "chart": str(tier.CHART), "values": values})
    kube_node.kubectl("create", "namespace", other)
    try:
        tier.wait_rollout(kube_node, served, tier.RELEASE)
        (pod,) = [p for p in tier.pods(kube_node, served, tier.OPERATOR_SELECTOR)
                  if tier.pod_ready(p)]
        assert_hardened_and_healthy(pod, tier.RELEASE)
        account = f"system:serviceaccount:{served}:{tier.RELEASE}"
        assert can_i(kube_node, account, "create", "pods", "-n", served)
        assert not can_i(kube_node, account, "create", "pods", "-n", other)
        assert not can_i(kube_node, account, "list", "namespaces")
        assert not can_i(kube_node, account, "list", "customresourcedefinitions")
        tier.apply(kube_node, other, tier.cluster_spec("unserved", workers=1))
        serve_one_cluster(kube_node, served, "served")
        # The other namespace's cluster was never touched: no status, no children.
        assert tier.status(kube_node, other, "unserved") == {}
        assert tier.pods(kube_node, other, "shoal.dev/cluster=unserved") == []
    finally:
        tier.helm(kube_node, {"action": "uninstall", "release": tier.RELEASE,
                              "namespace": served})
        kube_node.kubectl("delete", "namespace", other, "--wait=false")  # as kube_namespace
