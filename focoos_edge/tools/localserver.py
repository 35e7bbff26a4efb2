"""A Focoos-compatible local inference server running OpenCV's ArUco detector on the CPU.

It speaks the wire format of the Focoos HUB remote-inference API (``/v0/models/...``, ``/v0/user/``)
so the daemon, the demo, the tests and developers of MQTT consumers can work without a cloud
account. The "model" finds ArUco markers (dictionary ``DICT_4X4_50``): boxes are exact and
predictable, so a test can draw markers where it likes (see :func:`draw_markers`, in
:mod:`focoos_edge.tools.aruco` with the detector) and check the boxes that come back. Only the standard
library serves HTTP (``ThreadingHTTPServer``).
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import policy
from email.message import Message
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import cv2
import numpy as np

from focoos_edge.tools import LOCAL_SERVER_IM_SIZE, LOCAL_SERVER_KEY_ENV, LOCAL_SERVER_PORT
from focoos_edge.tools.account import Quota, account_payload
from focoos_edge.tools.aruco import CLASSES, DETECTION, MODEL_TASKS, detect_markers, new_detector
from focoos_edge.tools.imageheader import image_pixels

log = logging.getLogger(__name__)

DEFAULT_PORT = LOCAL_SERVER_PORT
DEFAULT_MODEL_REF = "local-aruco"
DEFAULT_THRESHOLD = 0.5
MAX_BODY_BYTES = 8 * 1024 * 1024
# Memory ceilings: a decoded image costs 3 bytes a pixel, and every handler thread may hold a body.
MAX_PIXELS = 16_000_000  # 4K is 8.3 MP
MAX_CONNECTIONS = 32  # handler threads at once; more connections are refused with a 503
REQUEST_DEADLINE_S = 30.0  # a request, first byte to reply, and its body: a trickle cannot hold a thread
API_KEY_ENV = LOCAL_SERVER_KEY_ENV
MODEL_IM_SIZE = LOCAL_SERVER_IM_SIZE
MODEL_DESCRIPTION = "ArUco DICT_4X4_50 marker detector (OpenCV, CPU)"
# Idle keep-alive connections (and stalled uploads) are dropped after this, so handler threads end.
CONNECTION_IDLE_TIMEOUT_S = 60.0
STOP_JOIN_TIMEOUT_S = 5.0


class UploadError(ValueError):
    """The request body is not a multipart form with an image in a ``file`` part."""


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


def extract_form_file(content_type: str, body: bytes, field_name: str = "file") -> bytes:
    """Return the content of the ``field_name`` part of a ``multipart/form-data`` body.

    Raises :class:`UploadError` if the body is not multipart or has no such part.
    """
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadError("expected a multipart/form-data body")
    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise UploadError("malformed multipart/form-data body")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == field_name:
            # decode=True returns the raw bytes whatever the part's declared content type.
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else b""
    raise UploadError(f"missing form field '{field_name}'")


def _parse_threshold(query: str) -> float:
    values = parse_qs(query).get("confidence_threshold")
    if not values:
        return DEFAULT_THRESHOLD
    threshold = float(values[-1])  # ValueError is reported as 422 by the caller
    if not 0.0 <= threshold <= 1.0:
        raise ValueError("confidence_threshold must be within 0..1")
    return threshold


class LocalServer:
    """A Focoos-compatible HTTP server on ``host:port`` (port 0 picks a free port).

    ``api_key=None`` accepts any non-blank key. ``latency_s`` delays every inference reply to
    simulate a cloud round trip. ``models`` are the refs served; all run the ArUco detector, and
    answer as their task in ``aruco.MODEL_TASKS`` does (detection for any other ref): ``local-aruco-seg``
    adds masks and keypoints, ``local-aruco-kp`` keypoints, ``local-aruco-cls`` classifies. ``im_size``
    is what the model info says; ``quota`` meters inference (refused with 429 once used up).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, api_key: str | None = None,
                 latency_s: float = 0.0, models: tuple[str, ...] = tuple(MODEL_TASKS),
                 im_size: int | list[int] = MODEL_IM_SIZE, quota: Quota | None = None) -> None:
        if latency_s < 0:
            raise ValueError("latency_s must be >= 0")
        if not models:
            raise ValueError("at least one model ref is needed")
        self._host = host
        self._requested_port = port
        self._api_key = api_key.encode("utf-8") if api_key else None
        self._latency_s = latency_s
        self._models = tuple(models)
        self._im_size = im_size
        self.quota = quota or Quota()
        self._created_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._sockets_lock = threading.Lock()
        self._detectors = threading.local()  # one detector per handler thread: no shared C++ state
        self.stats = ServerStats()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the socket and serve in a daemon thread. Raises ``OSError`` if binding fails."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        self._httpd = _HTTPServer((self._host, self._requested_port), self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"localserver:{self.port}", daemon=True)
        self._thread.start()
        log.debug("local server listening on %s", self.url)

    @property
    def port(self) -> int:
        """The bound port (the requested one before :meth:`start`)."""
        return self._httpd.server_address[1] if self._httpd else self._requested_port

    @property
    def url(self) -> str:
        """Base URL including the ``/v0`` prefix, e.g. ``http://127.0.0.1:8501/v0``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/v0"

    def stop(self) -> None:
        """Stop serving, close every open connection and join the serving thread."""
        self._stopping.set()  # wakes simulated-latency waits at once
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
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
        if thread is not None:
            thread.join()
        self._httpd = self._thread = None

    def serve_forever(self, stop: threading.Event) -> None:
        """Serve in the foreground until ``stop`` is set (CLI mode), then stop.

        Starts the server first unless :meth:`start` was already called.
        """
        if self._httpd is None:
            self.start()
        try:
            while not stop.wait(0.5):
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError("local server thread died")
        finally:
            self.stop()

    def _connection_opened(self, sock: socket.socket) -> None:
        self.stats.incr("connections")
        with self._sockets_lock:
            self._connections[sock] = threading.current_thread()

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._sockets_lock:
            self._connections.pop(sock, None)

    # -- request handling ------------------------------------------------------------------
    def authorized(self, headers: Message) -> bool:
        """True if ``headers`` carry an accepted key (``X-API-Key`` or legacy ``Bearer``)."""
        key = (headers.get("X-API-Key") or "").strip()
        if not key:
            scheme, _, token = (headers.get("Authorization") or "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else ""
        if not key:
            return False
        if self._api_key is None:
            return True
        return hmac.compare_digest(key.encode("utf-8"), self._api_key)

    def route(self, method: str, target: str, content_type: str, body: bytes) -> tuple[int, object]:
        """Handle one authorised request; return ``(status, json_payload)``."""
        parts = urlsplit(target)
        handler: Callable[[], tuple[int, object]]
        match [unquote(s) for s in parts.path.strip("/").split("/")]:
            case ["v0", "models"]:
                allowed, handler = "GET", self._list_models
            case ["v0", "user"]:
                allowed, handler = "GET", self._user
            case ["v0", "models", ref]:
                allowed, handler = "GET", lambda: self._model_info(ref)
            case ["v0", "models", ref, "inference"]:
                allowed, handler = "POST", lambda: self._inference(ref, parts.query, content_type, body)
            case _:
                return 404, {"detail": "Not Found"}
        return handler() if method == allowed else (405, {"detail": "Method Not Allowed"})

    def _list_models(self) -> tuple[int, list[dict]]:
        return 200, [{"ref": ref, "name": ref, "task": MODEL_TASKS.get(ref, DETECTION),
                      "status": "TRAINING_COMPLETED",
                      "description": MODEL_DESCRIPTION, "focoos_model": ref} for ref in self._models]

    def _model_info(self, ref: str) -> tuple[int, dict]:
        if ref not in self._models:
            return 404, {"detail": "Model not found"}
        return 200, {
            "ref": ref, "name": ref, "task": MODEL_TASKS.get(ref, DETECTION), "status": "TRAINING_COMPLETED",
            "description": MODEL_DESCRIPTION, "classes": list(CLASSES), "im_size": self._im_size,
            "is_managed": False, "owner_ref": "local", "focoos_model": ref, "model_family": "opencv_aruco",
            "created_at": self._created_at, "updated_at": self._created_at,
        }

    def _user(self) -> tuple[int, dict]:
        return 200, account_payload(self.quota, self._created_at)

    def _detector(self) -> cv2.aruco.ArucoDetector:
        detector = getattr(self._detectors, "detector", None)
        if detector is None:
            detector = new_detector()
            self._detectors.detector = detector
        return detector

    def _inference(self, ref: str, query: str, content_type: str, body: bytes) -> tuple[int, dict]:
        if ref not in self._models:
            return 404, {"detail": "Model not found"}
        try:
            threshold = _parse_threshold(query)
            image_bytes = extract_form_file(content_type, body)
        except ValueError as exc:  # UploadError included
            return 422, {"detail": str(exc)}
        started = time.perf_counter()
        image = _decode_image(image_bytes)
        if image is None:
            return 400, {"detail": "Invalid image: cannot decode the uploaded file"}
        decoded = time.perf_counter()
        if not self.quota.spend():
            used, maximum = self.quota.snapshot()
            return 429, {"detail": f"Inference quota exhausted ({used} of {maximum} used)"}
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        preprocessed = time.perf_counter()
        found = detect_markers(self._detector(), grey, MODEL_TASKS.get(ref, DETECTION))
        inferred = time.perf_counter()
        detections = [d for d in found if d["conf"] > threshold]
        done = time.perf_counter()
        self.stats.incr("inferences")
        if self._latency_s:
            self._stopping.wait(self._latency_s)
        return 200, {"detections": detections, "latency": {
            "imload": round(decoded - started, 6), "preprocess": round(preprocessed - decoded, 6),
            "inference": round(inferred - preprocessed, 6), "postprocess": round(done - inferred, 6)}}


def _decode_image(data: bytes) -> np.ndarray | None:
    if not data:
        return None
    pixels = image_pixels(data)
    if pixels is None or pixels > MAX_PIXELS:  # a tiny file may declare gigabytes of pixels
        log.info("local server: refused an image of %s pixels (at most %d)", pixels, MAX_PIXELS)
        return None
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: LocalServer) -> None:
        self.app = app
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every reply has a Content-Length
    disable_nagle_algorithm = True  # headers and body are small writes: avoid delayed-ACK stalls
    timeout = CONNECTION_IDLE_TIMEOUT_S
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.app._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.app._connection_closed(self.connection)

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
        timer = threading.Timer(REQUEST_DEADLINE_S, self._cut)
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
        app = self.server.app
        app.stats.incr("requests")
        if not app.authorized(self.headers):  # before reading the body: strangers cost no memory
            app.stats.incr("auth_failures")
            # A small body is drained unkept (the connection stays usable); a large one is not read.
            self._send_json(401, {"detail": "Invalid API key"}, close=not self._discard_small_body())
            return
        body = self._read_body()
        if body is None:
            return
        status, payload = app.route(method, self.path, self.headers.get("Content-Type", ""), body)
        self._send_json(status, payload)

    def _read_body(self) -> bytes | None:
        """Read the whole body (so the connection can be reused); reply and return None if refused."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._send_json(411, {"detail": "Length Required: chunked bodies are not supported"}, close=True)
            return None
        raw_length = self.headers.get("Content-Length", "0").strip() or "0"
        if not raw_length.isdigit():
            self._send_json(400, {"detail": "Invalid Content-Length"}, close=True)
            return None
        length = int(raw_length)
        if length > MAX_BODY_BYTES:
            # The body is left unread, so the connection cannot carry another request.
            self._send_json(413, {"detail": f"Request body larger than {MAX_BODY_BYTES} bytes"}, close=True)
            return None
        body = self._read_until(length, time.monotonic() + REQUEST_DEADLINE_S)
        if body is None:
            self.close_connection = True  # client went away or too slow mid-upload: nobody to answer
        return body

    def _discard_small_body(self) -> bool:
        """Read and drop a body of at most 1 MiB; False when there is more (or it is chunked)."""
        raw_length = self.headers.get("Content-Length", "0").strip() or "0"
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower() or not raw_length.isdigit():
            return False
        length = int(raw_length)
        return length <= 1024 * 1024 and self._read_until(length, time.monotonic() + 5.0) is not None

    def _read_until(self, length: int, deadline: float) -> bytes | None:
        """`length` bytes of body by `deadline`, or None (the socket timeout shrinks to what is left)."""
        chunks, got = [], 0
        try:
            while got < length:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.connection.settimeout(min(left, CONNECTION_IDLE_TIMEOUT_S))
                chunk = self.rfile.read1(min(length - got, 64 * 1024))
                if not chunk:
                    return None
                chunks.append(chunk)
                got += len(chunk)
        except (TimeoutError, OSError):
            return None
        finally:
            self.connection.settimeout(CONNECTION_IDLE_TIMEOUT_S)
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


def run_from_args(args: argparse.Namespace, stop_event: threading.Event) -> int:
    """Run the server from parsed CLI ``args`` until ``stop_event`` is set; return an exit code."""
    api_key = (args.api_key or os.environ.get(API_KEY_ENV) or "").strip() or None
    if args.latency_ms < 0:
        log.error("--latency-ms must be >= 0")
        return 1
    try:
        quota = Quota.parse(args.quota) if args.quota else None
    except ValueError as exc:
        log.error("%s", exc)
        return 1
    server = LocalServer(host=args.host, port=args.port, api_key=api_key, latency_s=args.latency_ms / 1000.0,
                         im_size=args.im_size, quota=quota)
    try:
        server.start()
    except (OSError, OverflowError) as exc:  # OverflowError: port outside 0..65535
        log.error("local server cannot listen on %s:%s: %s", args.host, args.port, exc)
        return 1
    if api_key is None:
        log.warning("no API key configured (--api-key or %s): keys are not checked, any non-blank key is accepted",
                    API_KEY_ENV)
    log.info("Focoos-compatible local server listening on %s (model %s)", server.url, DEFAULT_MODEL_REF)
    server.serve_forever(stop_event)
    log.info("local server stopped")
    return 0
