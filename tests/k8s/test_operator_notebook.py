"""A notebook pod: a Client by the scheduler's DNS name, and KubeCluster from inside.

The pod runs the project's image under the ``shoal-notebook`` ServiceAccount
of ``manifests/examples/notebook-rbac.yaml`` (and nothing else), like a
user's Jupyter pod would, with the existing cluster's client Secret mounted
and ``SHOAL_TLS_*`` pointing at it (docs/kubernetes.md §4). Its script, run
with ``python -c``, has no line about certificates:

1. connects a Client to an existing ShoalCluster by its Service's DNS name
   (tls://, credentials from the mounted Secret) and computes, then attaches
   to it with ``KubeCluster.from_name`` (credentials read from the Secret
   through the API; its ``close()`` leaves the cluster running);
2. creates a cluster with ``KubeCluster`` (in-cluster credentials), computes
   on it, ``scale(2)``s it, ``adapt(1, 2)``s it and waits for the autoscaler
   to bring it back to one idle worker (not before a stabilisation window),
   then ``close()``s it.

The pod prints one line per step; the test checks them and that the
KubeCluster's ShoalCluster is gone afterwards.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

import pytest

from tests.k8s import shoal_tier as tier
from tests.k8s.cluster import KubeNode
from tests.polling import wait_for

NOTEBOOK_TIMEOUT = 480.0

SCRIPT = textwrap.dedent('''
    import sys
    import time

    from shoal import Client
    from shoal.cluster import KubeCluster

    def bounded(predicate, what, timeout=240):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                sys.exit(f"timed out waiting for {what}")
            time.sleep(0.5)

    namespace = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
    address = f"tls://nb-scheduler.{namespace}.svc.cluster.local:8786"
    with Client(address, timeout=60) as client:
        print("dns-client", sum(client.gather(client.map(lambda x: x * x, range(100)))),
              flush=True)
    attached = KubeCluster.from_name("nb", timeout=60)
    with Client(attached, timeout=60) as client:
        print("attached", attached.scheduler_address, client.gather(client.submit(len, "abc")),
              flush=True)
    attached.close()  # from_name: leaves the cluster running
    print("still-there", attached.status()["phase"], flush=True)

    small = {"requests": {"cpu": "50m", "memory": "128Mi"}}
    cluster = KubeCluster(name="from-notebook", n_workers=1, resources=small,
                          memory="512Mi", timeout=240)
    print("created", cluster.scheduler_address, flush=True)
    with Client(cluster, timeout=60) as client:
        print("kube-client", sum(client.gather(client.map(lambda x: x + 1, range(100)))),
              flush=True)
        cluster.scale(2)
        bounded(lambda: len(client.scheduler_info()["workers"]) == 2, "two workers")
        print("scaled", len(client.scheduler_info()["workers"]), flush=True)
        adapted = time.monotonic()
        cluster.adapt(minimum=1, maximum=2)
        # the operator writes status after it retired the worker: wait for both
        bounded(lambda: len(client.scheduler_info()["workers"]) == 1
                and cluster.status()["workerGroups"]["default"]["desired"] == 1,
                "adapt down to 1")
        groups = cluster.status()["workerGroups"]
        print("adapted", groups["default"]["desired"], round(time.monotonic() - adapted),
              flush=True)
    cluster.close()

    def gone():
        try:
            cluster.status()
        except Exception as exc:
            return "does not exist" in str(exc)
        return False

    bounded(gone, "the ShoalCluster deleted")
    print("closed", flush=True)
''')


@pytest.fixture
def operator(kube_node: KubeNode, request: pytest.FixtureRequest) -> Iterator[tier.Operator]:
    with tier.operator_fixture(kube_node, request) as op:
        yield op


CREDENTIAL_ENV = [{"name": "SHOAL_TLS_CA_FILE", "value": "/etc/shoal/tls/ca.crt"},
                  {"name": "SHOAL_TLS_CERT", "value": "/etc/shoal/tls/tls.crt"},
                  {"name": "SHOAL_TLS_KEY", "value": "/etc/shoal/tls/tls.key"}]


def notebook_pod(script: str, cluster: str) -> dict:
    """docs/kubernetes.md §4's notebook pod: ``cluster``'s client Secret mounted."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "notebook", "labels": {"shoal.dev/client-of": cluster,
                                                    "shoal.dev/client": "true"}},
        "spec": {
            "serviceAccountName": "shoal-notebook",
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                "runAsGroup": 10001, "fsGroup": 10001},
            "containers": [{
                "name": "notebook", "image": tier.IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["python", "-c", script],
                "resources": tier.SMALL,
                "env": CREDENTIAL_ENV,
                "securityContext": {"readOnlyRootFilesystem": True,
                                    "allowPrivilegeEscalation": False},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                                 {"name": "home", "mountPath": "/home/shoal"},
                                 {"name": "shoal-tls", "mountPath": "/etc/shoal/tls",
                                  "readOnly": True}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}},
                        {"name": "shoal-tls", "secret": {"secretName": f"{cluster}-client-tls",
                                                         "defaultMode": 0o440}}],
        },
    }


def test_a_notebook_pod_computes_and_drives_kubecluster(
        kube_node: KubeNode, kube_namespace: str, operator: tier.Operator) -> None:
    ns = kube_namespace
    kube_node.kubectl("apply", "-n", ns, "-f", str(tier.EXAMPLES / "notebook-rbac.yaml"))
    tier.apply(kube_node, ns, tier.cluster_spec("nb", workers=1))
    tier.wait_running(kube_node, ns, "nb", workers=1)
    tier.apply(kube_node, ns, notebook_pod(SCRIPT, "nb"))

    def finished() -> str | None:
        pod = tier.get(kube_node, ns, "pod", "notebook") or {}
        phase = (pod.get("status") or {}).get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for(finished, timeout=NOTEBOOK_TIMEOUT, interval=1,
                     what="the notebook pod finished")
    logs = kube_node.kubectl("logs", "notebook", "-n", ns).stdout
    assert phase == "Succeeded", logs
    lines = dict(line.split(" ", 1) for line in logs.splitlines() if " " in line)
    assert lines["dns-client"] == "328350", logs
    assert lines["attached"] == f"tls://nb-scheduler.{ns}.svc.cluster.local:8786 3"
    assert lines["still-there"] == "Running"
    assert lines["created"] == f"tls://from-notebook-scheduler.{ns}.svc.cluster.local:8786"
    assert lines["kube-client"] == "5050"
    desired, after = lines["adapted"].split()
    assert lines["scaled"] == "2" and desired == "1"
    # Idle, it shrinks to the minimum, but only once a stabilisation window has passed.
    assert int(after) >= tier.SCALE_DOWN_WINDOW - 2 * tier.RECONCILE_INTERVAL, after
    assert "closed" in logs
    tier.wait_gone(kube_node, ns, "shoalcluster", "from-notebook")
    wait_for(lambda: not tier.pods(kube_node, ns, "shoal.dev/cluster=from-notebook"),
             timeout=120, interval=tier.POLL, what="the KubeCluster's pods gone")
