"""The tls:// transport: mutual TLS over real sockets, and every way to be refused.

A listener and its legitimate client share one CA; each attack comes from
a peer without a certificate, with one from another CA, with an expired one,
speaking plain TCP, or saying nothing.  Each is refused during the handshake
with an error that says which, logged once by the server, and the server
keeps answering its legitimate client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from shoal import EncryptionRequiredError, Security, TLSError
from shoal.comm import CommClosedError, CommLimits, Listener, connect, listen

from ..pki import make_pki

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Security]:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def echo(comm: Any) -> None:
    try:
        while True:
            await comm.write(await comm.read())
    except CommClosedError:
        pass


@pytest_asyncio.fixture
async def server(pki: dict[str, Security]) -> AsyncIterator[Listener]:
    listener = listen("tls://127.0.0.1:0", echo, CommLimits(handshake_timeout=1.0),
                      pki["cluster"].connection_args("scheduler"))
    await listener.start()
    yield listener
    listener.stop()


async def assert_serving(address: str, security: Security) -> None:
    comm = await connect(address, timeout=5, connection_args=security.connection_args("client"))
    try:
        await comm.write({"op": "ping", "n": 1})
        assert await comm.read() == {"op": "ping", "n": 1}
    finally:
        comm.abort()


async def test_mutual_tls_carries_small_and_large_messages(server, pki) -> None:
    assert server.address.startswith("tls://127.0.0.1:")
    comm = await connect(server.address, connection_args=pki["cluster"].connection_args("client"))
    try:
        assert comm.local_address.startswith("tls://") and comm.peer_address == server.address
        # another thread may not write past the TLS layer: it says no, sending nothing
        assert not await asyncio.to_thread(comm.write_threadsafe, {"op": "from-a-thread"})
        big = os.urandom(3 * 1024 * 1024)  # above the size sent straight from memory over TCP
        for message in ({"op": "x"}, {"op": "big", "data": big}, {"op": "y", "n": list(range(9))}):
            await comm.write(message)
            assert await comm.read() == message
    finally:
        comm.abort()


@pytest.mark.parametrize(("attacker", "words"), [
    ("no-cert", "refused this process's certificate"),
    ("other-ca", "another CA"),
    ("expired", "refused this process's certificate"),
])
async def test_a_bad_certificate_is_refused_in_the_handshake(server, pki, caplog, attacker,
                                                             words) -> None:
    with caplog.at_level(logging.WARNING, logger="shoal.comm._tls"):
        for _ in range(2):
            with pytest.raises(TLSError, match=words):
                comm = await connect(server.address, timeout=5,
                                     connection_args=pki[attacker].connection_args("client"))
                await comm.read()  # TLS 1.3: a refused client certificate shows on reading
        await assert_serving(server.address, pki["cluster"])
    refusals = [r.getMessage() for r in caplog.records if "refused a TLS" in r.getMessage()]
    assert len(refusals) == 1, refusals  # logged once, however often it is tried
    assert server.refused == 2


async def test_the_server_says_why_it_refused(server, pki, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="shoal.comm._tls"):
        for attacker in ("no-cert", "expired"):
            with pytest.raises(TLSError):
                comm = await connect(server.address, timeout=5,
                                     connection_args=pki[attacker].connection_args("client"))
                await comm.read()
        await assert_serving(server.address, pki["cluster"])
    text = " | ".join(r.getMessage() for r in caplog.records)
    assert "presented no certificate" in text and "certificate has expired" in text, text


async def test_a_plain_tcp_client_is_refused_with_a_hint(server, pki, caplog) -> None:
    plain = server.address.replace("tls://", "tcp://")
    with caplog.at_level(logging.WARNING, logger="shoal.comm._tls"):
        with pytest.raises(CommClosedError, match="tls:// address"):
            await connect(plain, timeout=5)
        await assert_serving(server.address, pki["cluster"])
    assert any("does not speak TLS" in r.getMessage() for r in caplog.records)


async def test_a_silent_peer_is_dropped_after_the_handshake_timeout(server, pki) -> None:
    loop = asyncio.get_running_loop()
    with socket.create_connection(("127.0.0.1", int(server.address.rsplit(":", 1)[1]))) as sock:
        sock.setblocking(False)
        async with asyncio.timeout(10):
            assert await loop.sock_recv(sock, 1) == b""  # closed by the server, 1s in
    assert server.refused == 1
    await assert_serving(server.address, pki["cluster"])


async def test_a_tls_client_of_a_plain_server_gets_a_tls_error(pki) -> None:
    plain = listen("tcp://127.0.0.1:0", echo)
    await plain.start()
    try:
        with pytest.raises(TLSError, match="does not speak TLS|closed the connection"):
            await connect(plain.address.replace("tcp://", "tls://"), timeout=5,
                          connection_args=pki["cluster"].connection_args("client"))
    finally:
        plain.stop()


async def test_tls_without_credentials_says_what_to_give(server) -> None:
    with pytest.raises(TLSError, match="no TLS credentials"):
        await connect(server.address, timeout=5)
    with pytest.raises(ValueError, match="needs a CA, a certificate"):
        listen("tls://127.0.0.1:0", echo)


async def test_require_encryption_refuses_tcp_addresses(pki) -> None:
    strict = pki["cluster"].connection_args("client")
    assert strict.require_encryption is False
    args = Security(require_encryption=True).connection_args("client")
    with pytest.raises(EncryptionRequiredError, match="tls://"):
        await connect("tcp://127.0.0.1:1", timeout=1, connection_args=args)
    with pytest.raises(EncryptionRequiredError):
        listen("tcp://127.0.0.1:0", echo, connection_args=args)
