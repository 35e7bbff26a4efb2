"""A reply trickled a byte at a time cannot hold an uplink worker past the client's deadline."""

from __future__ import annotations

import time

import pytest

import httpfault
from focoos_edge.focoos import FocoosClient, TransientError


def _trickle_body(h):
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", "100000")
    h.end_headers()
    h.wfile.flush()
    while not h.server.stopping.wait(0.1):
        try:
            h.wfile.write(b" ")
            h.wfile.flush()
        except OSError:
            return


def test_trickled_body_times_out_by_the_deadline():
    with httpfault.FaultServer() as server:
        server.default = _trickle_body
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
