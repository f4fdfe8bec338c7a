"""KubeCluster from a notebook's point of view, against the emulator and the
real operator: create, wait, scale, adapt, close, attach, and clear errors."""

from __future__ import annotations

import pytest
from operator_harness import NAMESPACE, Harness, wait_for

from shoal.cluster.kube import KubeApi, KubeCluster, KubeClusterError


def kube(h: Harness, **kwargs: object) -> KubeCluster:
    kwargs.setdefault("namespace", NAMESPACE)
    kwargs.setdefault("image", "shoal:test")
    return KubeCluster(api=KubeApi.for_host(h.url), timeout=20, **kwargs)  # type: ignore[arg-type]


def test_create_scale_adapt_close(operator: Harness) -> None:
    double = operator.scheduler("nb")
    with kube(operator, name="nb", n_workers=2, memory="2Gi",
              resources={"requests": {"cpu": "1"}}) as cluster:
        assert cluster.scheduler_address == f"tls://nb-scheduler.{NAMESPACE}.svc.cluster.local:8786"
        assert cluster.dashboard_address.endswith(":8787")
        pods = wait_for(lambda: len(operator.pods("nb")) == 2 and operator.pods("nb"))
        container = pods[0]["spec"]["containers"][0]
        assert container["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
        cluster.scale(3)
        wait_for(lambda: len(operator.pods("nb")) == 3, message="3 workers")
        cluster.adapt(minimum=1, maximum=4)
        group = operator.get("shoalclusters", "nb")["spec"]["workerGroups"][0]
        assert (group["minReplicas"], group["maxReplicas"]) == (1, 4)
        double.target = 4
        wait_for(lambda: len(operator.pods("nb")) == 4, message="autoscaled to 4")
        cluster.scale(2)  # back to a fixed size: autoscaling off
        assert "minReplicas" not in operator.get("shoalclusters", "nb")["spec"]["workerGroups"][0]
    assert operator.get("shoalclusters", "nb") is None


def test_from_name_attaches_and_leaves_it_running(operator: Harness, make_cluster) -> None:
    operator.scheduler("shared")
    operator.apply(make_cluster("shared"))
    cluster = KubeCluster.from_name("shared", NAMESPACE, api=KubeApi.for_host(operator.url))
    assert cluster.scheduler_address.startswith("tls://shared-scheduler.")
    cluster.close()
    assert operator.get("shoalclusters", "shared") is not None


def test_credentials_come_from_the_client_secret(operator: Harness, make_cluster) -> None:
    import base64
    import os
    import stat
    from pathlib import Path

    operator.scheduler("creds")
    operator.apply(make_cluster("creds"))
    cluster = KubeCluster.from_name("creds", NAMESPACE, api=KubeApi.for_host(operator.url))
    security = cluster.security
    assert security.tls and security.require_encryption
    secret = operator.get("secrets", "creds-client-tls")
    for path, key in ((security.tls_ca_file, "ca.crt"), (security.tls_client_cert, "tls.crt"),
                      (security.tls_client_key, "tls.key")):
        assert path is not None
        assert Path(path).read_bytes() == base64.b64decode(secret["data"][key])
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert security.http_token == operator.secret_value("creds-client-tls", "token")
    # Without TLS there is nothing to read: the cluster's Security is no security.
    with kube(operator, name="plain", tls=False) as insecure:
        assert insecure.scheduler_address.startswith("tcp://")
        assert not insecure.security.tls
        spec = operator.get("shoalclusters", "plain")["spec"]
        assert spec["security"] == {"tls": False}


def test_missing_crds_say_how_to_install_them(login_handler: None) -> None:
    h = Harness(with_crds=False)
    try:
        with pytest.raises(KubeClusterError, match="install the CRDs"):
            kube(h, name="nocrd")
    finally:
        h.close()


def test_no_operator_times_out_with_advice(harness: Harness) -> None:
    with pytest.raises(KubeClusterError, match="no shoal operator picked up"):
        KubeCluster(name="lonely", namespace=NAMESPACE, api=KubeApi.for_host(harness.url),
                    timeout=10, operator_timeout=0.5)
    assert harness.get("shoalclusters", "lonely") is None  # not left behind


def test_crash_looping_scheduler_reports_its_logs(operator: Harness) -> None:
    operator.kubelet.crash_scheduler = True
    # What the ReplicaSet controller and the kubelet would show for a crashing scheduler.
    operator.api.create(f"/api/v1/namespaces/{NAMESPACE}/pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "crashy-scheduler-x1", "namespace": NAMESPACE, "labels": {
            "shoal.dev/cluster": "crashy", "shoal.dev/component": "scheduler"}},
        "spec": {"containers": [{"name": "scheduler", "image": "shoal:test"}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "scheduler", "ready": False, "restartCount": 4, "image": "shoal:test",
            "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff",
                                                 "message": "back-off 40s"}}}]}})
    operator.emulator[f"get /api/v1/namespaces/{NAMESPACE}/pods/crashy-scheduler-x1/log"] \
        << b"Traceback (most recent call last):\nOSError: [Errno 98] Address in use\n"
    with pytest.raises(KubeClusterError, match="CrashLoopBackOff") as info:
        kube(operator, name="crashy")
    assert "Address in use" in str(info.value)


def test_without_the_kubernetes_extra_the_error_says_what_to_install() -> None:
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.modules['kubernetes'] = sys.modules['kopf'] = None\n"
            "import shoal\n"
            "from shoal.cluster import KubeCluster, kube\n"
            "try:\n    KubeCluster(n_workers=1)\nexcept kube.KubeClusterError as exc:\n"
            "    print(exc)\n")
    src = Path(__file__).resolve().parents[2] / "src"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            timeout=60, env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"})
    assert "pip install 'shoal[kubernetes]'" in result.stdout, result.stderr
