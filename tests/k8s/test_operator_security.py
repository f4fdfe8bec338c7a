"""Secure by default, on the real cluster: docs/kubernetes.md §8 and docs/security.md.

1. A ShoalCluster applied with no security settings comes up with mutual TLS:
   its four Secrets and its NetworkPolicy are stored by the real API server,
   the HTTPS probes pass, the scheduler's certificate checks out against the
   cluster's CA (and not against another), HTTP mutations want the token; a
   Client with the Secret's credentials computes, while a plain ``tcp://``
   client, a client without a certificate and one of another CA are refused
   (the cluster serving on); the operator autoscales it up and back down
   through ``retire_workers`` with the token, losing nothing.
2. Opting out (``spec.security.tls: false``) is stated loudly (Secured=False,
   one warning event) and works with a plain client; opting back in rolls the
   cluster onto TLS; a rotation then issues a new CA and restarts every pod,
   after which the old credentials are refused and the new ones compute.

NetworkPolicy: the test node's CNI (the ``bridge`` plugin, tests/k8s/
components.py) does not enforce NetworkPolicy, so these scenarios prove the
policy is accepted as built, not that traffic is dropped; what keeps
strangers out here is TLS.
"""

from __future__ import annotations

import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal import Client, Security, TLSError
from shoal.comm import CommClosedError
from tests.k8s import shoal_tier as tier
from tests.k8s.cluster import KubeNode
from tests.polling import wait_for

SECRETS = {"ca": "kubernetes.io/tls", "tls": "kubernetes.io/tls",
           "client-tls": "kubernetes.io/tls", "token": "Opaque"}


@pytest.fixture
def operator(kube_node: KubeNode, request: pytest.FixtureRequest) -> Iterator[tier.Operator]:
    with tier.operator_fixture(kube_node, request) as op:
        yield op


def verified(ca_pem: bytes) -> ssl.SSLContext:
    """HTTPS checked against ``ca_pem`` (shoal's peers check the CA, not names)."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.check_hostname = False
    return context


def http_status(url: str, context: ssl.SSLContext, token: str | None = None,
                body: bytes | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def secured_condition(status: dict[str, Any]) -> dict[str, Any]:
    (condition,) = [c for c in status["conditions"] if c["type"] == "Secured"]
    return condition


def assert_refused(address: str, ca_file: str | None) -> None:
    """A plain client, a client without a certificate, one of another CA: all refused."""
    with pytest.raises(CommClosedError, match="tls:// address"):
        Client(address.replace("tls://", "tcp://"), timeout=5, security=Security())
    with pytest.raises(TLSError):
        Client(address, timeout=10, security=Security(tls_ca_file=ca_file))
    with pytest.raises(TLSError):
        Client(address, timeout=10, security=Security.temporary())


def test_a_default_cluster_admits_only_its_credentials_and_scales_through_the_token(
        kube_node: KubeNode, kube_namespace: str, operator: tier.Operator) -> None:
    ns, name = kube_namespace, "sec"
    tier.apply(kube_node, ns, tier.cluster_spec(name, minReplicas=1, maxReplicas=2))
    status = tier.wait_running(kube_node, ns, name, workers=1)
    host = f"{name}-scheduler.{ns}.svc.cluster.local"
    assert status["schedulerAddress"] == f"tls://{host}:8786"
    assert status["dashboardAddress"] == f"https://{host}:8787"
    assert secured_condition(status)["status"] == "True"
    uid = tier.get(kube_node, ns, "shoalcluster", name)["metadata"]["uid"]
    for suffix, kind in SECRETS.items():
        secret = tier.get(kube_node, ns, "secret", f"{name}-{suffix}")
        assert secret is not None and secret["type"] == kind, suffix
        assert [o["uid"] for o in secret["metadata"]["ownerReferences"]] == [uid]
    policy = tier.get(kube_node, ns, "networkpolicy", f"{name}-access")
    assert policy is not None, "the real API server did not keep the NetworkPolicy"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"]["shoal.dev/cluster"] == name
    scheduler = tier.scheduler_pod(kube_node, ns, name)  # ready: its HTTPS probes pass
    assert scheduler["spec"]["containers"][0]["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"

    credentials = tier.client_secret(kube_node, ns, name)
    http = tier.scheduler_http(kube_node, ns, name)
    assert http.startswith("https://")
    own_ca = verified(credentials["ca.crt"])
    assert http_status(f"{http}/health", own_ca) == 200
    other_ca = verified(Path(Security.temporary().tls_ca_file or "").read_bytes())
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        http_status(f"{http}/health", other_ca)
    retire = f"{http}/api/v1/retire_workers"
    token = credentials["token"].decode()
    assert http_status(retire, own_ca, body=b'{"n": 0}') == 401
    assert http_status(retire, own_ca, token="wrong", body=b'{"n": 0}') == 403
    assert http_status(retire, own_ca, token=token, body=b'{"n": 0}') == 200

    with tier.client_for(kube_node, ns, name, timeout=60) as client:
        assert sum(client.gather(client.map(lambda x: x * x, range(50)))) == 40425
        address = tier.scheduler_comm(kube_node, ns, name)
        assert_refused(address, client.security.tls_ca_file)
        assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6  # serving on

        def slow(i: int) -> int:
            time.sleep(1.0)
            return i

        futures = client.map(slow, range(40), pure=False)
        tier.wait_running(kube_node, ns, name, workers=2)
        assert client.gather(futures) == list(range(40))
        # Down again once the window has passed: retire_workers, with the token.
        tier.wait_running(kube_node, ns, name, workers=1,
                          timeout=tier.SCALE_DOWN_WINDOW + tier.POD_START)
        tier.wait_scheduler_knows(kube_node, ns, name)
        assert client.gather(futures) == list(range(40))
        assert tier.recomputed(http) == 0
    logs = operator.logs(kube_node)
    for refused in ("answered 401", "answered 403"):
        assert not [line for line in logs.splitlines()
                    if f"{ns}/{name}" in line and refused in line], refused
    tier.log("secured cluster: 4 Secrets and a NetworkPolicy stored; HTTPS verified; "
             "3 kinds of strangers refused; autoscaled 1->2->1 through the token")


def warnings(node: KubeNode, namespace: str, name: str) -> list[dict[str, Any]]:
    return [e for e in tier.events(node, namespace, name) if e.get("reason") == "InsecureCluster"]


def test_opting_out_is_loud_opting_in_and_rotation_roll_the_cluster(
        kube_node: KubeNode, kube_namespace: str, operator: tier.Operator) -> None:
    ns, name = kube_namespace, "open"
    spec = tier.cluster_spec(name, workers=1)
    spec["spec"]["security"] = {"tls": False}
    tier.apply(kube_node, ns, spec)
    status = tier.wait_running(kube_node, ns, name, workers=1)
    assert status["schedulerAddress"].startswith("tcp://")
    condition = secured_condition(status)
    assert (condition["status"], condition["reason"]) == ("False", "TLSDisabled")
    (event,) = wait_for(lambda: warnings(kube_node, ns, name), timeout=60, interval=tier.POLL,
                        what="the InsecureCluster warning event")
    assert event["type"] == "Warning" and "spec.security.tls is false" in event["message"]
    with tier.client_for(kube_node, ns, name) as client:  # plain tcp://
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3

    # Opting back in: the pods roll onto TLS.
    old = tier.scheduler_pod(kube_node, ns, name)["metadata"]["uid"]
    tier.apply(kube_node, ns, tier.cluster_spec(name, workers=1))

    def rolled(previous: str) -> bool:
        pod = tier.scheduler_pod(kube_node, ns, name)
        current = tier.status(kube_node, ns, name)
        return (pod["metadata"]["uid"] != previous
                and secured_condition(current)["status"] == "True")
    wait_for(lambda: rolled(old), timeout=tier.POD_START, interval=tier.POLL,
             what="the cluster rolled onto TLS")
    status = tier.wait_running(kube_node, ns, name, workers=1)
    assert status["schedulerAddress"].startswith("tls://")
    assert len(warnings(kube_node, ns, name)) == 1  # one warning for one opt-out
    first = status["security"]["credentials"]
    before = tier.security_for(kube_node, ns, name)
    with tier.client_for(kube_node, ns, name) as client:
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3

    # A rotation: a new CA, certificates and token, every pod restarted.
    old = tier.scheduler_pod(kube_node, ns, name)["metadata"]["uid"]
    kube_node.kubectl("patch", "shoalcluster", name, "-n", ns, "--type=merge",
                      "-p", '{"spec": {"security": {"rotation": "1"}}}')
    wait_for(lambda: rolled(old) and tier.status(kube_node, ns, name)["security"][
        "credentials"] != first, timeout=tier.POD_START, interval=tier.POLL,
        what="the cluster restarted on new credentials")
    status = tier.wait_running(kube_node, ns, name, workers=1)
    for pod in tier.worker_pods(kube_node, ns, name):
        assert pod["metadata"]["annotations"]["shoal.dev/credentials"] == \
            status["security"]["credentials"]
    address = tier.scheduler_comm(kube_node, ns, name)
    with pytest.raises(TLSError):
        Client(address, timeout=10, security=before)
    with tier.client_for(kube_node, ns, name, timeout=60) as client:
        assert sum(client.gather(client.map(lambda x: x + 1, range(10)))) == 55
    tier.log("opt-out reported once (condition + event), opt-in rolled to tls://, "
             "rotation: old credentials refused, new ones compute")
