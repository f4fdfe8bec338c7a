"""The real cluster itself works: node, pods, Services, DNS, controllers, tokens.

These checks come first in the tier: if one fails, the operator's end-to-end
tests would fail for reasons that are not the operator's.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import subprocess
import urllib.request

import pytest

from tests.k8s import dns, network
from tests.k8s.cluster import KUBECTL, KubeNode
from tests.polling import wait_for

WAIT = 90.0


def _deployment(name: str, image: str, args: list[str] | None = None) -> str:
    container: dict[str, object] = {"name": "main", "image": image, "imagePullPolicy": "Never"}
    if args:
        container["args"] = args
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [container],
                                       "terminationGracePeriodSeconds": 1}}},
    })


def _service(name: str, port: int, target: int) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"selector": {"app": name},
                 "ports": [{"port": port, "targetPort": target, "protocol": "TCP"}]},
    })


def _running_pod(node: KubeNode, ns: str, app: str) -> dict:
    def find() -> dict | None:
        pods = node.kubectl_json("get", "pods", "-n", ns, "-l", f"app={app}")["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"
                   and p["status"].get("podIP")]
        return running[0] if running else None
    return wait_for(find, timeout=WAIT, what=f"a Running pod of {app}", interval=0.25)


@pytest.fixture
def agnhost(kube_node: KubeNode, kube_namespace: str) -> tuple[str, dict]:
    """An HTTP server (agnhost netexec) behind a Service ``web`` on port 80."""
    kube_node.kubectl("apply", "-n", kube_namespace, "-f", "-", input=_deployment(
        "web", kube_node.agnhost_image, ["netexec", "--http-port=8080"]))
    kube_node.kubectl("apply", "-n", kube_namespace, "-f", "-", input=_service("web", 80, 8080))
    return kube_namespace, _running_pod(kube_node, kube_namespace, "web")


def test_node_is_ready_and_schedulable(kube_node: KubeNode) -> None:
    node = kube_node.kubectl_json("get", "node", kube_node.node_name)
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert not node["spec"].get("taints")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == kube_node.node_ip
    assert not ipaddress.ip_address(kube_node.node_ip).is_loopback
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.20.2"


def test_pause_deployment_runs_on_the_cni_bridge(kube_node: KubeNode,
                                                  kube_namespace: str) -> None:
    kube_node.kubectl("apply", "-n", kube_namespace, "-f", "-",
                      input=_deployment("sleeper", kube_node.pause_image))
    pod = _running_pod(kube_node, kube_namespace, "sleeper")
    pod_ip = ipaddress.ip_address(pod["status"]["podIP"])
    assert pod_ip in ipaddress.ip_network(kube_node.addrs.pod_cidr)
    ports = subprocess.run(["ip", "-n", network.NETNS, "-o", "link", "show", "master",
                            "shoal-cni0"], capture_output=True, text=True, check=True).stdout
    assert ports.strip(), "no pod interface is attached to the CNI bridge"


def test_service_gets_cluster_ip_endpoints_and_routes(kube_node: KubeNode,
                                                      agnhost: tuple[str, dict]) -> None:
    ns, pod = agnhost
    svc = kube_node.kubectl_json("get", "service", "web", "-n", ns)
    cluster_ip = svc["spec"]["clusterIP"]
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network(kube_node.addrs.service_cidr)

    def endpoint_ips() -> list[str]:
        ep = kube_node.kubectl_json("get", "endpoints", "web", "-n", ns)
        return [a["ip"] for s in ep.get("subsets") or [] for a in s.get("addresses") or []]
    assert wait_for(endpoint_ips, timeout=WAIT, what="endpoints of web") == [
        pod["status"]["podIP"]]

    def hostname_through_cluster_ip() -> str | None:  # kube-proxy's rules, from the host
        try:
            with urllib.request.urlopen(f"http://{cluster_ip}/hostname", timeout=5) as r:
                return r.read().decode()
        except OSError:
            return None
    served = wait_for(hostname_through_cluster_ip, timeout=WAIT, what="web via its ClusterIP")
    assert served == pod["metadata"]["name"]
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/hostname",
                                timeout=10) as direct:  # the pod IP itself, from the host
        assert direct.read().decode() == pod["metadata"]["name"]


def test_dns_answers_cluster_names_and_nothing_else(kube_node: KubeNode,
                                                    agnhost: tuple[str, dict]) -> None:
    ns, pod = agnhost
    cluster_ip = kube_node.kubectl_json("get", "service", "web", "-n", ns)["spec"]["clusterIP"]
    name = f"web.{ns}.svc.cluster.local"
    assert wait_for(lambda: dns.query(kube_node.node_ip, name) == ("NOERROR", [cluster_ip]),
                    timeout=WAIT, what=f"DNS to answer {name}")
    assert dns.query(kube_node.node_ip, name, tcp=True) == ("NOERROR", [cluster_ip])
    assert dns.query(kube_node.node_ip, name, "AAAA") == ("NOERROR", [])
    pod_ip = pod["status"]["podIP"]
    assert dns.query(kube_node.node_ip, f"{pod_ip.replace('.', '-')}.{ns}.pod.cluster.local"
                     ) == ("NOERROR", [pod_ip])
    assert dns.query(kube_node.node_ip, f"nothere.{ns}.svc.cluster.local")[0] == "NXDOMAIN"
    assert dns.query(kube_node.node_ip, "example.com")[0] == "NXDOMAIN"
    assert dns.query(kube_node.node_ip, "example.com", tcp=True)[0] == "NXDOMAIN"


def _dial_from_pod(pod: dict, host: str, port: int, request: str) -> list[str]:
    """Have agnhost in ``pod`` make an HTTP request to ``host:port`` (names resolved there)."""
    url = (f"http://{pod['status']['podIP']}:8080/dial?request={request}&host={host}"
           f"&port={port}&protocol=http&tries=1")

    def dialled() -> list[str] | None:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.load(r).get("responses") or None
        except OSError:
            return None
    return wait_for(dialled, timeout=WAIT, what=f"a pod to reach {host}:{port}")


def test_pods_resolve_short_service_names(kube_node: KubeNode,
                                          agnhost: tuple[str, dict]) -> None:
    """From inside a pod: resolv.conf search domains, DNS, then the ClusterIP (hairpin)."""
    _ns, pod = agnhost
    assert _dial_from_pod(pod, "web", 80, "hostname") == [pod["metadata"]["name"]]


def test_pods_reach_the_api_server_through_its_service(agnhost: tuple[str, dict]) -> None:
    """What in-cluster clients use: kubernetes.default:443, routed to the host's API server."""
    _ns, pod = agnhost
    responses = _dial_from_pod(pod, "kubernetes.default", 443, "version")
    assert responses == ["Client sent an HTTP request to an HTTPS server.\n"]


def test_deleting_a_deployment_collects_its_replicaset_and_pods(
        kube_node: KubeNode, kube_namespace: str) -> None:
    kube_node.kubectl("apply", "-n", kube_namespace, "-f", "-",
                      input=_deployment("doomed", kube_node.pause_image))
    _running_pod(kube_node, kube_namespace, "doomed")
    rs = kube_node.kubectl_json("get", "replicasets", "-n", kube_namespace, "-l", "app=doomed")
    assert len(rs["items"]) == 1
    kube_node.kubectl("delete", "deployment", "doomed", "-n", kube_namespace, "--wait=false")

    def collected() -> bool:
        left = kube_node.kubectl("get", "replicasets,pods", "-n", kube_namespace,
                                 "-l", "app=doomed", "-o", "name").stdout
        return not left.strip()
    wait_for(collected, timeout=WAIT, what="the ReplicaSet and pods to be collected")


def test_service_account_token_is_mounted_and_valid(kube_node: KubeNode,
                                                    kube_namespace: str) -> None:
    kube_node.kubectl("apply", "-n", kube_namespace, "-f", "-",
                      input=_deployment("tokened", kube_node.pause_image))
    pod = _running_pod(kube_node, kube_namespace, "tokened")
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    assert any(m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount" for m in mounts)
    # The kubelet put the token in the pod's volume on the node: read it there.
    assert kube_node.layout is not None
    volumes = kube_node.layout.kubelet_dir / "root" / "pods" / pod["metadata"]["uid"] / "volumes"
    tokens = list(volumes.glob("kubernetes.io~*/*/token"))
    assert tokens, f"no token file under {volumes}"
    token = tokens[0].read_text()
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["kubernetes.io/serviceaccount/namespace"] == kube_namespace
    # The API server accepts it (a forged one gets 401, not an answer).
    answer = _can_i_list_pods(kube_node, token, kube_namespace)
    assert answer.stdout.strip() == "no", answer.stderr
    forged = _can_i_list_pods(kube_node, token[:-4] + "AAAA", kube_namespace)
    assert forged.returncode != 0 and "nauthorized" in forged.stderr, forged.stderr


def _can_i_list_pods(node: KubeNode, token: str, ns: str) -> subprocess.CompletedProcess[str]:
    """kubectl with only the token: no admin client certificate to fall back on."""
    assert node.layout is not None
    return subprocess.run(
        [KUBECTL, "--kubeconfig=/dev/null", f"--server={node.server}",
         f"--certificate-authority={node.layout.pki / 'ca.crt'}", f"--token={token}",
         "auth", "can-i", "list", "pods", "-n", ns],
        capture_output=True, text=True, timeout=60, check=False)


def test_a_missing_image_fails_at_once_and_is_never_fetched(kube_node: KubeNode,
                                                            kube_namespace: str) -> None:
    """The node has no route off this machine: a pull errs instead of reaching out."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unpullable"},
           "spec": {"containers": [{"name": "main", "image": "ghcr.io/shoal-test/absent:1",
                                    "imagePullPolicy": "Always"}]}}
    kube_node.kubectl("apply", "-n", kube_namespace, "-f", "-", input=json.dumps(pod))

    def pull_failed() -> str | None:
        status = kube_node.kubectl_json("get", "pod", "unpullable", "-n", kube_namespace)
        for container in status["status"].get("containerStatuses") or []:
            reason = (container["state"].get("waiting") or {}).get("reason")
            if reason in ("ErrImagePull", "ImagePullBackOff"):
                return reason
        return None
    wait_for(pull_failed, timeout=WAIT, what="the pull of an absent image to fail")
    images = kube_node.ctr("images", "list", "-q").stdout
    assert "ghcr.io/shoal-test/absent" not in images


def test_logs_and_exec_go_through_the_kubelet(kube_node: KubeNode,
                                              agnhost: tuple[str, dict]) -> None:
    ns, pod = agnhost
    name = pod["metadata"]["name"]
    logs = kube_node.kubectl("logs", "-n", ns, name).stdout
    assert "8080" in logs
    suffix = kube_node.kubectl("exec", "-n", ns, name, "--", "/agnhost", "dns-suffix").stdout
    assert suffix.strip().split(",") == [f"{ns}.svc.cluster.local", "svc.cluster.local",
                                         "cluster.local"]


def test_the_api_server_reports_its_version(kube_node: KubeNode) -> None:
    """GET /version (what Helm's kubeVersion check reads), not only --version."""
    version = json.loads(kube_node.kubectl("get", "--raw", "/version").stdout)
    assert (version["gitVersion"], version["major"], version["minor"]) == ("v1.20.2", "1", "20")


def test_custom_resources_keep_empty_strings(kube_node: KubeNode, kube_namespace: str) -> None:
    """Built with Go 1.19, the validators took "" for null unless patched (see the build)."""
    group = f"{kube_namespace}.shoal.test"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gadgets.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                     "openAPIV3Schema": {"type": "object", "properties": {"spec": {
                         "type": "object", "properties": {"note": {"type": "string"}}}}}}}]},
    }
    kube_node.kubectl("apply", "-f", "-", input=json.dumps(crd))
    try:
        kube_node.kubectl("wait", "--for=condition=Established", f"crd/gadgets.{group}",
                          "--timeout=60s")
        gadget = {"apiVersion": f"{group}/v1", "kind": "Gadget", "metadata": {"name": "g"},
                  "spec": {"note": ""}}
        kube_node.kubectl("apply", "-n", kube_namespace, "-f", "-", input=json.dumps(gadget))
        stored = kube_node.kubectl_json("get", f"gadgets.{group}", "g", "-n", kube_namespace)
        assert stored["spec"] == {"note": ""}
    finally:
        kube_node.kubectl("delete", "crd", f"gadgets.{group}", "--wait=false")
