"""Optional Prometheus endpoint: the daemon's stats message as text exposition format 0.0.4.

:func:`render` is pure: it maps the dict of :meth:`focoos_edge.service.daemon.Daemon.stats` to metric
families named ``focoos_edge_*`` (counters end in ``_total``; camera, reason, queue and state
are labels). :class:`MetricsServer` serves ``GET /metrics`` from a standard-library HTTP server in
a thread; it is meant for a loopback address (no authentication, no TLS).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


def render(stats: Mapping) -> str:
    """The stats message as Prometheus text format 0.0.4 (HELP and TYPE line for every family)."""
    fams = _Families()
    fams.add("info", "gauge", "Always 1; the device_id label names the box.", 1, device_id=str(stats["device_id"]))
    fams.add("uptime_seconds", "gauge", "Seconds since the daemon started.", stats["uptime_s"])
    fams.add("cpu_percent", "gauge", "Process CPU use in percent of one core since the previous stats reading.",
             stats["cpu_percent"])
    fams.add("resident_memory_bytes", "gauge", "Resident set size of the process.", stats["rss_bytes"])
    _inference(fams, stats["inference"])
    _mqtt(fams, stats["mqtt"])
    _spool(fams, stats["spool"])
    for camera, cam in sorted(stats["cameras"].items()):
        _camera(fams, camera, cam)
    for thread, count in sorted(stats.get("thread_restarts", {}).items()):
        fams.add("thread_restarts_total", "counter", "Loops restarted after an unexpected error, by thread.",
                 count, thread=str(thread))
    return "".join(_format(family) for family in fams)


def _inference(fams: _Families, inf: Mapping) -> None:
    fams.add("inference_state", "gauge", "1 for the current state of the inference endpoint (ok, auth_failed, ...).",
             1, state=str(inf["state"]))
    fams.add("live_queue_frames", "gauge", "Frames waiting in memory for an uplink slot.", inf["queue_depth"])
    fams.add("inference_in_flight", "gauge", "Inference requests in flight.", inf["in_flight"])


def _mqtt(fams: _Families, mqtt: Mapping) -> None:
    fams.add("mqtt_connected", "gauge", "1 while connected to the broker.", bool(mqtt["connected"]))
    for key, help_text in (("sent", "MQTT messages handed to the client library."),
                           ("acked", "MQTT messages acknowledged by the broker (QoS 1/2)."),
                           ("resent", "Outbox messages sent again after a reconnect."),
                           ("dropped", "MQTT messages dropped because the client queue was full.")):
        fams.add(f"mqtt_messages_{key}_total", "counter", help_text, mqtt[key])


def _spool(fams: _Families, spool: Mapping) -> None:
    for queue in ("frames", "outbox"):
        q = spool[queue]
        fams.add("spool_items", "gauge", "Items waiting on disk (frames for inference, messages for MQTT).",
                 q["count"], queue=queue)
        fams.add("spool_bytes", "gauge", "Bytes of the items waiting on disk.", q["bytes"], queue=queue)
        fams.add("spool_oldest_age_seconds", "gauge", "Age of the oldest item waiting on disk (absent when empty).",
                 q["oldest_age_s"], queue=queue)
    fams.add("spool_disk_bytes", "gauge", "Bytes the spool's files take on disk.", spool["disk_bytes"])
    fams.add("spool_max_bytes", "gauge", "The spool's disk budget (spool.max_bytes).", spool["max_bytes"])
    fams.add("spool_disk_full", "gauge", "1 while the disk refuses writes to the spool.", bool(spool["disk_full"]))


_CAMERA_COUNTERS = (
    ("grabbed", "camera_frames_grabbed_total", "Frames grabbed from the camera (since its worker started)."),
    ("sampled", "camera_frames_sampled_total", "Frames sampled for inference (since its worker started)."),
    ("reconnects", "camera_reconnects_total", "Camera reopen attempts (since its worker started)."),
    ("uploaded", "frames_uploaded_total", "Frames sent to the inference API."),
    ("bytes_uploaded", "uploaded_bytes_total", "JPEG bytes sent to the inference API."),
    ("results", "inference_results_total", "Inference results received."),
    ("spooled", "frames_spooled_total", "Frames written to the on-disk spool."),
    ("produced", "frames_produced_total", "Frames sampled this run plus those recovered from the spool."),
    ("delivered", "frames_delivered_total", "Results of frames acknowledged by the broker."),
    ("evicted", "frames_evicted_total", "Frames or messages evicted from the spool (age or size)."),
    ("dead_lettered", "frames_dead_lettered_total", "Frames given up after repeated failures."),
)
_CAMERA_REASONS = (
    ("errors", "inference_errors_total", "Inference errors by reason."),
    ("evicted_by_reason", "spool_evictions_total", "Spool evictions by reason."),
    ("dead_lettered_by_reason", "dead_letters_total", "Frames given up, by reason."),
    ("clamped_by_reason", "reply_clamps_total", "Reply values fixed or dropped by a ceiling, by reason."),
)


def _camera(fams: _Families, camera: str, cam: Mapping) -> None:
    fams.add("camera_state", "gauge", "1 for the current state of the camera (streaming, reconnecting, ...).",
             1, camera=camera, state=str(cam["state"]))
    fams.add("camera_fps", "gauge", "Frames per second grabbed from the camera.", cam["fps"], camera=camera)
    for key, name, help_text in _CAMERA_COUNTERS:
        fams.add(name, "counter", help_text, cam[key], camera=camera)
    fams.add("frames_pending", "gauge", "Frames or messages of the camera anywhere in the pipeline now.",
             cam["pending"], camera=camera)
    for key, name, help_text in _CAMERA_REASONS:
        for reason, count in sorted(cam.get(key, {}).items()):
            fams.add(name, "counter", help_text, count, camera=camera, reason=str(reason))
    if "detect" in cam:  # v1.1
        fams.add("camera_detect_on", "gauge", "1 while the camera's detect switch is ON (mqtt.control).",
                 cam["detect"] == "ON", camera=camera)
        fams.add("frames_skipped_paused_total", "counter", "Sampled ticks dropped while detect was OFF.",
                 cam.get("skipped_paused", 0), camera=camera)
    fams.add("events_open", "gauge", "Events (tracked objects) open now.", cam.get("events", {}).get("open"),
             camera=camera)
    for quantile, key in (("0.5", "p50"), ("0.95", "p95")):
        ms = cam["inference_ms"][key]
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
    """Serves ``GET /metrics`` with :func:`render` of ``get_stats()``; anything else is 404/405.

    ``port`` 0 picks a free port; :attr:`port` tells which once started.
    """

    def __init__(self, host: str, port: int, get_stats: Callable[[], Mapping],
                 get_stuck: Callable[[], list[str]] = list):
        self.host = host
        self._requested_port = port
        self._get_stats = get_stats
        self._get_stuck = get_stuck
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the requested one until started)."""
        return self._httpd.server_address[1] if self._httpd else self._requested_port

    def start(self) -> MetricsServer:
        """Bind (OSError if the address is taken) and serve in a daemon thread."""
        handler = type("MetricsHandler", (_Handler,), {"get_stats": staticmethod(self._get_stats),
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
    get_stats: Callable[[], Mapping]
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
            body = render(self.get_stats()).encode()
        except Exception:  # a bug in a figure must not kill the endpoint; the log keeps the trace
            log.exception("metrics: rendering the stats failed")
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
