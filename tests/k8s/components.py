"""Command lines and configuration files of each component of the test cluster.

Pure builders: a :class:`Layout` (where things live, which ports were picked)
in, an argv or a config document out. Keeping them apart from the harness
that starts processes makes each component's settings readable in one place,
and each non-default setting says why it is there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.k8s.network import Addresses

CACHE = Path(os.environ.get("SHOAL_K8S_CACHE", "/var/cache/shoal-k8s"))
PAUSE_IMAGE = "registry.k8s.io/pause:shoal"
AGNHOST_IMAGE = "registry.k8s.io/e2e-test-images/agnhost:shoal"
NODE_NAME = "shoal-node"
CLUSTER_DOMAIN = "cluster.local"
BRIDGE = "shoal-cni0"
RUNC = "/usr/sbin/runc"


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kubelet: int
    kubelet_healthz: int
    proxy_healthz: int
    proxy_metrics: int


@dataclass(frozen=True)
class Layout:
    """Every path and address of one cluster run."""

    run_dir: Path
    addrs: Addresses
    ports: Ports
    bin_dir: Path = CACHE / "bin"

    @property
    def pki(self) -> Path:
        return self.run_dir / "pki"

    @property
    def server(self) -> str:
        return f"https://{self.addrs.host_ip}:{self.ports.apiserver}"

    @property
    def containerd_dir(self) -> Path:
        return self.run_dir / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def kubelet_dir(self) -> Path:
        return self.run_dir / "kubelet"

    def kubeconfig(self, who: str) -> Path:
        return self.run_dir / f"{who}.kubeconfig"

    def bin(self, name: str) -> str:
        return str(self.bin_dir / name)


def etcd(lay: Layout) -> list[str]:
    client = f"http://127.0.0.1:{lay.ports.etcd_client}"
    peer = f"http://127.0.0.1:{lay.ports.etcd_peer}"
    return ["etcd", "--name=shoal", f"--data-dir={lay.run_dir / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=shoal={peer}", "--log-level=warn"]


def apiserver(lay: Layout) -> list[str]:
    pki = lay.pki
    issuer = f"https://kubernetes.default.svc.{CLUSTER_DOMAIN}"
    return [
        lay.bin("kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{lay.ports.etcd_client}",
        f"--bind-address={lay.addrs.host_ip}", f"--advertise-address={lay.addrs.host_ip}",
        f"--secure-port={lay.ports.apiserver}", "--insecure-port=0",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet.key'}",
        "--kubelet-preferred-address-types=InternalIP",
        f"--service-cluster-ip-range={lay.addrs.service_cidr}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-account-issuer={issuer}", f"--api-audiences={issuer}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
    ]


def controller_manager(lay: Layout) -> list[str]:
    kubeconfig = lay.kubeconfig("controller-manager")
    return [
        lay.bin("kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={lay.ports.controller_manager}",
        "--port=0", "--leader-elect=false",
        # Every default controller, node-lifecycle included: it is what lifts
        # the node's not-ready taint once the kubelet reports Ready.
        "--controllers=*",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={lay.pki / 'sa.key'}",
        f"--root-ca-file={lay.pki / 'ca.crt'}",
        f"--cluster-signing-cert-file={lay.pki / 'ca.crt'}",
        f"--cluster-signing-key-file={lay.pki / 'ca.key'}",
        "--v=1",
    ]


def scheduler(lay: Layout) -> list[str]:
    kubeconfig = lay.kubeconfig("scheduler")
    return [
        lay.bin("kube-scheduler"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1", f"--secure-port={lay.ports.scheduler}",
        "--port=0", "--leader-elect=false", "--v=1",
    ]


def containerd_config(lay: Layout) -> str:
    """containerd's config (TOML, written by hand: only strings and booleans)."""
    d = lay.containerd_dir
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{d / 'root'}"
state = "{d / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{lay.containerd_socket}"

[ttrpc]
  address = "{d / 'containerd.ttrpc.sock'}"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{d / 'opt'}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # This machine's root lacks CAP_SYS_RESOURCE: without this every sandbox
  # fails with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{RUNC}"
  Root = "{d / 'runc'}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{lay.run_dir / 'cni'}"
  max_conf_num = 1
"""


def cni_config(lay: Layout) -> str:
    return json.dumps({
        "cniVersion": "0.4.0",
        "name": "shoal",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": lay.addrs.pod_cidr}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": str(lay.run_dir / "cni-ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2)


def kubelet_config(lay: Layout) -> str:
    return yaml.safe_dump({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": lay.addrs.node_ip,
        "port": lay.ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": lay.ports.kubelet_healthz,
        "tlsCertFile": str(lay.pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(lay.pki / "kubelet.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(lay.pki / "ca.crt")}},
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        # No QoS cgroup tree: pods' cgroups are then only the containers' own,
        # which runc removes, so nothing is left in /sys/fs/cgroup after a run.
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "clusterDNS": [lay.addrs.node_ip],
        "clusterDomain": CLUSTER_DOMAIN,
        # The host's resolv.conf would hand pods its search domains and, for
        # dnsPolicy Default, its resolver: use the cluster DNS for both.
        "resolvConf": str(lay.kubelet_dir / "resolv.conf"),
        "failSwapOn": False,
        # Preloaded images cannot be pulled again: never garbage-collect them,
        # and do not evict pods because other work fills this shared disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "serializeImagePulls": False,
        "maxPods": 60,
    })


def kubelet(lay: Layout) -> list[str]:
    return [
        lay.bin("kubelet"),
        f"--config={lay.kubelet_dir / 'config.yaml'}",
        f"--kubeconfig={lay.kubeconfig('kubelet')}",
        "--container-runtime=remote",
        f"--container-runtime-endpoint=unix://{lay.containerd_socket}",
        f"--root-dir={lay.kubelet_dir / 'root'}",
        f"--cert-dir={lay.kubelet_dir / 'pki'}",
        f"--node-ip={lay.addrs.node_ip}",
        f"--hostname-override={NODE_NAME}",
        "--v=1",
    ]


def proxy_config(lay: Layout) -> str:
    return yaml.safe_dump({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(lay.kubeconfig("proxy"))},
        "mode": "iptables",
        "bindAddress": lay.addrs.node_ip,
        "clusterCIDR": lay.addrs.pod_cidr,
        "hostnameOverride": NODE_NAME,
        "healthzBindAddress": f"127.0.0.1:{lay.ports.proxy_healthz}",
        "metricsBindAddress": f"127.0.0.1:{lay.ports.proxy_metrics}",
        # Zeros leave the machine-wide conntrack sysctls alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
    })


def proxy(lay: Layout) -> list[str]:
    return [lay.bin("kube-proxy"), f"--config={lay.run_dir / 'proxy.yaml'}", "--v=1"]
