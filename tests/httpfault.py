"""A programmable HTTP server for tests: real sockets on 127.0.0.1, scripted replies and faults.

Usage::

    with FaultServer() as srv:                      # srv.url == "http://127.0.0.1:PORT/v0"
        srv.script(json(503, {"detail": "busy"}), reset(), hang(30))   # consumed in order
        srv.default = json(200, {"detections": []})                    # then this, forever
        ...
        srv.requests[0].header("x-api-key"), srv.requests[0].body

Every request is read completely and recorded before its behaviour runs. HTTP/1.1 keep-alive is
kept unless a behaviour breaks the connection. Request bodies need a Content-Length (chunked
uploads are not supported).
"""

from __future__ import annotations

import email.parser
import email.policy
import json as jsonlib
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Recorded:
    """One request as the server received it; ``received_at`` is ``time.monotonic()``."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: tuple[tuple[str, str], ...]
    body: bytes
    received_at: float
    client_port: int

    def header(self, name: str) -> str | None:
        """First value of a header, case-insensitively, or None."""
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def header_names(self) -> set[str]:
        """All header names, lower-cased."""
        return {k.lower() for k, _ in self.headers}


@dataclass(frozen=True)
class Part:
    """One part of a multipart/form-data body."""

    name: str | None
    filename: str | None
    content_type: str
    data: bytes


def multipart_parts(rec: Recorded) -> list[Part]:
    """Split a multipart/form-data request body into its parts (with the stdlib email parser)."""
    head = f"Content-Type: {rec.header('content-type')}\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + rec.body)
    if not msg.is_multipart():
        raise ValueError(f"not a multipart body: {rec.header('content-type')!r}")
    return [
        Part(p.get_param("name", header="content-disposition"), p.get_filename(), p.get_content_type(),
             p.get_payload(decode=True) or b"")
        for p in msg.iter_parts()
    ]


# A behaviour is called with the handler once the request has been recorded.
Behaviour = Callable[["_Handler"], None]


def raw(status: int, body: bytes = b"", content_type: str = "text/plain", headers: dict | None = None) -> Behaviour:
    """Reply with these exact bytes."""

    def run(h: _Handler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)

    return run


def json(status: int, obj: object, headers: dict | None = None) -> Behaviour:
    """Reply with ``obj`` serialised as JSON."""
    return raw(status, jsonlib.dumps(obj).encode(), "application/json", headers)


def hang(seconds: float) -> Behaviour:
    """Send nothing for ``seconds`` (cut short when the server stops), then drop the connection."""

    def run(h: _Handler) -> None:
        h.server.stopping.wait(seconds)
        h.close_connection = True

    return run


def trickle(head: bytes, unit: bytes, interval_s: float) -> Behaviour:
    """Send `head`, then `unit` every `interval_s` until the server stops: each recv of the client
    gets data, so no read timeout ever fires (only a total deadline can end the request)."""

    def run(h: _Handler) -> None:
        try:
            h.wfile.write(head)
            h.wfile.flush()
            while not h.server.stopping.wait(interval_s):
                h.wfile.write(unit)
                h.wfile.flush()
        except OSError:
            h.close_connection = True

    return run


def reset() -> Behaviour:
    """Abort the connection with a TCP RST and no reply (SO_LINGER 0, then close)."""

    def run(h: _Handler) -> None:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
        h.close_connection = True

    return run


def delay(seconds: float, then: Behaviour) -> Behaviour:
    """Wait ``seconds`` (cut short when the server stops), then behave as ``then``."""

    def run(h: _Handler) -> None:
        if not h.server.stopping.wait(seconds):
            then(h)
        else:
            h.close_connection = True

    return run


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: replies always carry Content-Length
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid the 40 ms delayed-ACK stall
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:  # the socket was reset on purpose
            pass
        self.server.track(self.connection, open_=False)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        self.server.record(Recorded(self.command, url.path, parse_qs(url.query, keep_blank_values=True),
                                    tuple(self.headers.items()), body, time.monotonic(),
                                    self.client_address[1]))
        self.server.next_behaviour()(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    def log_message(self, format: str, *args: object) -> None:
        pass  # tests read self.requests; stderr noise helps nobody


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive threads must not block close(); their sockets are shut below

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stopping = threading.Event()
        self.default: Behaviour = json(200, {})
        self._queue: list[Behaviour] = []
        self._records: list[Recorded] = []
        self._conns: set[socket.socket] = set()
        self._cond = threading.Condition()

    def record(self, rec: Recorded) -> None:
        with self._cond:
            self._records.append(rec)
            self._cond.notify_all()

    def next_behaviour(self) -> Behaviour:
        with self._cond:
            return self._queue.pop(0) if self._queue else self.default

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._cond:
            (self._conns.add if open_ else self._conns.discard)(conn)

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # clients that time out or give up are what fault tests do; not worth a traceback
        super().handle_error(request, client_address)

    def shut_connections(self) -> None:
        with self._cond:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@dataclass
class FaultServer:
    """Context manager around a scripted HTTP/1.1 server on 127.0.0.1 and a free port."""

    prefix: str = "/v0"
    _srv: _Server = field(init=False, repr=False)
    _thread: threading.Thread = field(init=False, repr=False)

    def __enter__(self) -> FaultServer:
        self._srv = _Server()
        self._thread = threading.Thread(target=self._srv.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="httpfault", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._srv.stopping.set()  # wakes hang() and delay()
        self._srv.shutdown()
        self._srv.shut_connections()
        self._srv.server_close()
        self._thread.join(5)

    @property
    def port(self) -> int:
        return self._srv.server_address[1]

    @property
    def url(self) -> str:
        """Base URL including the prefix, e.g. ``http://127.0.0.1:PORT/v0``."""
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    @property
    def default(self) -> Behaviour:
        """The behaviour used once the scripted queue is empty (initially ``json(200, {})``)."""
        return self._srv.default

    @default.setter
    def default(self, behaviour: Behaviour) -> None:
        self._srv.default = behaviour

    def script(self, *behaviours: Behaviour) -> None:
        """Append behaviours to the queue; each serves exactly one request, in order."""
        with self._srv._cond:
            self._srv._queue.extend(behaviours)

    @property
    def requests(self) -> list[Recorded]:
        """A snapshot of every request received so far."""
        with self._srv._cond:
            return list(self._srv._records)

    def wait_for_requests(self, count: int, timeout_s: float = 5.0) -> list[Recorded]:
        """Block until at least ``count`` requests arrived; raise TimeoutError otherwise."""
        with self._srv._cond:
            if not self._srv._cond.wait_for(lambda: len(self._srv._records) >= count, timeout_s):
                raise TimeoutError(f"{len(self._srv._records)} of {count} requests after {timeout_s} s")
            return list(self._srv._records)


def closed_port() -> int:
    """A 127.0.0.1 port with nothing listening (bound then released), for 'connection refused' tests."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
