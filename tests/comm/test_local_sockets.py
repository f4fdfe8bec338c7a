"""tcp:// connections between processes of one host over Unix sockets (comm/_local.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import pytest

from shoal.comm import RPCServer, connect
from shoal.comm._local import ENV, name_for, names_to_try

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="abstract Unix socket names are Linux's")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def _echo_over(address: str) -> tuple[int, str, object]:
    """Connect to an echo server at ``address``: the socket family used, the
    peer address the comm reports, and the echo of a message."""
    comm = await connect(address)
    try:
        family = comm.transport.get_extra_info("socket").family
        await comm.write({"op": "echo", "x": [1, "two"]})
        return family, comm.peer_address, await comm.read()
    finally:
        await comm.close()


def _server() -> RPCServer:
    return RPCServer({"echo": lambda x: x}, {})


def test_a_tcp_address_on_this_host_is_reached_over_its_unix_socket():
    async def main() -> None:
        server = _server()
        address = await server.listen("tcp://127.0.0.1:0")
        family, peer, echoed = await _echo_over(address)
        assert family == socket.AF_UNIX and echoed == [1, "two"]
        assert peer == address  # the comm still names the address it was asked for
        server.stop()

    run(main())


def test_a_listener_on_every_interface_is_reached_from_loopback():
    async def main() -> None:
        server = _server()
        address = await server.listen("tcp://0.0.0.0:0")
        port = int(address.rsplit(":", 1)[1])
        assert name_for("0.0.0.0", port) in names_to_try("127.0.0.1", port)
        family, _, echoed = await _echo_over(f"tcp://127.0.0.1:{port}")
        assert family == socket.AF_UNIX and echoed == [1, "two"]
        server.stop()

    run(main())


def test_turned_off_the_connection_is_tcp(monkeypatch):
    monkeypatch.setenv(ENV, "0")

    async def main() -> None:
        server = _server()
        address = await server.listen("tcp://127.0.0.1:0")
        family, _, echoed = await _echo_over(address)
        assert family == socket.AF_INET and echoed == [1, "two"]
        server.stop()

    run(main())


_SQUATTER = """
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX)
s.bind("\\0" + sys.argv[1]); s.listen()
print("ready", flush=True)
while True:
    s.accept()[0].close()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to listen as another user")
def test_a_unix_socket_of_another_user_is_refused_and_tcp_used():
    """Another user binds the name before the real listener: connecting skips it
    (SO_PEERCRED says whose it is) and reaches the real listener over TCP."""
    with socket.socket() as probe:  # a free port, whose name is taken first
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    squatter = subprocess.Popen([sys.executable, "-c", _SQUATTER, name_for("127.0.0.1", port)[1:]],
                                stdout=subprocess.PIPE, text=True)

    async def main() -> None:
        server = _server()
        address = await server.listen(f"tcp://127.0.0.1:{port}")
        family, _, echoed = await _echo_over(address)
        assert family == socket.AF_INET and echoed == [1, "two"]
        server.stop()

    try:
        assert squatter.stdout is not None
        assert squatter.stdout.readline().strip() == "ready"  # ends when it binds or dies
        run(main())
    finally:
        squatter.kill()
        squatter.wait(10)
