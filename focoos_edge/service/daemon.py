"""Wiring and lifecycle of the daemon: cameras -> live queue -> uplink -> MQTT, plus stats."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from focoos_edge import __version__
from focoos_edge.capture import CameraWorker, CaptureSettings, ConversionBuffers, JpegEncoder, ModelImSize
from focoos_edge.common import Loop, ReloadAnswers
from focoos_edge.config import Config, ConfigError, class_warnings, label_references, load_config
from focoos_edge.delivery import (
    MqttSettings,
    Publisher,
    Spool,
    SpoolError,
    Topics,
    camera_state_payload,
    inference_state_payload,
)
from focoos_edge.inference import CameraRoute, FocoosClient, InferenceHealth, LiveQueue, ModelInfo, QuotaWatch, Uplink
from focoos_edge.results import Results
from focoos_edge.service import report
from focoos_edge.service.control import DetectControl
from focoos_edge.service.logs import set_level
from focoos_edge.service.metrics import MetricsServer
from focoos_edge.service.statedir import StateDirLock
from focoos_edge.service.stats import CpuMeter, DaemonSnapshot, Parts, assemble, frames_only, rss_bytes
from focoos_edge.service.systemd import Notifier
from focoos_edge.subscribers import SubscriberFeatures

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
        max_side=cam.fixed_max_side, jpeg_quality=cam.jpeg_quality, loop=cam.loop,
        open_timeout_s=cam.open_timeout_s, read_timeout_s=cam.read_timeout_s,
        decode=cam.decode, decode_threads=cam.decode_threads, usb_mjpeg=cam.usb_mjpeg,
        motion_threshold=cam.motion_threshold, motion_heartbeat_s=cam.motion_heartbeat_s,
        max_inferences_per_hour=cam.max_inferences_per_hour,
        privacy_masks=cam.privacy_masks, crop=cam.crop,
    )


def stalled(heartbeats: dict[str, tuple[float, float, bool]]) -> list[str]:
    """Names of the parts that are stuck: `heartbeats` maps a part to (seconds since its loop last
    turned, the most that is normal for it, whether its thread is alive)."""
    return [name for name, (age_s, limit_s, alive) in heartbeats.items() if not alive or age_s > limit_s]


class Daemon:
    """Runs the pipeline until `stop` is set; `reload` (SIGHUP) re-reads `config_path`."""

    def __init__(self, config: Config, stop: threading.Event, config_path: str | None = None,
                 reload: threading.Event | None = None, on_secrets=None):
        self.config = config
        self.stop = stop
        self.config_path = config_path
        self.reload_requested = reload or threading.Event()
        self._on_secrets = on_secrets or (lambda secrets: None)
        self.topics = Topics(config.mqtt.topic_prefix, config.device_id)
        self.started_mono = time.monotonic()
        self.loop_turned = self.started_mono  # the main loop's last turn (/healthz)
        self.state_lock = StateDirLock(config.state_dir)  # before the spool: one daemon per state_dir
        self.spool, self.recovered = self._open_spool(config)
        self.publisher = Publisher(mqtt_settings(config), self.topics, self.spool)
        self.features = SubscriberFeatures(config, self.topics, self.publisher)  # announces once connected
        self.control = DetectControl(config.state_dir, self.topics, self.publisher, config.mqtt.control)
        self.queue = LiveQueue(per_camera=1)
        self.health = InferenceHealth(self._on_inference_state)
        self.cameras = {cam.name: cam for cam in config.cameras}
        self.im_size = ModelImSize()  # learnt from the model info; sizes the uploads of max_side: auto
        self.config_warnings: list[str] = []  # labels naming classes the model lacks
        self._upload_sides: dict[str, int] = {}  # logged upload size per camera
        self.results = Results(config, self.topics, self.publisher, self.features)
        self.uplink = self._make_uplink(config, stop)
        self.workers: dict[str, CameraWorker] = {}
        self.conversion = ConversionBuffers()  # one full-size BGR buffer per frame shape, for every camera
        self.metrics: MetricsServer | None = None
        self.reloads = 0
        self.reload_answers = ReloadAnswers()  # `focoos-edge reload` (ExecReload) waits on these
        self.retired_sampled: Counter = Counter()  # frames sampled by workers stopped on reload
        self.cpu = CpuMeter()
        self.notifier = Notifier()
        self.final_summary = ""
        self._stalled_reported: list[str] = []
        self._next_stats = 0.0
        self.main_loop = Loop("main", self.tick, stop)

    @staticmethod
    def _open_spool(config: Config) -> tuple[Spool, Counter]:
        """The spool, and what it held at start (frames and messages of the last run belong to this
        run's accounting)."""
        sp = config.spool
        spool = Spool(config.state_dir / "spool.db", int(sp.max_bytes), sp.max_age_s,
                      int(sp.outbox_max_bytes) if sp.outbox_max_bytes else None)
        recovered = Counter({cam: n["frames"] + n["outbox"] for cam, n in frames_only(spool.pending()).items()})
        if recovered:
            log.info("spool: recovered %d frames/messages from the last run (%s)",
                     sum(recovered.values()), dict(recovered))
        return spool, recovered

    def _make_uplink(self, config: Config, stop: threading.Event) -> Uplink:
        """The inference stage, wired to the live queue, the spool and the results stage."""
        inf = config.inference
        return Uplink(self._make_client(config), inf.model_ref, self._routes(config), self.queue,
                      self.spool, self.results.handle, self.health, stop,
                      default_route=CameraRoute(threshold=inf.threshold), max_in_flight=inf.max_in_flight,
                      probe_interval_s=inf.recheck_interval_s, retry_after_max_s=inf.retry_after_max_s,
                      on_model=self._on_model, on_queued=self.results.expect, on_spilled=self.results.forget,
                      quota=QuotaWatch(lambda: self.uplink.client.account_quota(), inf.quota_check_interval_s))

    @staticmethod
    def _make_client(config: Config) -> FocoosClient:
        inf = config.inference
        return FocoosClient(inf.api_url, inf.api_key_value, timeout_s=inf.timeout_s, pool_size=inf.max_in_flight)

    @staticmethod
    def _routes(config: Config) -> dict[str, CameraRoute]:
        return {c.name: CameraRoute(threshold=config.request_threshold(c)) for c in config.cameras}

    # -- lifecycle --------------------------------------------------------------
    def run(self) -> None:
        """Start everything, publish stats until stop is set, then shut down in order."""
        JpegEncoder()  # fail fast with the install hint, before any thread starts
        log.info("focoos-edge %s starting: device %s, %d camera(s), model %s at %s", __version__,
                 self.config.device_id, len(self.cameras), self.config.inference.model_ref,
                 self.config.inference.api_url)
        self.publisher.start(self.stop)
        self.metrics = self._start_metrics()
        self.uplink.start()
        self.control.configure(self.cameras)
        for cam in self.config.cameras:
            self._start_camera(cam)
        self.notifier.ready(self.status_line())
        self._loop()
        self.shutdown()

    def _loop(self) -> None:
        """The main thread's supervised loop (see `tick`)."""
        self._next_stats = time.monotonic() + self.config.stats_interval_s
        self.main_loop.run()

    def tick(self) -> float:
        """Stats every `stats_interval_s`, watchdog pings, reload requests; wakes every second."""
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self.reload_answers.answer(self.reload())
        # After a reload (it may join camera threads for seconds), so it never counts as a stall.
        self.loop_turned = time.monotonic()
        if self.notifier.watchdog_interval_s:
            self._feed_watchdog()
        self.features.tick()
        self.results.tick()
        if time.monotonic() >= self._next_stats:
            self._next_stats = time.monotonic() + self.config.stats_interval_s
            self._expire()
            snapshot = self.snapshot()
            self.publisher.publish(self.topics.stats, report.stats_message(snapshot), qos=0)
            self.notifier.status(report.status_line(snapshot))
        # Ping at a quarter of WatchdogSec: one late tick on a loaded box must not cost a restart.
        return min(1.0, (self.notifier.watchdog_interval_s or 2.0) / 2)

    def shutdown(self) -> None:
        """Fixed order: cameras (no new frames) -> uplink (in-flight requests finish) -> frames still
        queued go to the spool -> outbox flushed while connected -> `offline` -> spool closed."""
        log.info("stopping")
        self.notifier.stopping()
        if self.metrics is not None:
            self.metrics.stop()
        self._stop_cameras(list(self.workers), keep=True)  # kept: the final stats describe them
        self.uplink.join(timeout_s=self.config.inference.timeout_s + 1.0)
        self.uplink.spill()
        self.results.close()  # held results out, open events ended (through the outbox)
        self.publisher.flush()
        self.publisher.publish(self.topics.stats, self.stats(), qos=0)
        self.publisher.stop()
        self.uplink.client.close()
        self.final_summary = self.summary()
        log.info("stopped: %s", self.final_summary)
        self.spool.close()
        self.state_lock.release()

    def _start_camera(self, cam) -> None:
        worker = CameraWorker(capture_settings(cam), self.uplink.submit, self._on_camera_state, threading.Event(),
                              im_size=self.im_size, paused=self.control.paused(cam.name), buffers=self.conversion)
        self.workers[cam.name] = worker
        self._on_camera_state(cam.name, worker.state, None)
        worker.start()

    def _stop_cameras(self, names: list[str], keep: bool = False) -> None:
        """Signal every camera first, then join them against one deadline (not one each).
        `keep`: leave them in `workers` (shutdown) instead of retiring them (reload)."""
        workers = [self.workers[name] if keep else self.workers.pop(name) for name in names]
        for worker in workers:
            worker.stop_event.set()
        limit_s = max([max(w.settings.read_timeout_s, w.settings.open_timeout_s) for w in workers] or [0.0])
        deadline = time.monotonic() + limit_s + 2.0
        for worker in workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
            if not keep:
                self.retired_sampled[worker.settings.name] += worker.snapshot().sampled

    def _start_metrics(self) -> MetricsServer | None:
        m = self.config.metrics
        if not m.enabled:
            return None
        meter = CpuMeter()  # its own: scrapes must not shorten the stats topic's CPU window
        try:
            server = MetricsServer(m.host, m.port, lambda: self.snapshot(cpu=meter),
                                   lambda: stalled(self.heartbeats())).start()
        except OSError as exc:
            log.error("metrics: cannot listen on %s:%d: %s; continuing without", m.host, m.port, exc)
            return None
        log.info("metrics: http://%s:%d/metrics", m.host, server.port)
        return server

    # -- reload (SIGHUP) ------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the config: cameras added, removed or changed without touching the others; new
        inference settings take effect (and lift an auth pause). An invalid file keeps the old config."""
        if not self.config_path:
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload: %s is invalid, keeping the running config:\n  %s", self.config_path,
                      "\n  ".join(exc.errors))
            return False
        self._on_secrets(new.secrets())
        set_level(new.log_level)
        old = self.config
        for part in ("device_id", "state_dir", "mqtt", "spool", "metrics"):
            if getattr(new, part) != getattr(old, part):
                log.warning("reload: changes to %s take effect at the next restart", part)
        new_cams = {c.name: c for c in new.cameras}
        self._retire_changed_cameras(old, new_cams)
        self.cameras = new_cams
        self.uplink.routes = self._routes(new)
        if new.inference != old.inference:
            self._apply_inference(new)
        self.config = new.model_copy(update={"device_id": old.device_id, "state_dir": old.state_dir,
                                             "mqtt": old.mqtt, "spool": old.spool, "metrics": old.metrics})
        for name, cam in new_cams.items():
            if name not in self.workers:
                self._start_camera(cam)
        self.features.configure(self.config)
        self.results.configure(self.config)
        self.control.configure(new_cams)
        if self.uplink.model_info is not None:  # labels may have changed: check them again
            self._on_model(self.uplink.model_info)
        self.reloads += 1
        log.info("reload %d applied: %d camera(s): %s", self.reloads, len(new_cams), ", ".join(new_cams))
        return True

    def _retire_changed_cameras(self, old: Config, new_cams: dict) -> None:
        """Stop the cameras a reload removes or whose capture settings it changes (thresholds,
        labels, snapshots and counts apply to the next result: no restart for those)."""
        old_cams = {c.name: c for c in old.cameras}
        changed = [n for n in old_cams
                   if n not in new_cams or capture_settings(old_cams[n]) != capture_settings(new_cams[n])]
        self._stop_cameras(changed)
        for name in changed:
            if name not in new_cams:
                self._on_camera_state(name, "offline", "removed from the config")

    def _apply_inference(self, new: Config) -> None:
        old_client = self.uplink.client
        self.uplink.client = self._make_client(new)
        self.uplink.model_ref = new.inference.model_ref
        self.uplink.default_route = CameraRoute(threshold=new.inference.threshold)
        self.uplink.probe_interval_s = new.inference.recheck_interval_s
        self.uplink.retry_after_max_s = new.inference.retry_after_max_s
        self.uplink.recheck_model()
        old_client.close()

    # -- watchdog ---------------------------------------------------------------------
    def heartbeats(self) -> dict[str, tuple[float, float, bool]]:
        """(age, limit, alive) of every loop the watchdog watches."""
        now = time.monotonic()
        beats = {}
        for name, w in self.workers.items():
            s = w.settings
            limit = s.reconnect_max_s + s.open_timeout_s + s.read_timeout_s + 10.0
            beats[f"camera {name}"] = (now - w.last_progress, limit, w.is_alive())
        inf = self.config.inference
        beats["uplink"] = (now - self.uplink.last_progress, inf.timeout_s * 3 + 15.0, self.uplink.alive())
        beats["mqtt outbox"] = (now - self.publisher.last_progress, 15.0, self.publisher.alive())
        # This loop feeds the watchdog itself; /healthz (another thread) needs to see it turn too.
        beats["main loop"] = (now - self.loop_turned, 15.0, True)
        return beats

    def _feed_watchdog(self) -> None:
        stuck = stalled(self.heartbeats())
        if not stuck:
            self.notifier.watchdog()
        elif stuck != self._stalled_reported:
            log.error("watchdog: %s stuck; not telling systemd we are alive", ", ".join(stuck))
        self._stalled_reported = stuck

    def _expire(self) -> None:
        try:
            if n := self.spool.expire():
                log.warning("spool: %d items older than max_age_s evicted", n)
        except SpoolError as exc:
            log.error("spool: %s", exc)

    # -- callbacks ------------------------------------------------------------------
    def _on_camera_state(self, camera: str, state: str, detail: str | None) -> None:
        worker = self.workers.get(camera)
        fps = worker.fps() if worker else 0.0
        self.publisher.set_state(self.topics.camera_state(camera),
                                 camera_state_payload(state, time.time(), fps, detail))

    def _on_inference_state(self, state: str, detail: str | None) -> None:
        self.publisher.set_state(self.topics.inference, inference_state_payload(
            state, time.time(), self.config.inference.model_ref, detail, self.config_warnings))

    def _on_model(self, info: ModelInfo) -> None:
        """The model info arrived (at start, and after every re-check): size the uploads, check the
        config's labels against the model's classes."""
        self.im_size.set(info.im_size)
        warnings = class_warnings(label_references(self.config), info.classes, info.ref)
        if warnings != self.config_warnings:
            for line in warnings:
                log.warning("config: %s", line)
            self.config_warnings = warnings
        for cam in self.config.cameras:
            side = cam.fixed_max_side or self.im_size.side
            if self._upload_sides.get(cam.name) != side:  # once, not at every re-check of the model
                self._upload_sides[cam.name] = side
                log.info("camera %s: uploads %d px on the long side (%s)", cam.name, side,
                         "max_side" if cam.fixed_max_side else f"auto: the model's im_size {info.im_size}"
                         if info.im_size else "auto: the model gives no im_size, the default")

    # -- stats: each stage's snapshot, assembled once (service/stats.py), read by report.py -------
    def snapshot(self, cpu: CpuMeter | None = None) -> DaemonSnapshot:
        """Every figure the daemon reports (CPU since `cpu`'s last reading, default the daemon's own
        meter). The stages are read downstream from the cameras, as a frame travels."""
        return assemble(Parts(
            device_id=self.config.device_id, at_s=time.time(), uptime_s=time.monotonic() - self.started_mono,
            cpu_percent=(cpu or self.cpu).percent(), rss_bytes=rss_bytes(),
            workers={name: w.snapshot() for name, w in list(self.workers.items())},  # a reload may change them
            uplink=self.uplink.snapshot(), results=self.results.snapshot(), spool=self.spool.snapshot(),
            publisher=self.publisher.snapshot(), control=self.control.snapshot(), features=self.features.snapshot(),
            retired_sampled=Counter(self.retired_sampled), recovered=Counter(self.recovered),
            main_restarts={self.main_loop.name: self.main_loop.restarts}))

    def stats(self, cpu: CpuMeter | None = None) -> dict:
        """The stats message (docs/mqtt.md)."""
        return report.stats_message(self.snapshot(cpu))

    # These two show no CPU figure: a meter of their own keeps the stats topic's window whole.
    def status_line(self) -> str:
        """One short line for `systemctl status`."""
        return report.status_line(self.snapshot(CpuMeter()))

    def summary(self) -> str:
        """One line for people, per camera: the accounting identity's terms."""
        return report.summary(self.snapshot(CpuMeter()))
