"""A reply trickled a byte at a time cannot hold an uplink worker past the client's deadline."""

from __future__ import annotations

import time

import httpfault
import pytest

from focoos_edge.inference.client import FocoosClient
from focoos_edge.inference.errors import TransientError

TRICKLED_BODY = httpfault.trickle(
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n", b" ", 0.1)


def test_trickled_body_times_out_by_the_deadline():
    with httpfault.FaultServer() as server:
        server.default = TRICKLED_BODY
        client = FocoosClient(server.url, "key-123456", timeout_s=1.0, connect_timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(TransientError) as err:
            client.infer("m", b"\xff\xd8jpeg", 0.5)
        elapsed = time.monotonic() - started
        client.close()
    assert err.value.reason == "timeout"
    # Each recv returns within the read timeout, so only the total deadline (2 s) can stop it;
    # without it this would run for 10000 s. Generous bound for a loaded machine.
    assert elapsed < 20, elapsed
