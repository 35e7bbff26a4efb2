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


@pytest.mark.parametrize("head, unit", [(b"HTTP/1.1 2", b"0"), (b"HTTP/1.1 200 OK\r\nX-Slow: ", b"y")],
                         ids=["status-line", "headers"])
def test_trickled_status_line_or_headers_time_out_by_timeout_s(head, unit):
    """The deadline runs from connect to the last byte: a status line or headers trickled a byte at a
    time (each recv gets data, so no read timeout fires) end the request after timeout_s."""
    with httpfault.FaultServer() as server:
        server.default = httpfault.trickle(head, unit, 0.1)
        client = FocoosClient(server.url, "key-123456", timeout_s=1.5, connect_timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(TransientError) as err:
            client.infer("m", b"\xff\xd8jpeg", 0.5)
        elapsed = time.monotonic() - started
        # The pool still works afterwards: the cut connection was dropped, a new one is made.
        server.default = httpfault.json(200, {"detections": []})
        assert client.infer("m", b"\xff\xd8jpeg", 0.5).detections == ()
        client.close()
    assert err.value.reason == "timeout"
    assert elapsed < 10, elapsed  # before: blocked for as long as the server kept trickling (58 s seen)
