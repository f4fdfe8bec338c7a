"""A TCP connection reset as it opens is a CommClosedError, not a crash.

asyncio reports no peer address for a socket that the peer reset before it
was wrapped; a worker reconnecting to a restarting scheduler met exactly that
and its reconnection task died of a TypeError.
"""

from __future__ import annotations

import pytest

from shoal.comm import CommClosedError
from shoal.comm._tcp import _address_of


def test_a_socket_without_an_address_is_a_closed_connection():
    with pytest.raises(CommClosedError, match="closed as it opened"):
        _address_of(None)
    assert _address_of(("127.0.0.1", 8786)) == "tcp://127.0.0.1:8786"
