"""Secure by default on Kubernetes: the credentials, their Secrets and mounts,
the NetworkPolicy, rotation, the opt-out, and the token on the operator's own
calls; pure builders against the upstream schemas, then the real operator
against kmock's emulator."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from operator_harness import NAMESPACE, Harness, wait_for
from test_operator_lifecycle import status, wait_pods, wait_running
from test_operator_manifests import K8S_VERSIONS, cr, crd_schema

from shoal.operator import builders, crds, credentials, pki
from shoal.operator.spec import InvalidSpec, parse_cluster_spec

CLUSTERS = f"/apis/shoal.dev/v1alpha1/namespaces/{NAMESPACE}/shoalclusters"


def made(name: str = "demo", **security: Any) -> tuple[Any, pki.ClusterPki, list[dict]]:
    spec = parse_cluster_spec(name, "ns", {"security": security} if security else {})
    issued = pki.issue(name, "ns", builders.scheduler_dns_names(name, "ns"))
    return spec, issued, builders.credential_secrets(spec, issued, b"the-token")


def decoded(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (first,) = pod_spec["containers"]
    return first


def env(pod_spec: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v.get("value", "") for v in container(pod_spec).get("env", [])}


def mounts(pod_spec: dict[str, Any]) -> dict[str, str]:
    """Mount path -> Secret name, of the Secret volumes mounted in the container."""
    volumes = {v["name"]: v["secret"]["secretName"] for v in pod_spec["volumes"] if "secret" in v}
    return {m["mountPath"]: volumes[m["name"]] for m in container(pod_spec)["volumeMounts"]
            if m["name"] in volumes}


# ------------------------------------------------------------------ pure


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_credential_secrets_and_policy_validate_against_kubernetes(version: str) -> None:
    spec, _, secrets = made()
    for obj in [*secrets, builders.network_policy(spec)]:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_secrets_hold_one_ca_and_what_each_reader_needs() -> None:
    _, issued, secrets = made()
    by_name = {s["metadata"]["name"]: s for s in secrets}
    assert sorted(by_name) == ["demo-ca", "demo-client-tls", "demo-tls", "demo-token"]
    ca = decoded(by_name["demo-ca"], "ca.crt")
    for name in ("demo-tls", "demo-client-tls"):
        secret = by_name[name]
        assert secret["type"] == "kubernetes.io/tls"
        assert decoded(secret, "ca.crt") == ca
        assert pki.signed_by(decoded(secret, "tls.crt"), ca)
        assert decoded(secret, "tls.key").startswith(b"-----BEGIN PRIVATE KEY-----")
    assert decoded(by_name["demo-client-tls"], "token") == b"the-token"
    assert decoded(by_name["demo-token"], "token") == b"the-token"
    assert "token" not in by_name["demo-tls"]["data"]  # pods read the token Secret
    for secret in secrets:
        assert secret["metadata"]["labels"][builders.LABEL_CLUSTER] == "demo"
        assert secret["metadata"]["annotations"][builders.ANNOTATION_CREDENTIALS] == \
            issued.fingerprint
    # The pod certificate names the scheduler's Service (dashboards in browsers check it).
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(decoded(by_name["demo-tls"], "tls.crt"))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "demo-scheduler.ns.svc.cluster.local" in names.get_values_for_type(x509.DNSName)


def test_pods_mount_their_credentials_and_find_them_through_the_environment() -> None:
    spec = parse_cluster_spec("demo", "ns", {})
    scheduler = builders.scheduler_deployment(spec)["spec"]["template"]["spec"]
    worker = builders.worker_pod(spec, spec.groups[0], "demo-default-abcde")["spec"]
    runner = builders.runner_pod("job", "ns", spec, {"image": "shoal:1"})["spec"]
    for pod in (scheduler, worker):
        assert mounts(pod) == {"/etc/shoal/tls": "demo-tls", "/etc/shoal/token": "demo-token"}
        assert env(pod)["SHOAL_HTTP_TOKEN_FILE"] == "/etc/shoal/token/token"
        assert container(pod)["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert mounts(runner) == {"/etc/shoal/tls": "demo-client-tls"}
    assert env(runner)["SHOAL_HTTP_TOKEN_FILE"] == "/etc/shoal/tls/token"
    assert env(runner)["SHOAL_SCHEDULER_ADDRESS"] == "tls://demo-scheduler.ns.svc.cluster.local:8786"
    for pod in (scheduler, worker, runner):
        assert env(pod)["SHOAL_TLS_CA_FILE"] == "/etc/shoal/tls/ca.crt"
        assert env(pod)["SHOAL_TLS_CERT"] == "/etc/shoal/tls/tls.crt"
        assert env(pod)["SHOAL_TLS_KEY"] == "/etc/shoal/tls/tls.key"
        assert env(pod)["SHOAL_REQUIRE_ENCRYPTION"] == "1"
        volume = next(v for v in pod["volumes"] if v["name"] == "shoal-tls")
        assert volume["secret"]["defaultMode"] == 0o440  # the pod's fsGroup reads it
    assert container(worker)["command"][2] == "tls://demo-scheduler.ns.svc.cluster.local:8786"


def test_opting_out_of_tls_keeps_the_token_and_drops_the_certificates() -> None:
    spec = parse_cluster_spec("demo", "ns", {"security": {"tls": False}})
    scheduler = builders.scheduler_deployment(spec)["spec"]["template"]["spec"]
    worker = builders.worker_pod(spec, spec.groups[0], "demo-default-abcde")["spec"]
    for pod in (scheduler, worker):
        assert mounts(pod) == {"/etc/shoal/token": "demo-token"}
        assert "SHOAL_TLS_CA_FILE" not in env(pod)
        assert "scheme" not in container(pod)["readinessProbe"]["httpGet"]
    assert container(worker)["command"][2] == "tcp://demo-scheduler.ns.svc.cluster.local:8786"
    assert builders.dashboard_address("demo", "ns", tls=False).startswith("http://")


def test_new_credentials_change_every_pod_hash() -> None:
    spec = parse_cluster_spec("demo", "ns", {})
    import dataclasses

    a, b = (dataclasses.replace(spec, credentials=fp) for fp in ("aaaa", "bbbb"))
    group = spec.groups[0]
    assert builders.worker_hash(a, group) != builders.worker_hash(b, group)
    dep_a, dep_b = builders.scheduler_deployment(a), builders.scheduler_deployment(b)
    assert dep_a["metadata"]["annotations"] != dep_b["metadata"]["annotations"]
    assert dep_b["spec"]["template"]["metadata"]["annotations"] == {
        builders.ANNOTATION_CREDENTIALS: "bbbb"}
    pod = builders.worker_pod(b, group, "demo-default-abcde")
    assert pod["metadata"]["annotations"][builders.ANNOTATION_CREDENTIALS] == "bbbb"


def test_the_network_policy_admits_the_cluster_the_operator_and_labelled_clients() -> None:
    spec = parse_cluster_spec("demo", "ns", {})
    policy = builders.network_policy(spec)["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "shoal",
                                                    "shoal.dev/cluster": "demo"}
    (components,) = policy["podSelector"]["matchExpressions"]
    assert components["values"] == ["scheduler", "worker"]
    everywhere, operator = policy["ingress"]
    assert "ports" not in everywhere  # worker comm ports are picked at random
    assert {"podSelector": {"matchLabels": {"shoal.dev/client-of": "demo"}}} in everywhere["from"]
    assert {"podSelector": {"matchLabels": {"shoal.dev/client": "true"}}} in everywhere["from"]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "shoal",
                                            "shoal.dev/cluster": "demo"}}} in everywhere["from"]
    assert operator["from"] == [{"namespaceSelector": {},
                                 "podSelector": {"matchLabels": {
                                     "shoal.dev/operator": "true"}}}]
    assert operator["ports"] == [{"protocol": "TCP", "port": 8787}]
    exposed = parse_cluster_spec("demo", "ns", {"scheduler": {"serviceType": "LoadBalancer"}})
    opened = builders.network_policy(exposed)["spec"]["ingress"][-1]
    assert opened == {"ports": [{"protocol": "TCP", "port": 8786},
                                {"protocol": "TCP", "port": 8787}]}


def test_the_longest_names_kubernetes_allows_still_make_certificates() -> None:
    # A 63-character namespace and the longest cluster name a pod name leaves room
    # for: common names are cut to X.509's 64 characters, DNS names are kept whole.
    namespace, name = "n" * 63, "c" * 36
    issued = pki.issue(name, namespace, builders.scheduler_dns_names(name, namespace))
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(issued.pod.cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert builders.scheduler_host(name, namespace) in names.get_values_for_type(x509.DNSName)
    assert pki.signed_by(issued.client.cert_pem, issued.ca.cert_pem)


def test_current_credentials_are_kept_and_anything_else_is_not() -> None:
    spec, issued, secrets = made()
    found = {s["metadata"]["name"]: s for s in secrets}
    kept = credentials.current(spec, found)
    assert kept is not None and kept.fingerprint == issued.fingerprint
    assert kept.token == "the-token" and kept.ca_pem == issued.ca.cert_pem
    # A missing Secret, another rotation, near expiry, another CA's certificate: reissue.
    assert credentials.current(spec, {k: v for k, v in found.items() if k != "demo-tls"}) is None
    rotated = parse_cluster_spec("demo", "ns", {"security": {"rotation": "2"}})
    assert credentials.current(rotated, found) is None
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=340)
    assert credentials.current(spec, found, now=soon) is None
    _, _, others = made()
    mixed = {**found, "demo-tls": {**others[1], "metadata": found["demo-tls"]["metadata"]}}
    assert credentials.current(spec, mixed) is None
    garbled = {**found, "demo-ca": {**found["demo-ca"], "data": {"tls.crt": "bm90IHBlbQ=="}}}
    assert credentials.current(spec, garbled) is None


def test_spec_security_is_validated() -> None:
    default = parse_cluster_spec("c", "ns", {}).security
    assert (default.tls, default.network_policy, default.rotation) == (True, True, "")
    assert parse_cluster_spec("c", "ns", {"security": {"rotation": 3}}).security.rotation == "3"
    for bad, message in [({"tls": "no"}, "spec.security.tls"),
                         ({"networkpolicy": False}, "unknown field"),
                         ({"rotation": ["x"]}, "spec.security.rotation")]:
        with pytest.raises(InvalidSpec, match=message):
            parse_cluster_spec("c", "ns", {"security": bad})
    schema = crd_schema(crds.cluster_crd())
    jsonschema.validate(cr("ShoalCluster", {"security": {"tls": False, "rotation": "x"}}), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cr("ShoalCluster", {"security": {"tls": "off"}}), schema)


def test_the_operator_calls_a_tls_scheduler_with_the_registered_token_and_ca() -> None:
    import asyncio
    from pathlib import Path

    from shoal import Scheduler, Security
    from shoal.operator import scheduler_api

    security = Security.temporary()
    ca_pem = Path(security.tls_ca_file or "").read_bytes()

    async def scenario() -> None:
        scheduler = await Scheduler(http_port=0, security=security).start()
        plain = (scheduler.http_address or "").replace("https://", "http://")
        scheduler_api.set_url_resolver(lambda cluster, namespace: plain)
        try:
            scheduler_api.use_credentials("c", "ns", scheduler_api.Credentials(
                security.http_token, ca_pem=ca_pem))
            assert await scheduler_api.retire_workers("c", "ns", n=0) == []
            scheduler_api.use_credentials("c", "ns", scheduler_api.Credentials(
                "wrong", ca_pem=ca_pem))
            with pytest.raises(scheduler_api.SchedulerUnavailable, match="403"):
                await scheduler_api.retire_workers("c", "ns", n=0)
            other = Path(Security.temporary().tls_ca_file or "").read_bytes()
            scheduler_api.use_credentials("c", "ns", scheduler_api.Credentials(
                security.http_token, ca_pem=other))
            with pytest.raises(scheduler_api.SchedulerUnavailable, match="certificate"):
                await scheduler_api.workers("c", "ns")
        finally:
            scheduler_api.use_credentials("c", "ns", None)
            scheduler_api.set_url_resolver(None)
            await scheduler.close()

    asyncio.run(scenario())


# ------------------------------------------------------------- operator


def secrets_of(h: Harness, cluster: str) -> dict[str, dict[str, Any]]:
    return {s["metadata"]["name"]: s for s in h.objects("secrets", NAMESPACE)
            if s["metadata"].get("labels", {}).get(builders.LABEL_CLUSTER) == cluster}


def fingerprint(h: Harness, cluster: str) -> str | None:
    """The CA all four Secrets are made from; None while they are absent or being written."""
    found = secrets_of(h, cluster)
    prints = {s["metadata"]["annotations"][builders.ANNOTATION_CREDENTIALS]
              for s in found.values()}
    return prints.pop() if len(found) == 4 and len(prints) == 1 else None


def test_a_cluster_gets_owned_credentials_a_policy_and_a_secured_status(
        operator: Harness, make_cluster) -> None:
    double = operator.scheduler("safe")
    operator.apply(make_cluster("safe", workerGroups=[
        {"name": "default", "minReplicas": 1, "maxReplicas": 3}]))
    state = wait_running(operator, "safe")
    uid = operator.get("shoalclusters", "safe")["metadata"]["uid"]
    found = secrets_of(operator, "safe")
    assert sorted(found) == ["safe-ca", "safe-client-tls", "safe-tls", "safe-token"]
    policy = operator.get("networkpolicies", "safe-access")
    for child in [*found.values(), policy]:
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["uid"], owner["controller"]) == (uid, True)
    assert state["schedulerAddress"] == f"tls://safe-scheduler.{NAMESPACE}.svc.cluster.local:8786"
    assert state["security"]["tls"] is True
    assert state["security"]["clientSecret"] == "safe-client-tls"
    assert state["security"]["credentials"] == fingerprint(operator, "safe")
    (secured,) = [c for c in state["conditions"] if c["type"] == "Secured"]
    assert (secured["status"], secured["reason"]) == ("True", "MutualTLS")
    # The operator's own calls carry the token of the cluster's Secret: scale down
    # (retire_workers is a mutation) goes through, nothing was refused.
    double.target = 3
    wait_pods(operator, "safe", 3, ready=True)
    double.target = 1
    wait_pods(operator, "safe", 1)
    token = operator.secret_value("safe-token", "token")
    assert double.retired and double.refused == [] and set(double.tokens) == {token}


def test_rotation_issues_new_credentials_and_rolls_every_pod(operator: Harness,
                                                             make_cluster) -> None:
    double = operator.scheduler("rot")
    operator.apply(make_cluster("rot"))
    old_pods = {p["metadata"]["name"] for p in wait_pods(operator, "rot", 2, ready=True)}
    wait_running(operator, "rot")
    first, old_token = fingerprint(operator, "rot"), operator.secret_value("rot-token", "token")
    operator.api.patch(f"{CLUSTERS}/rot", {"spec": {"security": {"rotation": "2026-12-01"}}})
    second = wait_for(lambda: fingerprint(operator, "rot") not in (None, first)
                      and fingerprint(operator, "rot"), message="new credentials")
    found = secrets_of(operator, "rot")
    assert {s["metadata"]["annotations"][builders.ANNOTATION_ROTATION]
            for s in found.values()} == {"2026-12-01"}
    new_ca = base64.b64decode(found["rot-ca"]["data"]["tls.crt"])
    for name in ("rot-tls", "rot-client-tls"):
        assert pki.signed_by(base64.b64decode(found[name]["data"]["tls.crt"]), new_ca)
    assert operator.secret_value("rot-token", "token") != old_token

    def rolled() -> bool:
        pods = operator.pods("rot")
        return (len(pods) == 2 and not old_pods & {p["metadata"]["name"] for p in pods}
                and all(p["metadata"]["annotations"][builders.ANNOTATION_CREDENTIALS] == second
                        for p in pods))
    wait_for(rolled, message="workers rolled onto the new credentials")
    deployment = operator.get("deployments", "rot-scheduler")
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        builders.ANNOTATION_CREDENTIALS: second}
    wait_for(lambda: status(operator, "rot").get("security", {}).get("credentials") == second,
             message="status names the new credentials")
    assert double.refused == []  # the stale workers were retired with the new token


def test_credentials_deleted_by_hand_are_remade(operator: Harness, make_cluster) -> None:
    operator.scheduler("lost")
    operator.apply(make_cluster("lost", workerGroups=[{"name": "default", "replicas": 1}]))
    wait_running(operator, "lost")
    first = fingerprint(operator, "lost")
    operator.api.delete(f"/api/v1/namespaces/{NAMESPACE}/secrets/lost-tls")
    wait_for(lambda: fingerprint(operator, "lost") not in (None, first), message="the set remade")
    wait_for(lambda: all(p["metadata"]["annotations"][builders.ANNOTATION_CREDENTIALS]
                         == fingerprint(operator, "lost") for p in operator.pods("lost"))
             and len(operator.pods("lost")) == 1, message="the worker rolled")


def test_opting_out_is_reported_loudly_once(operator: Harness, make_cluster) -> None:
    operator.scheduler("open")
    operator.apply(make_cluster("open", security={"tls": False, "networkPolicy": False}))
    state = wait_running(operator, "open")
    assert state["schedulerAddress"].startswith("tcp://")
    assert state["dashboardAddress"].startswith("http://")
    assert state["security"]["tls"] is False
    (secured,) = [c for c in state["conditions"] if c["type"] == "Secured"]
    assert (secured["status"], secured["reason"]) == ("False", "TLSDisabled")
    assert "anyone who can reach them" in secured["message"]
    assert state["phase"] == "Running"  # insecure, not broken

    def warnings() -> list[dict[str, Any]]:
        return [e for e in operator.objects("events", NAMESPACE)
                if e.get("reason") == "InsecureCluster"
                and e.get("involvedObject", {}).get("name") == "open"]
    (event,) = wait_for(warnings, message="the warning event")
    assert event["type"] == "Warning" and "spec.security.tls is false" in event["message"]
    assert operator.get("networkpolicies", "open-access") is None
    for pod in wait_pods(operator, "open", 2):
        assert "SHOAL_TLS_CERT" not in env(pod["spec"])
    # Several rounds later: still one event.
    rounds = status(operator, "open").get("lastActivity")
    wait_for(lambda: len(operator.objects("events", NAMESPACE)) > 0 and rounds, timeout=2)
    assert len(warnings()) == 1
    # Turning TLS back on secures it and rolls the workers.
    operator.api.patch(f"{CLUSTERS}/open", {"spec": {"security": {"tls": True,
                                                                  "networkPolicy": True}}})
    wait_for(lambda: status(operator, "open")["schedulerAddress"].startswith("tls://"),
             message="tls:// again")
    wait_for(lambda: operator.get("networkpolicies", "open-access"), message="the policy")
    wait_for(lambda: len(operator.pods("open")) == 2 and all(
        "SHOAL_TLS_CERT" in env(p["spec"]) for p in operator.pods("open")),
        message="workers with certificates")
    operator.api.patch(f"{CLUSTERS}/open", {"spec": {"security": {"networkPolicy": False}}})
    wait_for(lambda: operator.get("networkpolicies", "open-access") is None,
             message="the policy removed again")


def test_a_foreign_secret_is_never_overwritten(operator: Harness, make_cluster) -> None:
    operator.api.create(f"/api/v1/namespaces/{NAMESPACE}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "mine-token"}, "data": {"token": "c2VjcmV0"}})
    operator.scheduler("mine")
    operator.apply(make_cluster("mine"))
    state = wait_for(lambda: status(operator, "mine").get("phase") == "Failed"
                     and status(operator, "mine"), message="phase Failed")
    assert "mine-token exists and is not owned by this ShoalCluster" in state["message"]
    assert operator.secret_value("mine-token", "token") == "secret"
    assert operator.pods("mine") == []
