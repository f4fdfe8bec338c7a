"""The test cluster's network: a namespace of its own, joined to the host by a veth.

The node (containerd, kubelet, kube-proxy, cluster DNS) runs in the network
namespace ``shoal-k8s``. Its only links are a veth to the host and the CNI
bridge its pods hang off; it has no default route, so nothing in the cluster
(pods, image pulls) can reach beyond this machine, and a pull of a missing
image fails at once instead of hanging. Deleting the namespace takes every
interface and iptables rule of the cluster with it, so the host's own tables
are never touched. The host gets routes to the pod and service ranges through
the veth, so tests reach pod IPs and ClusterIPs directly.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.polling import wait_for

NETNS = "shoal-k8s"
HOST_LINK = "shoal-k8s-h"
NODE_LINK = "shoal-k8s-n"
NETNS_DIR = Path("/run/netns")


@dataclass(frozen=True)
class Addresses:
    """The cluster's address plan; private ranges unused on this machine."""

    host_ip: str = "10.213.0.1"      # the API server listens here
    node_ip: str = "10.213.0.2"      # kubelet, kube-proxy and DNS
    link_prefix: int = 30
    pod_cidr: str = "10.213.1.0/24"
    service_cidr: str = "10.213.128.0/24"

    @property
    def kubernetes_service_ip(self) -> str:
        return str(next(ipaddress.ip_network(self.service_cidr).hosts()))


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def _sysctl(netns: str, key: str, value: str) -> None:
    subprocess.run(["nsenter", f"--net={NETNS_DIR / netns}", "--", "sysctl", "-qw",
                    f"{key}={value}"], check=True, capture_output=True, timeout=30)


def create(addrs: Addresses) -> None:
    """The namespace, the veth pair with both addresses, sysctls and host routes."""
    _ip("netns", "add", NETNS)
    _ip("link", "add", HOST_LINK, "type", "veth", "peer", "name", NODE_LINK)
    _ip("link", "set", NODE_LINK, "netns", NETNS)
    _ip("addr", "add", f"{addrs.host_ip}/{addrs.link_prefix}", "dev", HOST_LINK)
    _ip("link", "set", HOST_LINK, "up")
    _ip("addr", "add", f"{addrs.node_ip}/{addrs.link_prefix}", "dev", NODE_LINK, netns=NETNS)
    _ip("link", "set", NODE_LINK, "up", netns=NETNS)
    _ip("link", "set", "lo", "up", netns=NETNS)
    _sysctl(NETNS, "net.ipv4.ip_forward", "1")
    _sysctl(NETNS, "net.bridge.bridge-nf-call-iptables", "1")
    for cidr in (addrs.pod_cidr, addrs.service_cidr):
        _ip("route", "add", cidr, "via", addrs.node_ip, "dev", HOST_LINK)


def pids_in(netns_path: Path) -> list[int]:
    """Processes whose network namespace is the one bound at ``netns_path``."""
    try:
        inode = netns_path.stat().st_ino
    except OSError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "ns" / "net").stat().st_ino == inode:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_all_in(netns_path: Path, timeout: float = 15.0) -> None:
    """SIGKILL every process in that namespace and wait until they are gone."""
    for pid in pids_in(netns_path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not pids_in(netns_path), timeout=timeout,
             what=f"processes in {netns_path} to exit")


def pod_namespaces() -> set[str]:
    """Names of the per-pod namespaces containerd's CNI made (``cni-<uuid>``)."""
    if not NETNS_DIR.is_dir():
        return set()
    return {p.name for p in NETNS_DIR.iterdir() if p.name.startswith("cni-")}


def remove_namespace(name: str) -> None:
    """Unmount and delete a named network namespace (no-op when absent)."""
    path = NETNS_DIR / name
    if not path.exists():
        return
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def destroy() -> None:
    """Remove the namespace and the host's end of the veth (idempotent)."""
    kill_all_in(NETNS_DIR / NETNS)
    _ip("netns", "del", NETNS, check=False)
    remove_namespace(NETNS)
    _ip("link", "del", HOST_LINK, check=False)
    wait_for(lambda: _ip("link", "show", HOST_LINK, check=False).returncode != 0,
             timeout=15, what=f"{HOST_LINK} to disappear")


def exists() -> bool:
    return (NETNS_DIR / NETNS).exists() or _ip("link", "show", HOST_LINK,
                                               check=False).returncode == 0
