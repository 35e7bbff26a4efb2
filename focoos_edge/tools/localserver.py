"""A Focoos-compatible local inference server running OpenCV's ArUco detector on the CPU.

It speaks the wire format of the Focoos HUB remote-inference API (``/v0/models/...``, ``/v0/user/``)
so the daemon, the demo, the tests and developers of MQTT consumers can work without a cloud
account. The "model" finds ArUco markers (dictionary ``DICT_4X4_50``): boxes are exact and
predictable, so a test can draw markers where it likes (see :func:`draw_markers`, in
:mod:`focoos_edge.tools.aruco` with the detector) and check the boxes that come back. Only the standard
library serves HTTP (``ThreadingHTTPServer``).

This module holds the server's lifecycle, its routes and the ``local-server`` command; the parts are
``httpserver.py`` (HTTP, connections), ``limits.py`` (ceilings), ``apikey.py`` (the key check),
``models.py`` (model list, info and inference), ``upload.py`` (reading an inference request) and
``account.py`` (``GET user/`` and the quota).
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from email.message import Message
from urllib.parse import unquote, urlsplit

from focoos_edge.tools import LOCAL_SERVER_IM_SIZE, LOCAL_SERVER_KEY_ENV, LOCAL_SERVER_PORT
from focoos_edge.tools.account import Quota, account_payload
from focoos_edge.tools.apikey import KeyCheck, configured_key
from focoos_edge.tools.aruco import MODEL_TASKS
from focoos_edge.tools.httpserver import HttpServer, ServerStats
from focoos_edge.tools.models import DEFAULT_MODEL_REF, Models

log = logging.getLogger(__name__)


class LocalServer:
    """A Focoos-compatible HTTP server on ``host:port`` (port 0 picks a free port).

    ``api_key=None`` accepts any non-blank key. ``latency_s`` delays every inference reply to
    simulate a cloud round trip. ``models`` are the refs served; all run the ArUco detector, and
    answer as their task in ``aruco.MODEL_TASKS`` does (detection for any other ref): ``local-aruco-seg``
    adds masks and keypoints, ``local-aruco-kp`` keypoints, ``local-aruco-cls`` classifies. ``im_size``
    is what the model info says; ``quota`` meters inference (refused with 429 once used up).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = LOCAL_SERVER_PORT, api_key: str | None = None,
                 latency_s: float = 0.0, models: tuple[str, ...] = tuple(MODEL_TASKS),
                 im_size: int | list[int] = LOCAL_SERVER_IM_SIZE, quota: Quota | None = None) -> None:
        if latency_s < 0:
            raise ValueError("latency_s must be >= 0")
        if not models:
            raise ValueError("at least one model ref is needed")
        self._host = host
        self._requested_port = port
        self._keys = KeyCheck(api_key)
        self._latency_s = latency_s
        self.quota = quota or Quota()
        self._created_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._models = Models(tuple(models), im_size, self._created_at, self.quota)
        self._stopping = threading.Event()
        self._httpd: HttpServer | None = None
        self._thread: threading.Thread | None = None
        self.stats = ServerStats()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the socket and serve in a daemon thread. Raises ``OSError`` if binding fails."""
        if self._httpd is not None:
            raise RuntimeError("server already started")
        self._stopping.clear()
        self._httpd = HttpServer((self._host, self._requested_port), self, self.stats)
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
        httpd.stop()
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

    # -- request handling ------------------------------------------------------------------
    def authorized(self, headers: Message) -> bool:
        """True if ``headers`` carry an accepted key (``X-API-Key`` or legacy ``Bearer``)."""
        return self._keys.accepts(headers)

    def route(self, method: str, target: str, content_type: str, body: bytes) -> tuple[int, object]:
        """Handle one authorised request; return ``(status, json_payload)``."""
        parts = urlsplit(target)
        handler: Callable[[], tuple[int, object]]
        match [unquote(s) for s in parts.path.strip("/").split("/")]:
            case ["v0", "models"]:
                allowed, handler = "GET", self._models.listing
            case ["v0", "user"]:
                allowed, handler = "GET", self._user
            case ["v0", "models", ref]:
                allowed, handler = "GET", lambda: self._models.info(ref)
            case ["v0", "models", ref, "inference"]:
                allowed, handler = "POST", lambda: self._inference(ref, parts.query, content_type, body)
            case _:
                return 404, {"detail": "Not Found"}
        return handler() if method == allowed else (405, {"detail": "Method Not Allowed"})

    def _user(self) -> tuple[int, dict]:
        return 200, account_payload(self.quota, self._created_at)

    def _inference(self, ref: str, query: str, content_type: str, body: bytes) -> tuple[int, dict]:
        status, payload = self._models.infer(ref, query, content_type, body)
        if status == 200:
            self.stats.incr("inferences")
            if self._latency_s:
                self._stopping.wait(self._latency_s)
        return status, payload


def run_from_args(args: argparse.Namespace, stop_event: threading.Event) -> int:
    """Run the server from parsed CLI ``args`` until ``stop_event`` is set; return an exit code."""
    api_key = configured_key(args.api_key)
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
                    LOCAL_SERVER_KEY_ENV)
    log.info("Focoos-compatible local server listening on %s (model %s)", server.url, DEFAULT_MODEL_REF)
    server.serve_forever(stop_event)
    log.info("local server stopped")
    return 0
