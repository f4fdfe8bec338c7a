"""What a hostile peer costs a scheduler: memory under header attacks, idle connections.

Usage::

    python benchmarks/boundary.py                 # both measurements
    python benchmarks/boundary.py --attackers 5 --declare 1GiB --idle 500

Starts a real ``shoal scheduler`` process on loopback, then

* **oversized headers**: opens ``--attackers`` connections that each send 8
  bytes declaring a ``--declare``-byte message (before or after the
  handshake) and then stall; the scheduler's peak RSS is sampled for
  ``--hold`` seconds and whether it closed the stalled connections is noted;
* **idle connections**: opens ``--idle`` connections that complete the
  handshake and then say nothing; the RSS increase per connection is reported.

Prints one JSON object.  Nothing is asserted: these are figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time
from typing import Any

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from shoal.protocol import dumps, pack_frames_prelude

UNITS = {"KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def parse_size(text: str) -> int:
    for suffix, factor in UNITS.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_scheduler(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "shoal.cli", "--log-level", "ERROR", "scheduler",
           "--host", "127.0.0.1", "--port", str(port), "--http-port", "-1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)  # waiting for a process to listen: bounded by the deadline
    proc.kill()
    raise RuntimeError("the scheduler did not start")


def message_bytes(msg: Any) -> bytes:
    frames = dumps(msg)
    return pack_frames_prelude(frames) + b"".join(bytes(f) for f in frames)


def handshake(sock: socket.socket) -> None:
    sock.sendall(message_bytes({"op": "handshake", "protocol": 1, "python": "3"}))
    head = recv_exact(sock, 8)
    (total,) = struct.unpack("<Q", head)
    recv_exact(sock, total)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def is_closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        data = sock.recv(1 << 16)
        return data == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def attack(port: int, attackers: int, declare: int, hold: float, after_handshake: bool,
           proc: psutil.Process) -> dict[str, Any]:
    base = proc.memory_info().rss
    socks = []
    for _ in range(attackers):
        s = socket.create_connection(("127.0.0.1", port))
        if after_handshake:
            handshake(s)
        s.sendall(struct.pack("<Q", declare) + struct.pack("<I", 1) + struct.pack("<Q", declare - 12)
                  + b"x" * 1000)
        socks.append(s)
    peak = base
    closed_after = None
    start = time.monotonic()
    while time.monotonic() - start < hold:
        peak = max(peak, proc.memory_info().rss)
        if closed_after is None and all(is_closed(s) for s in socks):
            closed_after = round(time.monotonic() - start, 1)
        time.sleep(0.05)  # sampling period of the measurement
    for s in socks:
        s.close()
    return {"rss_before_MB": round(base / 1e6, 1), "rss_peak_MB": round(peak / 1e6, 1),
            "stalled_connections_closed_after_s": closed_after}


def idle_cost(port: int, count: int, proc: psutil.Process) -> dict[str, Any]:
    socks = []
    for _ in range(20):  # warm-up: allocator arenas, first-connection costs
        s = socket.create_connection(("127.0.0.1", port))
        handshake(s)
        socks.append(s)
    time.sleep(0.5)  # let the scheduler settle before the baseline
    base = proc.memory_info().rss
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        handshake(s)
        socks.append(s)
    time.sleep(0.5)
    after = proc.memory_info().rss
    for s in socks:
        s.close()
    return {"connections": count, "rss_increase_MB": round((after - base) / 1e6, 1),
            "bytes_per_connection": (after - base) // count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attackers", type=int, default=3)
    parser.add_argument("--declare", type=parse_size, default=parse_size("1GiB"))
    parser.add_argument("--hold", type=float, default=5.0)
    parser.add_argument("--idle", type=int, default=500)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    for when in ("before_handshake", "after_handshake"):
        port = free_port()
        sched = start_scheduler(port)
        try:
            results[f"oversized_header_{when}"] = attack(
                port, args.attackers, args.declare, args.hold, when == "after_handshake",
                psutil.Process(sched.pid))
        finally:
            sched.kill()
            sched.wait()
    port = free_port()
    sched = start_scheduler(port)
    try:
        results["idle_connections"] = idle_cost(port, args.idle, psutil.Process(sched.pid))
    finally:
        sched.kill()
        sched.wait()
    results["declared_bytes"] = args.declare
    results["attackers"] = args.attackers
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
