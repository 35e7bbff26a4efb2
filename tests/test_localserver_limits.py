"""`local-server` memory ceilings (issue 12, finding 6), against the real CLI process: the key is
checked before the body is read, a JPEG's declared size before it is decoded, handler threads capped."""

from __future__ import annotations

import socket
import sys

import cv2
import numpy as np
import pytest
import requests
from procs import free_port, wait_for_port, wait_until

from focoos_edge.tools.limits import MAX_CONNECTIONS

KEY = "limits-key-0123"
MIB = 1024 * 1024


@pytest.fixture
def server(spawn):
    port = free_port()
    proc = spawn([sys.executable, "-m", "focoos_edge", "local-server", "--port", str(port), "--api-key", KEY],
                 name="local-server")
    wait_for_port(port, 30, proc)
    proc.url = f"http://127.0.0.1:{port}/v0"
    proc.port = port
    return proc


def huge_declared_jpeg() -> bytes:
    """A ~1 KB JPEG whose frame header declares 20000 x 20000 pixels (1.2 GB once decoded)."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = (20000).to_bytes(2, "big") + (20000).to_bytes(2, "big")
    return bytes(data)


def infer(url: str, jpeg: bytes, key: str = KEY) -> requests.Response:
    return requests.post(f"{url}/models/local-aruco/inference", files={"file": ("i.jpg", jpeg, "image/jpeg")},
                         headers={"X-API-Key": key}, timeout=30)


def test_declared_pixels_are_checked_before_decoding(server):
    before = server.rss_bytes()
    for _ in range(3):
        assert infer(server.url, huge_declared_jpeg()).status_code == 400
    ok = cv2.imencode(".jpg", np.full((360, 640, 3), 200, np.uint8))[1].tobytes()
    assert infer(server.url, ok).status_code == 200
    assert server.rss_bytes() < before + 100 * MIB, (before, server.rss_bytes())  # was 6.7 GB for 3 uploads


def test_wrong_key_is_refused_before_the_body_is_read(server):
    """A stranger announcing 20 MiB gets its 401 after the headers alone: nothing is buffered."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v0/models/local-aruco/inference HTTP/1.1\r\nHost: x\r\nX-API-Key: wrong-key-000\r\n"
                     b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 20971520\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 401"), reply


def test_handler_threads_are_capped(server):
    """Past MAX_CONNECTIONS open connections a new one gets a 503 at once instead of a thread."""
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in held:  # each is served by a thread, waiting for its request
            sock.sendall(b"GET")
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with extra:
            assert extra.recv(4096).startswith(b"HTTP/1.1 503")
    finally:
        for sock in held:
            sock.close()
    # Slots come back as the handler threads end: the server serves again.
    wait_until(lambda: requests.get(f"{server.url}/models/local-aruco", headers={"X-API-Key": KEY},
                                    timeout=10).status_code == 200, 20)


def test_a_trickled_request_line_is_cut_by_the_deadline(monkeypatch):
    """Each recv gets a byte, so the idle timeout never fires: only the per-request deadline ends it."""
    import time

    from focoos_edge.tools import limits
    from focoos_edge.tools.localserver import LocalServer

    monkeypatch.setattr(limits, "REQUEST_DEADLINE_S", 1.0)
    server = LocalServer(port=0, api_key=KEY)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 15 and not closed:
                try:
                    sock.sendall(b"G")
                    sock.settimeout(0.2)
                    closed = sock.recv(100) == b""
                except TimeoutError:
                    pass
                except OSError:
                    closed = True
            elapsed = time.monotonic() - started
        assert closed and elapsed < 10, elapsed
        # A normal request is still served.
        assert requests.get(f"{server.url}/models/local-aruco", headers={"X-API-Key": KEY}, timeout=10).ok
    finally:
        server.stop()
