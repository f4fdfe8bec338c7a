"""A real single-node Kubernetes for the test suite, started and stopped by it.

:class:`KubeNode` brings up, in a fresh run directory, etcd, the API server,
controller-manager and scheduler on the host, and the node (containerd,
kubelet, kube-proxy, cluster DNS) in a network namespace of its own (see
:mod:`tests.k8s.network`), from the binaries ``build-kubernetes.sh`` cached.
Every wait is bounded; :meth:`KubeNode.stop` stops every process it started,
removes pods, containers, mounts, namespaces and interfaces, so a second
start works and nothing is left behind. One cluster per machine at a time
(an exclusive lock), since the namespace and interface names are fixed.

    with KubeNode() as node:
        node.import_image("image.tar")
        node.kubectl("apply", "-f", "manifest.yaml")
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.k8s import components, dns, network, pki
from tests.k8s.components import (
    AGNHOST_IMAGE,
    CACHE,
    CLUSTER_DOMAIN,
    NODE_NAME,
    PAUSE_IMAGE,
    Layout,
    Ports,
)
from tests.k8s.network import Addresses
from tests.k8s.processes import ComponentFailed, Supervisor
from tests.polling import wait_for

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "k8s"
LOCK_PATH = Path("/run/lock/shoal-k8s.lock")
LOCK_TIMEOUT = float(os.environ.get("SHOAL_K8S_LOCK_TIMEOUT", "300"))
START_TIMEOUT = 120.0
"""Bound on each step of start-up (API ready, node Ready, ...)."""
DRAIN_TIMEOUT = 60.0
"""Bound on pods being stopped by the kubelet at shutdown."""
KUBECTL = shutil.which("kubectl") or str(CACHE / "bin" / "kubectl")
"""The machine's kubectl, else the one build-kubernetes.sh built from the same tree."""
CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTAINER_CGROUPS = ("*/k8s.io", "*/k8s.io/*")
"""containerd's cgroups of the containers (and their parent), per v1 hierarchy."""
PRELOADED = ("pause.tar", "agnhost.tar")
"""Image archives of the build cache loaded into every node at start."""


class ClusterUnavailable(RuntimeError):
    """The cluster cannot run here (not built, not root, ...): the reason says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ports() -> Ports:
    names = Ports.__dataclass_fields__
    picked: set[int] = set()
    while len(picked) < len(names):
        picked.add(_free_port())
    return Ports(*sorted(picked))


def missing_prerequisites(cache: Path = CACHE) -> str | None:
    """Why the cluster cannot start on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the real-cluster tier needs root (network namespaces, containerd)"
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler",
                 "kubelet", "kube-proxy"):
        if not (cache / "bin" / name).exists():
            return f"{cache / 'bin' / name} is missing: run tests/k8s/build-kubernetes.sh"
    for archive in PRELOADED:
        if not (cache / "images" / archive).exists():
            return f"{cache / 'images' / archive} is missing: run tests/k8s/build-kubernetes.sh"
    for tool in ("etcd", "containerd", "ctr", "nsenter", "ip", "iptables-save", KUBECTL):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: run tests/k8s/build-kubernetes.sh"
    return None


class KubeNode:
    """One control plane and one node; use as a context manager or start()/stop()."""

    def __init__(self, addrs: Addresses | None = None) -> None:
        self.addrs = addrs or Addresses()
        self.node_ip = self.addrs.node_ip
        self.node_name = NODE_NAME
        self.cluster_domain = CLUSTER_DOMAIN
        self.pause_image = PAUSE_IMAGE
        self.agnhost_image = AGNHOST_IMAGE
        self.run_dir = Path()
        self.log_dir = Path()
        self.kubeconfig = Path()
        self.server = ""
        self.layout: Layout | None = None
        self._supervisor: Supervisor | None = None
        self._lock_file: int | None = None
        self._pod_netns_before: set[str] = set()
        self._pod_logs_before: set[str] = set()
        self._cgroups_before: set[Path] = set()
        self.lock_wait_seconds = 0.0
        self.start_seconds = 0.0
        self.stop_seconds = 0.0

    # ------------------------------------------------------------------ API

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster as the admin; raise on failure if check."""
        argv = [KUBECTL, f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(argv, check=False, capture_output=True, text=True, input=input,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, argv, result.stdout,
                                                result.stderr)
        return result

    def kubectl_json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def import_image(self, archive: str | os.PathLike[str]) -> None:
        """Load an OCI/docker image archive into the node (containerd ``k8s.io``)."""
        self._ctr("images", "import", str(archive))

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against the node's containerd, namespace ``k8s.io``."""
        return self._ctr(*args)

    def check_alive(self) -> None:
        """Raise ComponentFailed (with its log's tail) if any component has exited."""
        if self._supervisor is None:
            raise ComponentFailed("the cluster is not running")
        self._supervisor.check_alive()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop(save_logs=exc is not None)

    # ---------------------------------------------------------------- start

    def start(self) -> None:
        reason = missing_prerequisites()
        if reason:
            raise ClusterUnavailable(reason)
        started = time.monotonic()
        self._take_lock()
        self.lock_wait_seconds = time.monotonic() - started
        started += self.lock_wait_seconds
        try:
            self._clean_leftovers()
            self._start()
        except BaseException:
            try:
                self.stop(save_logs=True)
            except Exception as cleanup:  # noqa: BLE001 - the start's own error matters more
                print(f"KubeNode: cleanup after a failed start: {cleanup}", file=sys.stderr)
            raise
        self.start_seconds = time.monotonic() - started

    def _start(self) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="shoal-k8s-"))
        self.log_dir = self.run_dir / "logs"
        lay = self.layout = Layout(self.run_dir, self.addrs, _ports())
        self.server = lay.server
        self._supervisor = sup = Supervisor(self.log_dir)
        self._pod_netns_before = network.pod_namespaces()
        self._pod_logs_before = _listdir(Path("/var/log/pods"))
        self._cgroups_before = set(_container_cgroups())
        self._write_pki(lay)
        network.create(self.addrs)

        sup.start("etcd", components.etcd(lay))
        self._wait(lambda: self._http_ok(f"http://127.0.0.1:{lay.ports.etcd_client}/health"),
                   "etcd healthy")
        sup.start("kube-apiserver", components.apiserver(lay))
        self._wait(lambda: self._http_ok(f"{lay.server}/readyz"), "API server ready")
        sup.start("kube-controller-manager", components.controller_manager(lay))
        sup.start("kube-scheduler", components.scheduler(lay))

        self._write_node_configs(lay)
        sup.start("containerd", ["containerd", f"--config={lay.containerd_dir / 'config.toml'}"],
                  netns=network.NETNS)
        self._wait(lambda: self._ctr("version", check=False).returncode == 0,
                   "containerd serving")
        for archive in PRELOADED:
            self.import_image(CACHE / "images" / archive)
        sup.start("kubelet", components.kubelet(lay), netns=network.NETNS)
        sup.start("kube-proxy", components.proxy(lay), netns=network.NETNS)
        sup.start("dns", [sys.executable, "-m", "tests.k8s.dns",
                          f"--kubeconfig={lay.kubeconfig('dns')}",
                          f"--address={self.node_ip}", f"--domain={CLUSTER_DOMAIN}"],
                  netns=network.NETNS, env={"PYTHONPATH": str(REPO)})

        self._wait(self._node_ready, "node Ready and untainted")
        self._wait(self._default_service_account, "default ServiceAccount with a token")
        self._wait(self._proxy_programmed, "kube-proxy rules for the kubernetes Service")
        self._wait(self._dns_answers, "cluster DNS answering")

    def _write_pki(self, lay: Layout) -> None:
        ca = pki.Authority(lay.pki)
        a = self.addrs
        ca.issue("apiserver", "kube-apiserver",
                 server_ips=(a.host_ip, a.kubernetes_service_ip, "127.0.0.1"),
                 server_names=("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                               f"kubernetes.default.svc.{CLUSTER_DOMAIN}", "localhost"))
        ca.issue("apiserver-kubelet", "kube-apiserver-kubelet-client", "system:masters")
        ca.issue("kubelet", f"system:node:{NODE_NAME}", "system:nodes",
                 server_ips=(a.node_ip,), server_names=(NODE_NAME,))
        pki.service_account_keys(lay.pki)
        server = lay.server
        self.kubeconfig = ca.kubeconfig(lay.kubeconfig("admin"), server, "admin",
                                        "shoal-admin", "system:masters")
        ca.kubeconfig(lay.kubeconfig("controller-manager"), server, "controller-manager",
                      "system:kube-controller-manager")
        ca.kubeconfig(lay.kubeconfig("scheduler"), server, "scheduler", "system:kube-scheduler")
        ca.kubeconfig(lay.kubeconfig("kubelet"), server, "kubelet-client",
                      f"system:node:{NODE_NAME}", "system:nodes")
        ca.kubeconfig(lay.kubeconfig("proxy"), server, "proxy", "system:kube-proxy")
        # The DNS server only reads; an admin identity keeps RBAC out of the harness.
        ca.kubeconfig(lay.kubeconfig("dns"), server, "dns", "shoal-dns", "system:masters")

    def _write_node_configs(self, lay: Layout) -> None:
        lay.containerd_dir.mkdir(parents=True)
        (lay.containerd_dir / "config.toml").write_text(components.containerd_config(lay))
        (lay.run_dir / "cni").mkdir()
        (lay.run_dir / "cni" / "10-shoal.conflist").write_text(components.cni_config(lay))
        lay.kubelet_dir.mkdir()
        (lay.kubelet_dir / "config.yaml").write_text(components.kubelet_config(lay))
        (lay.kubelet_dir / "resolv.conf").write_text(
            f"nameserver {self.node_ip}\noptions ndots:5\n")
        (lay.run_dir / "proxy.yaml").write_text(components.proxy_config(lay))

    # ---------------------------------------------------------------- checks

    def _wait(self, predicate, what: str) -> None:  # type: ignore[no-untyped-def]
        def check() -> object:
            assert self._supervisor is not None
            self._supervisor.check_alive()
            return predicate()
        try:
            wait_for(check, timeout=START_TIMEOUT, what=what, interval=0.25)
        except AssertionError as exc:
            raise ComponentFailed(f"{exc}; logs in {self.log_dir}") from None

    def _ssl_context(self) -> ssl.SSLContext:
        assert self.layout is not None
        pki_dir = self.layout.pki
        context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
        context.load_cert_chain(str(pki_dir / "admin.crt"), str(pki_dir / "admin.key"))
        return context

    def _http_ok(self, url: str) -> bool:
        context = self._ssl_context() if url.startswith("https") else None
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def _node_ready(self) -> bool:
        result = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if result.returncode != 0:
            return False
        node = json.loads(result.stdout)
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in node["status"].get("conditions", []))
        return ready and not node["spec"].get("taints")

    def _default_service_account(self) -> bool:
        result = self.kubectl("get", "serviceaccount", "default", "-n", "default", "-o", "json",
                              check=False)
        return result.returncode == 0 and bool(json.loads(result.stdout).get("secrets"))

    def _proxy_programmed(self) -> bool:
        rules = subprocess.run(["nsenter", f"--net={network.NETNS_DIR / network.NETNS}", "--",
                                "iptables-save", "-t", "nat"],
                               check=False, capture_output=True, text=True, timeout=30).stdout
        return f"{self.addrs.kubernetes_service_ip}/32" in rules

    def _dns_answers(self) -> bool:
        try:
            answer = dns.query(self.node_ip, f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
                               timeout=2)
        except OSError:
            return False
        return answer == ("NOERROR", [self.addrs.kubernetes_service_ip])

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.layout is not None
        argv = ["ctr", f"--address={self.layout.containerd_socket}", "--namespace=k8s.io", *args]
        result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=300)
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, argv, result.stdout,
                                                result.stderr)
        return result

    # ----------------------------------------------------------------- stop

    def stop(self, save_logs: bool = False) -> None:
        """Stop everything started, remove what it left, optionally keep the logs."""
        started = time.monotonic()
        sup = self._supervisor
        left: list[str] = []
        try:
            if sup is not None:
                self._drain(sup)
                sup.stop_all()
            self._remove_containers_left()
            self._clean_node_state()
            left = self.leftovers()
        finally:
            self.stop_seconds = time.monotonic() - started
            if sup is not None and (save_logs or left):
                self.save_logs()
            if self.layout is not None:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            self._supervisor = None
            self.layout = None
            self._release_lock()
        if left:
            raise RuntimeError("the test cluster left behind: " + "; ".join(left))

    def leftovers(self) -> list[str]:
        """What this run made that is still there (empty once stopped cleanly)."""
        found = []
        if network.exists():
            found.append(f"network namespace {network.NETNS} or link {network.HOST_LINK}")
        pod_netns = network.pod_namespaces() - self._pod_netns_before
        if pod_netns:
            found.append(f"pod network namespaces {sorted(pod_netns)}")
        if self.layout is not None and _mounts_under(self.run_dir):
            found.append(f"mounts {_mounts_under(self.run_dir)}")
        if self._supervisor is not None:
            running = [c.name for c in self._supervisor.components if c.process.poll() is None]
            if running:
                found.append(f"processes {running}")
        if self._new_cgroups():
            found.append(f"cgroups {self._new_cgroups()}")
        pod_logs = _listdir(Path("/var/log/pods")) - self._pod_logs_before
        if pod_logs:
            found.append(f"pod logs {sorted(pod_logs)}")
        return found

    def save_logs(self, dest: Path | None = None) -> Path:
        """Copy every component's log to ``dest`` (default test-artifacts/k8s/<time>)."""
        dest = dest or ARTIFACTS / time.strftime("%Y%m%dT%H%M%S")
        dest.mkdir(parents=True, exist_ok=True)
        if self.log_dir.is_dir():
            shutil.copytree(self.log_dir, dest, dirs_exist_ok=True)
        return dest

    def _drain(self, sup: Supervisor) -> None:
        """Let the kubelet stop every pod (sandboxes, CNI) before anything else stops."""
        for name in ("kube-controller-manager", "kube-scheduler"):
            sup.stop(name)  # nothing recreates the pods deleted next
        if not self._alive(sup, "kube-apiserver", "kubelet", "containerd"):
            return
        try:
            self.kubectl("delete", "pods", "--all", "--all-namespaces", "--wait=false",
                         "--grace-period=1", check=False, timeout=30)
            wait_for(self._node_quiet, timeout=DRAIN_TIMEOUT, what="pods to stop",
                     interval=0.25)
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            print(f"KubeNode: drain incomplete ({exc}); removing containers directly",
                  file=sys.stderr)

    def _node_quiet(self) -> bool:
        """No container or sandbox runs and no pod volume is mounted.

        That is all the shutdown needs; waiting for the API objects as well
        would add up to ten seconds per pod (the kubelet confirms deletions on
        a 10 s status sync), for state thrown away with etcd anyway.
        """
        assert self.layout is not None
        tasks = self._ctr("tasks", "list", "-q", check=False)
        return (tasks.returncode == 0 and not tasks.stdout.strip()
                and not _mounts_under(self.layout.kubelet_dir / "root" / "pods"))

    @staticmethod
    def _alive(sup: Supervisor, *names: str) -> bool:
        alive = {c.name for c in sup.components if c.process.poll() is None}
        return all(n in alive for n in names)

    def _remove_containers_left(self) -> None:
        """Kill what runs in pod namespaces made during this run, unmount those."""
        for name in network.pod_namespaces() - self._pod_netns_before:
            path = network.NETNS_DIR / name
            network.kill_all_in(path)
            network.remove_namespace(name)

    def _clean_node_state(self) -> None:
        if network.exists():
            network.destroy()
        if self.layout is not None:
            _unmount_under(self.run_dir)
        for entry in _listdir(Path("/var/log/pods")) - self._pod_logs_before:
            shutil.rmtree(Path("/var/log/pods") / entry, ignore_errors=True)
        for cgroup in sorted(self._new_cgroups(), key=lambda p: len(p.parts), reverse=True):
            try:
                cgroup.rmdir()  # only empty cgroups: no process is left in them
            except OSError:
                pass

    def _new_cgroups(self) -> list[Path]:
        return [p for p in _container_cgroups() if p not in self._cgroups_before]

    # ---------------------------------------------------------------- lock

    def _take_lock(self) -> None:
        LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)

        def locked() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True
        if not locked():
            holder = LOCK_PATH.read_text().strip() or "?"
            print(f"KubeNode: waiting up to {LOCK_TIMEOUT:.0f}s for the test cluster of pid "
                  f"{holder} to stop", file=sys.stderr, flush=True)
        try:
            wait_for(locked, timeout=LOCK_TIMEOUT, interval=0.5,
                     what=f"{LOCK_PATH} (another test cluster runs on this machine)")
        except AssertionError as exc:
            os.close(fd)
            raise ClusterUnavailable(str(exc)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_file = fd

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            os.close(self._lock_file)
            self._lock_file = None

    def _clean_leftovers(self) -> None:
        """Remove what a crashed earlier run left (we hold the lock: it is ours)."""
        if network.exists():
            print("KubeNode: removing a network namespace left by an earlier run",
                  file=sys.stderr)
            network.destroy()
        for name in network.pod_namespaces():  # containerd's CRI names them cni-<uuid>
            network.kill_all_in(network.NETNS_DIR / name)
            network.remove_namespace(name)
        for stale in Path(tempfile.gettempdir()).glob("shoal-k8s-*"):
            _unmount_under(stale)
            shutil.rmtree(stale, ignore_errors=True)


def _container_cgroups() -> list[Path]:
    return [p for pattern in CONTAINER_CGROUPS for p in CGROUP_ROOT.glob(pattern) if p.is_dir()]


def _listdir(path: Path) -> set[str]:
    try:
        return {p.name for p in path.iterdir()}
    except OSError:
        return set()


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix) or point == prefix.rstrip("/"):
                mounts.append(point)
    return mounts


def _unmount_under(root: Path) -> None:
    """Lazily unmount every mount below ``root``, deepest first."""
    for point in sorted(_mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True, timeout=30)


def main() -> None:
    """``python -m tests.k8s.cluster``: a cluster to poke at by hand, until Ctrl-C."""
    import signal

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    with KubeNode() as node:
        print(f"cluster up in {node.start_seconds:.1f}s\n"
              f"  export KUBECONFIG={node.kubeconfig}\n  logs: {node.log_dir}", flush=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, interrupt)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    print(f"stopped in {node.stop_seconds:.1f}s")


if __name__ == "__main__":
    main()
