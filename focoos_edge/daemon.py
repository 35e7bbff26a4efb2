"""Wiring and lifecycle of the daemon: cameras -> live queue -> uplink -> MQTT, plus stats."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter

from focoos_edge import __version__
from focoos_edge.capture import CameraWorker, CaptureSettings
from focoos_edge.config import Config
from focoos_edge.encode import FrameJob, JpegEncoder
from focoos_edge.focoos import FocoosClient, InferenceResult, scale_detections
from focoos_edge.messages import (
    Topics,
    camera_state_payload,
    detection_dict,
    detections_payload,
    filter_labels,
    inference_state_payload,
    iso_utc,
)
from focoos_edge.publish import MqttSettings, Publisher
from focoos_edge.spool import Spool, SpoolError
from focoos_edge.systemd import Notifier
from focoos_edge.uplink import CameraRoute, Delivery, InferenceHealth, LiveQueue, Uplink

log = logging.getLogger(__name__)


def mqtt_settings(config: Config) -> MqttSettings:
    """Publisher settings from the `mqtt:` section."""
    m = config.mqtt
    tls = m.tls
    return MqttSettings(
        host=m.host, port=m.port, client_id=m.client_id or f"focoos-edge-{config.device_id}",
        username=m.username, password=m.password_value,
        tls=tls is not None,
        ca_file=str(tls.ca_file) if tls and tls.ca_file else None,
        cert_file=str(tls.cert_file) if tls and tls.cert_file else None,
        key_file=str(tls.key_file) if tls and tls.key_file else None,
        keepalive_s=m.keepalive_s, qos=m.qos,
    )


def capture_settings(cam) -> CaptureSettings:
    """Capture settings of one `cameras[]` entry."""
    return CaptureSettings(
        name=cam.name, source=cam.parsed_source, sample_fps=cam.sample_fps,
        max_side=cam.max_side, jpeg_quality=cam.jpeg_quality, loop=cam.loop,
        open_timeout_s=cam.open_timeout_s, read_timeout_s=cam.read_timeout_s,
    )


def _percentile(values, q: float) -> float | None:
    data = sorted(values)
    if not data:
        return None
    return round(data[min(len(data) - 1, int(q * len(data)))], 1)


def rss_bytes() -> int:
    """Resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Daemon:
    """Runs the pipeline until `stop` is set."""

    def __init__(self, config: Config, stop: threading.Event):
        self.config = config
        self.stop = stop
        self.topics = Topics(config.mqtt.topic_prefix, config.device_id)
        self.started_mono = time.monotonic()
        sp = config.spool
        self.spool = Spool(config.state_dir / "spool.db", int(sp.max_bytes), sp.max_age_s,
                           int(sp.outbox_max_bytes) if sp.outbox_max_bytes else None)
        # Frames and messages found in the spool at start belong to this run's accounting.
        self.recovered = Counter({cam: n["frames"] + n["outbox"] for cam, n in self.spool.pending().items()})
        if self.recovered:
            log.info("spool: recovered %d frames/messages from the last run (%s)",
                     sum(self.recovered.values()), dict(self.recovered))
        self.publisher = Publisher(mqtt_settings(config), self.topics, self.spool)
        inf = config.inference
        self.client = FocoosClient(inf.api_url, inf.api_key_value, timeout_s=inf.timeout_s,
                                   pool_size=inf.max_in_flight)
        self.queue = LiveQueue(per_camera=1)
        self.health = InferenceHealth(self._on_inference_state)
        self.cameras = {cam.name: cam for cam in config.cameras}
        routes = {c.name: CameraRoute(threshold=config.threshold_for(c)) for c in config.cameras}
        self.uplink = Uplink(self.client, inf.model_ref, routes, self.queue, self.spool, self._on_result,
                             self.health, stop, default_route=CameraRoute(threshold=inf.threshold),
                             max_in_flight=inf.max_in_flight)
        self.workers = [CameraWorker(capture_settings(c), self._on_job, self._on_camera_state, stop)
                        for c in config.cameras]
        self._cpu_mark = (time.monotonic(), sum(os.times()[:2]))
        self.notifier = Notifier()
        self.final_summary = ""

    # -- lifecycle --------------------------------------------------------------
    def run(self) -> None:
        """Start everything, publish stats until stop is set, then shut down in order."""
        JpegEncoder()  # fail fast with the install hint, before any thread starts
        log.info("focoos-edge %s starting: device %s, %d camera(s), model %s at %s", __version__,
                 self.config.device_id, len(self.workers), self.config.inference.model_ref,
                 self.config.inference.api_url)
        self.publisher.start(self.stop)
        self.uplink.start()
        for w in self.workers:
            self._on_camera_state(w.settings.name, w.state, None)
            w.start()
        self.notifier.ready(self.status_line())
        interval_s = self.config.stats_interval_s
        while not self.stop.wait(interval_s):
            self._expire()
            self.publisher.publish(self.topics.stats, self.stats(), qos=0)
            self.notifier.status(self.status_line())
        self.shutdown()

    def shutdown(self) -> None:
        """Fixed order: cameras (no new frames) -> uplink (in-flight requests finish) -> frames still
        queued go to the spool -> outbox flushed while connected -> `offline` -> spool closed."""
        log.info("stopping")
        self.notifier.stopping()
        for w in self.workers:
            w.join(timeout=max(w.settings.read_timeout_s, 1.0) + 1.0)
        self.uplink.join(timeout_s=self.config.inference.timeout_s + 1.0)
        while (job := self.queue.get(0)) is not None:
            self._to_spool(job)
        self.publisher.publish(self.topics.stats, self.stats(), qos=0)
        self.publisher.stop()
        self.client.close()
        self.final_summary = self.summary()
        log.info("stopped: %s", self.final_summary)
        self.spool.close()

    def _expire(self) -> None:
        try:
            if n := self.spool.expire():
                log.warning("spool: %d items older than max_age_s evicted", n)
        except SpoolError as exc:
            log.error("spool: %s", exc)

    def _to_spool(self, job: FrameJob) -> None:
        try:
            self.spool.put_frame(job)
            self.uplink.counters[job.camera].spooled += 1
        except SpoolError as exc:
            self.uplink.counters[job.camera].dead_lettered["spool_error"] += 1
            log.error("camera %s: frame %s lost: %s", job.camera, job.frame_id, exc)

    # -- callbacks ------------------------------------------------------------------
    def _on_job(self, job: FrameJob) -> None:
        older = self.queue.put(job)
        if older is not None:  # the uplink is busy: the older frame waits in the spool
            self._to_spool(older)

    def _on_camera_state(self, camera: str, state: str, detail: str | None) -> None:
        worker = next((w for w in self.workers if w.settings.name == camera), None)
        fps = worker.fps() if worker else 0.0
        self.publisher.set_state(self.topics.camera_state(camera),
                                 camera_state_payload(state, time.time(), fps, detail))

    def _on_inference_state(self, state: str, detail: str | None) -> None:
        self.publisher.set_state(self.topics.inference, inference_state_payload(
            state, time.time(), self.config.inference.model_ref, detail))

    def _on_result(self, job: FrameJob, result: InferenceResult, delivery: Delivery) -> None:
        cam = self.cameras.get(job.camera)  # None: spooled by a camera since removed from the config
        scaled = scale_detections(result.detections, job.scale, job.width, job.height)
        dets = filter_labels(
            (detection_dict(d.label, d.cls_id, d.conf, d.bbox) for d in scaled),
            cam.labels if cam else None,
            self.config.threshold_for(cam) if cam else self.config.inference.threshold)
        now_ns = time.time_ns()
        inference_ms = result.round_trip_s * 1000
        total_ms = (now_ns - job.captured_at_ns) / 1e6
        queue_ms = 0.0 if delivery.replayed else \
            max(0.0, total_ms - inference_ms - (job.encoded_mono - job.captured_mono) * 1000)
        payload = detections_payload(
            device_id=self.config.device_id, camera=job.camera, frame_id=job.frame_id,
            captured_at_ns=job.captured_at_ns, published_at_ns=now_ns, replayed=delivery.replayed,
            model_ref=self.config.inference.model_ref, width=job.width, height=job.height,
            detections=dets, inference_ms=inference_ms, total_ms=total_ms, queue_ms=queue_ms,
        )
        try:
            self.publisher.publish_durable(job.camera, self.topics.detections(job.camera), payload,
                                           done_frame=delivery.frame_row)
        except SpoolError as exc:
            log.error("camera %s: result of frame %s not stored: %s", job.camera, job.frame_id, exc)
            if delivery.frame_row is not None:
                self.spool.release_frame(delivery.frame_row, attempted=False)  # retried later
            else:
                self.uplink.counters[job.camera].dead_lettered["spool_error"] += 1

    # -- stats ------------------------------------------------------------------------
    def _cpu_percent(self) -> float:
        now, cpu = time.monotonic(), sum(os.times()[:2])
        then, cpu_then = self._cpu_mark
        self._cpu_mark = (now, cpu)
        return round(100.0 * (cpu - cpu_then) / max(now - then, 1e-6), 1)

    def accounting(self) -> dict[str, dict[str, int]]:
        """Per camera: produced = delivered + pending + evicted + dead_lettered (exact when idle)."""
        spooled = self.spool.pending()
        evicted: Counter = Counter()
        for (camera, reason), n in self.spool.evicted.items():
            if not reason.startswith("dead_letter"):  # dead letters are counted by the uplink
                evicted[camera] += n
        sampled = {w.settings.name: w.counters.sampled for w in self.workers}
        out = {}
        for camera in sorted(set(sampled) | set(self.recovered) | set(spooled)):
            waiting = spooled.get(camera, {"frames": 0, "outbox": 0})
            out[camera] = {
                "produced": sampled.get(camera, 0) + self.recovered[camera],
                "delivered": self.publisher.delivered[camera],
                "pending": (self.queue.count(camera) + self.uplink.in_flight[camera]
                            + waiting["frames"] + waiting["outbox"]),
                "evicted": evicted[camera],
                "dead_lettered": sum(self.uplink.counters[camera].dead_lettered.values()),
            }
        return out

    def stats(self) -> dict:
        """The stats message: per camera and process-wide figures."""
        accounts = self.accounting()
        evictions: dict[str, dict[str, int]] = {}
        for (camera, reason), n in self.spool.evicted.items():
            evictions.setdefault(camera, {})[reason] = n
        cams = {}
        for camera, account in accounts.items():
            w = next((w for w in self.workers if w.settings.name == camera), None)
            up = self.uplink.counters[camera]
            cams[camera] = {
                "state": w.state if w else "removed", "fps": round(w.fps(), 2) if w else 0.0,
                "grabbed": w.counters.grabbed if w else 0, "sampled": w.counters.sampled if w else 0,
                "reconnects": w.counters.reconnects if w else 0,
                "uploaded": up.uploaded, "bytes_uploaded": up.bytes_uploaded, "results": up.results,
                "spooled": up.spooled, "errors": dict(up.errors), "evicted_by_reason": evictions.get(camera, {}),
                "dead_lettered_by_reason": dict(up.dead_lettered),
                "inference_ms": {"p50": _percentile(up.round_trips_ms, 0.5),
                                 "p95": _percentile(up.round_trips_ms, 0.95)},
                **account,
            }
        pc = self.publisher.counters
        return {
            "v": 1, "device_id": self.config.device_id, "at": iso_utc(time.time()),
            "uptime_s": round(time.monotonic() - self.started_mono, 1),
            "cpu_percent": self._cpu_percent(), "rss_bytes": rss_bytes(),
            "inference": {"state": self.health.state, "queue_depth": len(self.queue),
                          "in_flight": self.uplink.busy},
            "mqtt": {"connected": self.publisher.connected.is_set(), "sent": pc.sent, "acked": pc.acked,
                     "resent": pc.resent, "dropped": pc.dropped_queue_full},
            "spool": self.spool.stats(),
            "cameras": cams,
        }

    def status_line(self) -> str:
        """One short line for `systemctl status`."""
        streaming = sum(w.state == "streaming" for w in self.workers)
        delivered = sum(self.publisher.delivered.values())
        return (f"{streaming}/{len(self.workers)} cameras streaming, inference {self.health.state}, "
                f"{delivered} results delivered, backlog {len(self.queue)} live + "
                f"{self.spool.stats()['frames']['count']} spooled, mqtt "
                f"{'connected' if self.publisher.connected.is_set() else 'disconnected'}")

    def summary(self) -> str:
        """One line for people, per camera: the accounting identity's terms."""
        return "; ".join(
            f"{cam}: produced {a['produced']}, delivered {a['delivered']}, pending {a['pending']}, "
            f"evicted {a['evicted']}, dead-lettered {a['dead_lettered']}"
            for cam, a in self.accounting().items()) or "no cameras"
