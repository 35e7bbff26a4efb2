"""Optional Prometheus endpoint: the daemon's snapshot as text exposition format 0.0.4.

:func:`render` is pure: it maps the :class:`~focoos_edge.service.stats.DaemonSnapshot` that the stats
message is made from as well (:meth:`focoos_edge.service.daemon.Daemon.snapshot`) to metric families
named ``focoos_edge_*`` (counters end in ``_total``; camera, reason, queue and state are labels), so
both show the same figures. :class:`MetricsServer` serves ``GET /metrics`` from a standard-library HTTP server in
a thread; it is meant for a loopback address (no authentication, no TLS).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from focoos_edge.delivery import PublisherSnapshot, SpoolSnapshot
from focoos_edge.inference import UplinkSnapshot
from focoos_edge.service.stats import CameraStats, DaemonSnapshot

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "focoos_edge_"

Labels = tuple[tuple[str, str], ...]


@dataclass
class _Family:
    name: str
    kind: str  # "counter" or "gauge"
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)


class _Families:
    """Families in first-use order; every sample goes to the family declared with its name."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def add(self, name: str, kind: str, help_text: str, value: float | bool | None, **labels: str) -> None:
        """One sample; None (no figure yet, e.g. no latency measured) leaves the sample out."""
        family = self._families.setdefault(name, _Family(PREFIX + name, kind, help_text))
        if value is not None:
            family.samples.append((tuple(labels.items()), float(value)))

    def __iter__(self):
        return iter(self._families.values())


def render(snap: DaemonSnapshot) -> str:
    """The daemon's snapshot as Prometheus text format 0.0.4 (HELP and TYPE line for every family)."""
    fams = _Families()
    fams.add("info", "gauge", "Always 1; the device_id label names the box.", 1, device_id=snap.device_id)
    fams.add("uptime_seconds", "gauge", "Seconds since the daemon started.", snap.uptime_s)
    fams.add("cpu_percent", "gauge", "Process CPU use in percent of one core since the previous stats reading.",
             snap.cpu_percent)
    fams.add("resident_memory_bytes", "gauge", "Resident set size of the process.", snap.rss_bytes)
    _inference(fams, snap.uplink)
    _mqtt(fams, snap.publisher)
    _spool(fams, snap.spool)
    for camera, cam in sorted(snap.cameras.items()):
        _camera(fams, camera, cam)
    for thread, count in sorted(snap.thread_restarts.items()):
        fams.add("thread_restarts_total", "counter", "Loops restarted after an unexpected error, by thread.",
                 count, thread=thread)
    return "".join(_format(family) for family in fams)


def _inference(fams: _Families, up: UplinkSnapshot) -> None:
    fams.add("inference_state", "gauge", "1 for the current state of the inference endpoint (ok, auth_failed, ...).",
             1, state=up.state)
    fams.add("live_queue_frames", "gauge", "Frames waiting in memory for an uplink slot.", up.queue_depth)
    fams.add("inference_in_flight", "gauge", "Inference requests in flight.", up.busy)


def _mqtt(fams: _Families, pub: PublisherSnapshot) -> None:
    fams.add("mqtt_connected", "gauge", "1 while connected to the broker.", pub.connected)
    for key, value, help_text in (
            ("sent", pub.sent, "MQTT messages handed to the client library."),
            ("acked", pub.acked, "MQTT messages acknowledged by the broker (QoS 1/2)."),
            ("resent", pub.resent, "Outbox messages sent again after a reconnect."),
            ("dropped", pub.dropped_queue_full, "MQTT messages dropped because the client queue was full.")):
        fams.add(f"mqtt_messages_{key}_total", "counter", help_text, value)


def _spool(fams: _Families, spool: SpoolSnapshot) -> None:
    for queue, q in (("frames", spool.frames), ("outbox", spool.outbox)):
        fams.add("spool_items", "gauge", "Items waiting on disk (frames for inference, messages for MQTT).",
                 q.count, queue=queue)
        fams.add("spool_bytes", "gauge", "Bytes of the items waiting on disk.", q.bytes, queue=queue)
        fams.add("spool_oldest_age_seconds", "gauge", "Age of the oldest item waiting on disk (absent when empty).",
                 q.oldest_age_s, queue=queue)
    fams.add("spool_disk_bytes", "gauge", "Bytes the spool's files take on disk.", spool.disk_bytes)
    fams.add("spool_max_bytes", "gauge", "The spool's disk budget (spool.max_bytes).", spool.max_bytes)
    fams.add("spool_disk_full", "gauge", "1 while the disk refuses writes to the spool.", spool.disk_full)


_CAMERA_COUNTERS: tuple[tuple[str, str, Callable[[CameraStats], int]], ...] = (
    ("camera_frames_grabbed_total", "Frames grabbed from the camera (since its worker started).",
     lambda c: c.capture.grabbed),
    ("camera_frames_sampled_total", "Frames sampled for inference (since its worker started).",
     lambda c: c.capture.sampled),
    ("camera_reconnects_total", "Camera reopen attempts (since its worker started).", lambda c: c.capture.reconnects),
    ("frames_uploaded_total", "Frames sent to the inference API.", lambda c: c.uplink.uploaded),
    ("uploaded_bytes_total", "JPEG bytes sent to the inference API.", lambda c: c.uplink.bytes_uploaded),
    ("inference_results_total", "Inference results received.", lambda c: c.uplink.results),
    ("frames_spooled_total", "Frames written to the on-disk spool.", lambda c: c.uplink.spooled),
    ("frames_produced_total", "Frames sampled this run plus those recovered from the spool.",
     lambda c: c.account.produced),
    ("frames_delivered_total", "Results of frames acknowledged by the broker.", lambda c: c.account.delivered),
    ("frames_evicted_total", "Frames or messages evicted from the spool (age or size).", lambda c: c.account.evicted),
    ("frames_dead_lettered_total", "Frames given up after repeated failures.", lambda c: c.account.dead_lettered),
)
_CAMERA_REASONS: tuple[tuple[str, str, Callable[[CameraStats], Mapping[str, int]]], ...] = (
    ("inference_errors_total", "Inference errors by reason.", lambda c: c.errors),
    ("spool_evictions_total", "Spool evictions by reason.", lambda c: c.evicted_by_reason),
    ("dead_letters_total", "Frames given up, by reason.", lambda c: c.dead_lettered_by_reason),
    ("reply_clamps_total", "Reply values fixed or dropped by a ceiling, by reason.", lambda c: c.clamped_by_reason),
)


def _camera(fams: _Families, camera: str, cam: CameraStats) -> None:
    fams.add("camera_state", "gauge", "1 for the current state of the camera (streaming, reconnecting, ...).",
             1, camera=camera, state=cam.capture.state)
    fams.add("camera_fps", "gauge", "Frames per second grabbed from the camera.", cam.capture.fps, camera=camera)
    for name, help_text, figure in _CAMERA_COUNTERS:
        fams.add(name, "counter", help_text, figure(cam), camera=camera)
    fams.add("frames_pending", "gauge", "Frames or messages of the camera anywhere in the pipeline now.",
             cam.account.pending, camera=camera)
    for name, help_text, by_reason in _CAMERA_REASONS:
        for reason, count in sorted(by_reason(cam).items()):
            fams.add(name, "counter", help_text, count, camera=camera, reason=reason)
    fams.add("camera_detect_on", "gauge", "1 while the camera's detect switch is ON (mqtt.control).",
             cam.detect == "ON", camera=camera)
    fams.add("frames_skipped_paused_total", "counter", "Sampled ticks dropped while detect was OFF.",
             cam.capture.skipped_paused, camera=camera)
    fams.add("events_open", "gauge", "Events (tracked objects) open now.", cam.events.open if cam.events else None,
             camera=camera)
    for quantile, ms in (("0.5", cam.inference_ms_p50), ("0.95", cam.inference_ms_p95)):
        fams.add("inference_latency_seconds", "gauge", "Inference round trip, recent quantiles.",
                 None if ms is None else round(ms / 1000, 6), camera=camera, quantile=quantile)


def _format(family: _Family) -> str:
    lines = [f"# HELP {family.name} {_escape_help(family.help)}", f"# TYPE {family.name} {family.kind}"]
    lines += [f"{family.name}{_labels(labels)} {_number(value)}" for labels, value in family.samples]
    return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape_label(value)}"' for key, value in labels) + "}"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


class MetricsServer:
    """Serves ``GET /metrics`` with :func:`render` of ``get_snapshot()``; anything else is 404/405.

    ``port`` 0 picks a free port; :attr:`port` tells which once started.
    """

    def __init__(self, host: str, port: int, get_snapshot: Callable[[], DaemonSnapshot],
                 get_stuck: Callable[[], list[str]] = list):
        self.host = host
        self._requested_port = port
        self._get_snapshot = get_snapshot
        self._get_stuck = get_stuck
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the requested one until started)."""
        return self._httpd.server_address[1] if self._httpd else self._requested_port

    def start(self) -> MetricsServer:
        """Bind (OSError if the address is taken) and serve in a daemon thread."""
        handler = type("MetricsHandler", (_Handler,), {"get_snapshot": staticmethod(self._get_snapshot),
                                                       "get_stuck": staticmethod(self._get_stuck)})
        self._httpd = ThreadingHTTPServer((self.host, self._requested_port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics: serving http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and close the socket."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._httpd = None


class _Handler(BaseHTTPRequestHandler):
    get_snapshot: Callable[[], DaemonSnapshot]
    get_stuck: Callable[[], list[str]]
    timeout = 10  # seconds a client may take to send its request: a stuck scraper holds no thread long

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/healthz":
            self._healthz()
            return
        if self.path.split("?", 1)[0] != "/metrics":
            self._reply(404, b"not found: the metrics are at /metrics\n")
            return
        try:
            body = render(self.get_snapshot()).encode()
        except Exception:  # a bug in a figure must not kill the endpoint; the log keeps the trace
            log.exception("metrics: rendering the snapshot failed")
            self._reply(500, b"internal error\n")
            return
        self._reply(200, body, CONTENT_TYPE)

    def _healthz(self) -> None:
        """The daemon's own liveness, what the systemd watchdog is fed on (a container HEALTHCHECK):
        200 "ok", or 503 naming the parts whose loops stopped turning."""
        stuck = self.get_stuck()
        if stuck:
            self._reply(503, ("stuck: " + ", ".join(stuck) + "\n").encode())
        else:
            self._reply(200, b"ok\n")

    def _method_not_allowed(self) -> None:
        self.send_response(405)
        self.send_header("Allow", "GET")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _method_not_allowed

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Iterable) -> None:
        log.debug("metrics: %s %s", self.address_string(), format % args)
