"""End to end on processes: the operator's own pod specs, run for real.

No container runtime here, so a small "process kubelet" plays the node: it
takes the scheduler Deployment and the worker pods the operator created,
starts their container command and environment as local processes (the
scheduler's Service name resolved to 127.0.0.1, its ports replaced by free
ones), and reports readiness back to the emulator from the real scheduler's
HTTP API. A shoal Client then computes on that cluster, and the operator's
autoscaler scales it up and down through the real ``/api/v1`` endpoints.

The clusters are secured, as by default: the process kubelet writes the
Secret volumes the pods mount (the operator's CA, certificates and token)
into a temporary directory, so every link is mutual TLS, the HTTP API is
HTTPS, and the operator's retire calls carry the token.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from operator_harness import NAMESPACE, Harness, wait_for

from shoal import Client, Security, TLSError
from shoal.cluster.kube import KubeApi, KubeApiError, KubeCluster
from shoal.comm import CommClosedError
from shoal.operator import builders, kubeops, scheduler_api

SRC = Path(__file__).resolve().parents[2] / "src"
LAUNCH = [sys.executable, "-c", "import sys; from shoal.cli import main; sys.exit(main(sys.argv[1:]))"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Like the kubelet's probes: HTTPS without checking the certificate.
PROBE_CONTEXT = ssl.create_default_context()
PROBE_CONTEXT.check_hostname = False
PROBE_CONTEXT.verify_mode = ssl.CERT_NONE


def fetch_json(url: str) -> Any:
    import json

    with urllib.request.urlopen(url, timeout=2, context=PROBE_CONTEXT) as response:
        return json.loads(response.read())


class ProcessKubelet:
    """Runs the operator's pods of one cluster as local processes."""

    def __init__(self, harness: Harness, cluster: str) -> None:
        self.harness = harness
        self.cluster = cluster
        self.comm_port, self.http_port = free_port(), free_port()
        self.service = f"{builders.scheduler_host(cluster, NAMESPACE)}:{builders.COMM_PORT}"
        self.volumes = tempfile.TemporaryDirectory(prefix="shoal-volumes-")
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.errors: list[str] = []
        self.outputs: dict[str, list[str]] = {}  # process output by pod name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @property
    def scheduler_address(self) -> str:
        return f"tls://127.0.0.1:{self.comm_port}"

    @property
    def http_url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    def mount_secrets(self, pod: dict[str, Any], pod_name: str) -> dict[str, str]:
        """Write the pod's Secret volumes to disk, as the kubelet does: {mount path: dir}."""
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", [])
                   if "secret" in v}
        mounted = {}
        for mount in pod["containers"][0].get("volumeMounts", []):
            if mount["name"] not in secrets:
                continue
            secret = self.harness.get("secrets", secrets[mount["name"]])
            assert secret is not None, f"{pod_name} mounts a missing Secret"
            directory = Path(self.volumes.name, pod_name, mount["name"])
            directory.mkdir(parents=True)
            for key, value in secret["data"].items():
                (directory / key).write_bytes(base64.b64decode(value))
            mounted[mount["mountPath"]] = str(directory)
        return mounted

    def localise(self, pod: dict[str, Any], pod_name: str) -> tuple[list[str], dict[str, str]]:
        """The container's command line and environment, as this machine can run them."""
        container = pod["containers"][0]
        mounted = self.mount_secrets(pod, pod_name)
        env = dict(os.environ, PYTHONPATH=str(SRC))
        for var in container.get("env", []):
            if "value" in var:
                value = var["value"].replace(self.service, f"127.0.0.1:{self.comm_port}")
                for path, directory in mounted.items():
                    value = value.replace(path, directory)
                env[var["name"]] = value
            elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
                env[var["name"]] = pod_name
            elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
                env[var["name"]] = "127.0.0.1"  # every "pod" of this node is on loopback
        argv = []
        for arg in container["command"][1:] + container.get("args", []):
            for name, value in env.items():
                arg = arg.replace(f"$({name})", value)
            argv.append(arg.replace(self.service, f"127.0.0.1:{self.comm_port}"))
        ports = {str(builders.COMM_PORT): str(self.comm_port),
                 str(builders.HTTP_PORT): str(self.http_port), "0.0.0.0": "127.0.0.1"}
        if argv[0] == "scheduler":
            argv = [ports.get(a, a) for a in argv]
        elif argv[0] == "worker":  # workers share this host: any free HTTP port
            argv = ["0" if a == str(builders.WORKER_HTTP_PORT) else a for a in argv]
        executables = {"shoal": LAUNCH, "python": [sys.executable]}
        return [*executables[container["command"][0]], *argv], env

    def start(self, key: str, pod: dict[str, Any], pod_name: str) -> None:
        argv, env = self.localise(pod, pod_name)
        self.processes[key] = subprocess.Popen(argv, env=env, start_new_session=True,
                                               stdout=subprocess.PIPE,
                                               stderr=subprocess.STDOUT)
        self.outputs[key] = []
        threading.Thread(target=self._collect, args=(key, self.processes[key]),
                         daemon=True).start()

    def _collect(self, key: str, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.outputs[key].append(line.decode(errors="replace"))

    def kill(self, key: str) -> None:
        process = self.processes.pop(key)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for key in list(self.processes):
            self.kill(key)
        self.volumes.cleanup()

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.step()
            except (KubeApiError, OSError) as exc:  # the scheduler is still starting, ...
                self.errors.append(repr(exc))

    def step(self) -> None:
        api = self.harness.api
        deployment = self.harness.get("deployments", f"{self.cluster}-scheduler",
                                      api_version="apps/v1")
        if deployment is None:  # deleted with its cluster: so are the processes
            alive = {p["metadata"]["name"] for p in self.harness.pods(self.cluster)}
            for key in [k for k in self.processes if k not in alive]:
                self.kill(key)
            return
        if "scheduler" not in self.processes:
            self.start("scheduler", deployment["spec"]["template"]["spec"],
                       f"{self.cluster}-scheduler-0")
        ready = (deployment.get("status") or {}).get("readyReplicas")
        if not ready:
            with urllib.request.urlopen(self.http_url + "/health", timeout=1,
                                        context=PROBE_CONTEXT):
                api.patch(kubeops.object_path(deployment), {"status": {"readyReplicas": 1}})
            return
        self.step_workers()

    def step_workers(self) -> None:
        pods = {p["metadata"]["name"]: p for p in self.harness.pods(self.cluster)}
        pods.update({p["metadata"]["name"]: p for p in self.harness.pods(self.cluster, "runner")})
        for name in [k for k in self.processes if k != "scheduler" and k not in pods]:
            self.kill(name)  # the operator deleted the pod
        connected = {w["name"] for w in fetch_json(self.http_url + "/api/v1/workers")["workers"]}
        for name, pod in pods.items():
            phase = (pod.get("status") or {}).get("phase")
            if name not in self.processes and phase is None:
                self.start(name, pod["spec"], name)
            elif name in self.processes and phase is None and (
                    name in connected or "runner" in name):
                self.harness.kubelet.set_phase(pod, "Running", ready=True)
            elif name in self.processes and phase == "Running" \
                    and self.processes[name].poll() is not None:
                code = self.processes[name].returncode
                self.harness.kubelet.set_phase(pod, "Succeeded" if code == 0 else "Failed",
                                               ready=False, exit_code=code)


def test_operator_pods_run_compute_and_autoscale(operator: Harness) -> None:
    def slow_square(x: int) -> int:  # defined here so that it travels by value
        time.sleep(0.25)
        return x * x

    operator.kubelet.stop()  # processes, not the simulated kubelet, decide readiness here
    node = ProcessKubelet(operator, "real")
    scheduler_api.set_url_resolver(lambda cluster, ns: node.http_url)
    scheduler_api.set_credentials_resolver(None)  # the real token and CA: real HTTPS
    try:
        # As from a notebook, with the address a port-forward would give.
        with KubeCluster(name="real", n_workers=2, memory="1Gi", image="shoal:test",
                         namespace=NAMESPACE, api=KubeApi.for_host(operator.url),
                         scheduler_address=node.scheduler_address, timeout=60) as cluster, \
                Client(cluster) as client:
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
            # The credentials came from the cluster's Secret; without them, no entry.
            assert cluster.security.tls and client.security is cluster.security
            plain = node.scheduler_address.replace("tls://", "tcp://")
            with pytest.raises(CommClosedError, match="tls:// address"):
                Client(plain, timeout=2, security=Security())
            with pytest.raises(TLSError):
                Client(node.scheduler_address, timeout=5,
                       security=Security(tls_ca_file=cluster.security.tls_ca_file))
            wait_for(lambda: (((operator.get("shoalclusters", "real") or {}).get("status")
                               or {}).get("readyWorkers") == 2), timeout=60,
                     message=f"2 ready workers (kubelet errors: {node.errors[-3:]})")
            kept = client.submit(lambda: list(range(1000)))
            assert sum(client.gather(client.map(lambda x: x + 1, range(20)))) == 210
            cluster.adapt(minimum=1, maximum=4)
            futures = client.map(slow_square, range(80))
            wait_for(lambda: len(operator.pods("real")) > 2, timeout=30,
                     message="the autoscaler to add workers")
            assert client.gather(futures) == [x * x for x in range(80)]
            wait_for(lambda: len(operator.pods("real")) == 1, timeout=60,
                     message="the autoscaler to retire idle workers")
            workers = fetch_json(node.http_url + "/api/v1/workers")["workers"]
            assert [w["name"] for w in workers] == [p["metadata"]["name"]
                                                    for p in operator.pods("real")]
            assert kept.result(timeout=30) == list(range(1000))  # nothing lost on the way
            # (the ready workers went through POST /api/v1/retire_workers: the token worked)
        assert operator.get("shoalclusters", "real") is None  # closing deleted it
    finally:
        node.stop()


def test_job_example_runs_to_completion(operator: Harness) -> None:
    import yaml

    doc = yaml.safe_load((SRC.parent / "manifests" / "examples" / "job.yaml").read_text())
    doc["metadata"]["namespace"] = NAMESPACE
    doc["spec"]["cluster"]["workerGroups"][0]["replicas"] = 2  # a 2-core test machine
    name = doc["metadata"]["name"]
    operator.kubelet.stop()
    node = ProcessKubelet(operator, f"{name}-cluster")
    scheduler_api.set_url_resolver(lambda cluster, ns: node.http_url)
    scheduler_api.set_credentials_resolver(None)
    try:
        operator.apply(doc)
        job = wait_for(lambda: (((operator.get("shoaljobs", name) or {}).get("status") or {})
                                .get("phase") in ("Succeeded", "Failed"))
                       and operator.get("shoaljobs", name), timeout=90,
                       message=f"the job to finish (kubelet errors: {node.errors[-3:]})")
        output = "".join(node.outputs.get(f"{name}-runner", []))
        assert job["status"]["phase"] == "Succeeded", output
        pi = float(output.split("pi is about")[1].split()[0])
        assert 3.1 < pi < 3.2
        wait_for(lambda: operator.get("shoalclusters", f"{name}-cluster") is None,
                 message="the job's cluster deleted")
        operator.collect_garbage()
        wait_for(lambda: not node.processes, message="the cluster's processes stopped")
    finally:
        node.stop()
