"""The local server's HTTP layer (the standard library's ``ThreadingHTTPServer``): one handler thread
per connection, at most ``MAX_CONNECTIONS`` (a 503 beyond), keep-alive, the key checked before a body
is read, bodies read within the request deadline, JSON answers. What a request means is the
:class:`Api`'s business (``localserver.LocalServer``)."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from focoos_edge.tools import limits

log = logging.getLogger("focoos_edge.tools.localserver")  # the local server logs under one name

STOP_JOIN_TIMEOUT_S = 5.0


@dataclass
class ServerStats:
    """Counters of a running :class:`LocalServer`, safe to read from any thread."""

    requests: int = 0
    inferences: int = 0
    auth_failures: int = 0
    connections: int = 0  # accepted TCP connections: keep-alive tests compare it with requests
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def incr(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name``."""
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


class Api(Protocol):
    """What the HTTP layer serves."""

    def authorized(self, headers: Message) -> bool:
        """True if ``headers`` carry an accepted key (asked before any body is read)."""
        ...

    def route(self, method: str, target: str, content_type: str, body: bytes) -> tuple[int, object]:
        """Handle one authorised request; return ``(status, json_payload)``."""
        ...


class HttpServer(ThreadingHTTPServer):
    """Serves ``api`` on ``address`` (IPv6 when the host has a colon), counting into ``stats``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: Api, stats: ServerStats) -> None:
        self.api = api
        self.stats = stats
        self._slots = threading.BoundedSemaphore(limits.MAX_CONNECTIONS)
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._sockets_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):  # refused: over MAX_CONNECTIONS handler threads
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: object, client_address: tuple) -> None:
        # The stdlib prints a traceback to stderr; a client that hung up is routine here.
        # socketserver calls this from inside its except block, so exc_info is the live exception.
        log.debug("local server: error handling a request from %s", client_address, exc_info=True)  # noqa: LOG014

    def connection_opened(self, sock: socket.socket) -> None:
        """A handler thread started serving ``sock``."""
        self.stats.incr("connections")
        with self._sockets_lock:
            self._connections[sock] = threading.current_thread()

    def connection_closed(self, sock: socket.socket) -> None:
        """The handler thread of ``sock`` is done with it."""
        with self._sockets_lock:
            self._connections.pop(sock, None)

    def stop(self) -> None:
        """Stop serving, close the listening socket and every open connection, join their threads."""
        self.shutdown()
        self.server_close()
        with self._sockets_lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            try:  # wakes handlers blocked reading an idle keep-alive connection
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _, handler_thread in connections:
            handler_thread.join(STOP_JOIN_TIMEOUT_S)
            if handler_thread.is_alive():
                log.warning("local server handler thread %s did not stop", handler_thread.name)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every reply has a Content-Length
    disable_nagle_algorithm = True  # headers and body are small writes: avoid delayed-ACK stalls
    timeout = limits.CONNECTION_IDLE_TIMEOUT_S
    server: HttpServer

    def setup(self) -> None:
        super().setup()
        self.server.connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.connection_closed(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        # The request line holds no secret (keys travel in headers, which are never logged).
        log.debug("%s %s", self.address_string(), format % args)

    def handle_one_request(self) -> None:
        """One request within REQUEST_DEADLINE_S from its first byte: a client trickling its request
        line or headers is cut off (idle keep-alive waits before the first byte do not count)."""
        try:
            first = self.rfile.peek(1)  # type: ignore[attr-defined]  # buffered: waits for a byte or EOF
        except OSError:  # the idle timeout (TimeoutError) or a reset
            first = b""
        if not first:
            self.close_connection = True
            return
        timer = threading.Timer(limits.REQUEST_DEADLINE_S, self._cut)
        timer.daemon = True
        timer.start()
        try:
            super().handle_one_request()
        finally:
            timer.cancel()

    def _cut(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)  # ends the handler's blocked read

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        api, stats = self.server.api, self.server.stats
        stats.incr("requests")
        if not api.authorized(self.headers):  # before reading the body: strangers cost no memory
            stats.incr("auth_failures")
            # A small body is drained unkept (the connection stays usable); a large one is not read.
            self._send_json(401, {"detail": "Invalid API key"}, close=not self._discard_small_body())
            return
        body = self._read_body()
        if body is None:
            return
        status, payload = api.route(method, self.path, self.headers.get("Content-Type", ""), body)
        self._send_json(status, payload)

    def _read_body(self) -> bytes | None:
        """Read the whole body (so the connection can be reused); reply and return None if refused."""
        if self._chunked():
            self._send_json(411, {"detail": "Length Required: chunked bodies are not supported"}, close=True)
            return None
        length = self._content_length()
        if length is None:
            self._send_json(400, {"detail": "Invalid Content-Length"}, close=True)
            return None
        if length > limits.MAX_BODY_BYTES:
            # The body is left unread, so the connection cannot carry another request.
            self._send_json(413, {"detail": f"Request body larger than {limits.MAX_BODY_BYTES} bytes"},
                            close=True)
            return None
        body = self._read_until(length, time.monotonic() + limits.REQUEST_DEADLINE_S)
        if body is None:
            self.close_connection = True  # client went away or too slow mid-upload: nobody to answer
        return body

    def _discard_small_body(self) -> bool:
        """Read and drop a body of at most DRAIN_MAX_BYTES; False when there is more (or it is chunked)."""
        length = None if self._chunked() else self._content_length()
        return (length is not None and length <= limits.DRAIN_MAX_BYTES
                and self._read_until(length, time.monotonic() + limits.DRAIN_DEADLINE_S) is not None)

    def _chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _content_length(self) -> int | None:
        """The declared Content-Length (0 without one); None when it is not a whole number."""
        raw_length = self.headers.get("Content-Length", "0").strip() or "0"
        return int(raw_length) if raw_length.isascii() and raw_length.isdigit() else None  # not "²"

    def _read_until(self, length: int, deadline: float) -> bytes | None:
        """`length` bytes of body by `deadline`, or None (the socket timeout shrinks to what is left)."""
        chunks, got = [], 0
        try:
            while got < length:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.connection.settimeout(min(left, limits.CONNECTION_IDLE_TIMEOUT_S))
                chunk = self.rfile.read1(min(length - got, 64 * 1024))
                if not chunk:
                    return None
                chunks.append(chunk)
                got += len(chunk)
        except (TimeoutError, OSError):
            return None
        finally:
            self.connection.settimeout(limits.CONNECTION_IDLE_TIMEOUT_S)
        return b"".join(chunks)

    def _send_json(self, status: int, payload: object, close: bool = False) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)
