"""Cluster DNS for the test cluster, since Debian ships no CoreDNS.

A small authoritative server for ``cluster.local`` that follows Services and
Endpoints through the API server (list, then watch) and answers:

- ``<svc>.<ns>.svc.cluster.local``: the ClusterIP, or for a headless
  service the ready endpoints' pod IPs;
- ``<hostname>.<svc>.<ns>.svc.cluster.local``: an endpoint with a hostname;
- ``<a-b-c-d>.<ns>.pod.cluster.local``: ``a.b.c.d``.

A records only; other types of a known name get an empty answer, and every
other name NXDOMAIN. It never forwards anywhere: nothing in the test cluster
may resolve a public name. It serves UDP and TCP; the kubelet points pods at
it with ``--cluster-dns``, whose search domains make short names work.

Run: ``python -m tests.k8s.dns --kubeconfig K --address IP [--port 53]``.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer
from kubernetes import client, config, watch

TTL = 5
WATCH_SECONDS = 240
"""How long one watch call lasts before the next relists (API servers cap it)."""
RETRY_SECONDS = 1.0


class Records:
    """Services and endpoints as last seen, keyed by (namespace, name)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._service_ips: dict[tuple[str, str], str | None] = {}  # None: headless
        self._endpoints: dict[tuple[str, str], list[tuple[str, str | None]]] = {}

    def set_service(self, obj: Any, deleted: bool = False) -> None:
        key = (obj.metadata.namespace, obj.metadata.name)
        with self._lock:
            if deleted:
                self._service_ips.pop(key, None)
            else:
                ip = obj.spec.cluster_ip
                self._service_ips[key] = None if ip in (None, "", "None") else ip

    def set_endpoints(self, obj: Any, deleted: bool = False) -> None:
        key = (obj.metadata.namespace, obj.metadata.name)
        addresses = []
        for subset in [] if deleted else (obj.subsets or []):
            addresses += [(a.ip, a.hostname) for a in subset.addresses or []]
        with self._lock:
            if deleted:
                self._endpoints.pop(key, None)
            else:
                self._endpoints[key] = addresses

    def replace(self, kind: str, items: list[Any]) -> None:
        with self._lock:
            (self._service_ips if kind == "services" else self._endpoints).clear()
        setter = self.set_service if kind == "services" else self.set_endpoints
        for item in items:
            setter(item)

    def lookup(self, labels: list[str], domain: list[str]) -> list[str] | None:
        """IPs for a name (labels, lowercase, without the domain); None: no such name."""
        with self._lock:
            if len(labels) == 3 and labels[2] == "pod":
                return _dashed_ip(labels[0])
            if len(labels) == 3 and labels[2] == "svc":
                key = (labels[1], labels[0])
                if key not in self._service_ips:
                    return None
                ip = self._service_ips[key]
                if ip is not None:
                    return [ip]
                return [a for a, _ in self._endpoints.get(key, [])]
            if len(labels) == 4 and labels[3] == "svc":
                key = (labels[2], labels[1])
                if self._service_ips.get(key, "") is not None:
                    return None
                found = [a for a, host in self._endpoints.get(key, []) if host == labels[0]]
                return found or None
        return None


def _dashed_ip(label: str) -> list[str] | None:
    try:
        return [str(ipaddress.IPv4Address(label.replace("-", ".")))]
    except ValueError:
        return None


class ClusterResolver(BaseResolver):  # type: ignore[misc]
    """Answers from :class:`Records` for one domain, NXDOMAIN for everything else."""

    def __init__(self, records: Records, domain: str) -> None:
        self.records = records
        self.domain = domain.strip(".").lower().split(".")

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        reply.header.ra = 0  # no recursion, ever
        reply.header.aa = 1
        qname = request.q.qname
        labels = [str(label, "ascii", "replace").lower() for label in qname.label]
        n = len(self.domain)
        ips = None
        if len(labels) > n and labels[-n:] == self.domain:
            ips = self.records.lookup(labels[:-n], self.domain)
        if ips is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype in (QTYPE.A, QTYPE.ANY):
            for ip in ips:
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(ip), ttl=TTL))
        return reply


def _follow(kind: str, lister: Callable[..., Any], records: Records,
            synced: threading.Event, stop: threading.Event) -> None:
    """List then watch ``kind`` forever, relisting after every error or expiry."""
    setter = records.set_service if kind == "services" else records.set_endpoints
    while not stop.is_set():
        try:
            listing = lister()
            records.replace(kind, listing.items)
            synced.set()
            for event in watch.Watch().stream(lister, timeout_seconds=WATCH_SECONDS,
                                              resource_version=listing.metadata.resource_version):
                if event["type"] == "ERROR":
                    break
                setter(event["object"], deleted=event["type"] == "DELETED")
        except Exception as exc:  # noqa: BLE001 - any API error: log, relist after a pause
            print(f"dns: {kind} watch failed: {exc!r}; relisting", flush=True)
            stop.wait(RETRY_SECONDS)


def query(server: str, name: str, qtype: str = "A", *, port: int = 53, tcp: bool = False,
          timeout: float = 5.0) -> tuple[str, list[str]]:
    """Ask ``server`` about ``name``: the response code's name and the answers' data."""
    packet = DNSRecord.question(name, qtype).send(server, port, tcp=tcp, timeout=timeout)
    reply = DNSRecord.parse(packet)
    return RCODE.get(reply.header.rcode), [str(rr.rdata) for rr in reply.rr]


def serve(kubeconfig: str, address: str, port: int, domain: str) -> None:
    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    records = Records()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    synced = []
    for kind, lister in (("services", api.list_service_for_all_namespaces),
                         ("endpoints", api.list_endpoints_for_all_namespaces)):
        event = threading.Event()
        threading.Thread(target=_follow, args=(kind, lister, records, event, stop),
                         daemon=True, name=f"watch-{kind}").start()
        synced.append(event)
    deadline = time.monotonic() + 60
    for event in synced:
        if not event.wait(max(0.0, deadline - time.monotonic())):
            raise SystemExit("dns: could not list services and endpoints within 60s")
    resolver = ClusterResolver(records, domain)
    servers = [DNSServer(resolver, address=address, port=port, tcp=tcp) for tcp in (False, True)]
    for server in servers:
        server.start_thread()
    print(f"dns: serving {domain} on {address}:{port} (udp, tcp)", flush=True)
    stop.wait()
    for server in servers:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--domain", default="cluster.local")
    args = parser.parse_args(argv)
    serve(args.kubeconfig, args.address, args.port, args.domain)


if __name__ == "__main__":
    main()
