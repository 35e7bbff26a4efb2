"""`focoos-edge demo`: the whole pipeline on one machine, with no camera and no cloud account.

A generated clip of moving ArUco markers plays as a camera; the local Focoos-compatible server
detects the markers on the CPU; a Mosquitto broker is started on a free port (unless one is given);
the daemon runs as in production; a live view subscribes over MQTT and prints what arrives.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime

import cv2
import numpy as np

from focoos_edge.config import load_config
from focoos_edge.delivery import subscribe
from focoos_edge.service import Daemon, mqtt_settings
from focoos_edge.tools.aruco import draw_markers
from focoos_edge.tools.localserver import LocalServer

DEMO_KEY = "demo-local-key"
CLIP_SIZE = (1280, 720)
CLIP_FPS = 25
CLIP_SECONDS = 12
MARKER_PX = 120


class DemoError(RuntimeError):
    """A demo prerequisite is missing (the message says how to get it)."""


# The "door" zone of the demo camera (normalized), and the walk of marker 7 across it: hidden for a
# second, then left to right at 130 px/s (in the zone from about 3.7 s to 6.1 s), hidden again from
# 9 s so its event ends. Marker 1 sways slowly, marker 23 stands still (it turns `stationary`).
DOOR_ZONE = [[0.35, 0.6], [0.6, 0.6], [0.6, 1.0], [0.35, 1.0]]
WALK = (1.0, 9.0)  # seconds of the clip during which marker 7 is visible


def marker_positions(t_s: float, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Markers at clip time `t_s` (the clip loops every CLIP_SECONDS without a jump)."""
    s = MARKER_PX
    phase = 2 * math.pi * t_s / CLIP_SECONDS
    out = [(1, int(width * 0.25 + 200 * math.sin(phase)), 100, s), (23, width - s - 140, 200, s)]
    if WALK[0] <= t_s < WALK[1]:
        x = 40 + (width - s - 120) * (t_s - WALK[0]) / (WALK[1] - WALK[0])
        out.append((7, int(x), height - s - 60, s))
    return out


def make_clip(path: str) -> str:
    """Write the demo clip (MPEG-4, through OpenCV's own FFmpeg: no ffmpeg binary needed)."""
    width, height = CLIP_SIZE
    writer = cv2.VideoWriter(path, cv2.VideoWriter.fourcc(*"mp4v"), CLIP_FPS, (width, height))
    if not writer.isOpened():
        raise DemoError(f"OpenCV cannot write {path}")
    background = np.full((height, width, 3), (90, 110, 80), np.uint8)
    cv2.putText(background, "focoos-edge demo camera", (30, height - 30), cv2.FONT_HERSHEY_SIMPLEX, 1.0,
                (255, 255, 255), 2)
    try:
        for i in range(CLIP_FPS * CLIP_SECONDS):
            frame = background.copy()
            writer.write(draw_markers(frame, marker_positions(i / CLIP_FPS, width, height)))
    finally:
        writer.release()
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A throw-away Mosquitto on 127.0.0.1:port."""

    def __init__(self, workdir: str):
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if exe is None:
            raise DemoError("mosquitto not found: install it (apt-get install mosquitto) or pass --mqtt-port")
        self.port = free_port()
        conf = os.path.join(workdir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        self._log = open(os.path.join(workdir, "mosquitto.log"), "wb")
        self.proc = subprocess.Popen([exe, "-c", conf], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                break
            threading.Event().wait(0.05)
        self.stop()
        raise DemoError(f"mosquitto did not start on port {self.port} (see {workdir}/mosquitto.log)")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def write_config(workdir: str, clip: str, api_url: str, mqtt_port: int) -> str:
    path = os.path.join(workdir, "demo.yaml")
    with open(path, "w") as f:
        f.write(f"""# written by `focoos-edge demo`
device_id: demo-box
state_dir: state
log_level: warning
stats_interval_s: 5
inference:
  api_url: {api_url}
  api_key: {DEMO_KEY}
  model_ref: local-aruco-seg          # the local segmentation model: masks and keypoints too
  threshold: 0.5
mqtt:
  host: 127.0.0.1
  port: {mqtt_port}
  topic_prefix: focoos
events:
  min_frames: 2
  end_after_s: 2
  stationary_after_s: 4
cameras:
  - name: demo_cam
    source: file://{clip}
    sample_fps: 4
    max_side: auto                      # the model's im_size
    jpeg_quality: 80
    privacy_masks:                      # the caption is blacked out before anything leaves the camera
      - [[0.0, 0.86], [0.5, 0.86], [0.5, 1.0], [0.0, 1.0]]
    snapshot:
      min_interval_s: 5
    zones:
      door: {{polygon: {DOOR_ZONE}}}
""")
    return path


class LiveView:
    """Prints each detections message as it arrives over MQTT, and a summary; saves the latest
    annotated snapshot as `snapshot_path`."""

    def __init__(self, print_fn: Callable[[str], None], snapshot_path: str | None = None):
        self.print = print_fn
        self.snapshot_path = snapshot_path
        self.snapshots = 0
        self.messages = 0
        self.labels: Counter = Counter()
        self.latencies_ms: list[float] = []
        self.started = time.monotonic()
        self.events = 0
        self._zones: dict[str, dict[str, str]] = {}  # open event -> zone -> when it entered
        self._still: set[str] = set()  # open events last reported stationary
        self._lock = threading.Lock()

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        text = payload.decode(errors="replace")
        if topic.endswith("/detections"):
            msg = json.loads(text)
            boxes = ", ".join(f"{d['label']} {d['conf']:.2f} {d['bbox']}" for d in msg["detections"])
            with self._lock:
                self.messages += 1
                self.labels.update(d["label"] for d in msg["detections"])
                self.latencies_ms.append(msg["latency_ms"]["total"])
            self.print(f"{msg['captured_at'][11:23]} {msg['camera']}: {len(msg['detections'])} detections "
                       f"in {msg['latency_ms']['total']:.0f} ms  [{boxes}]")
        elif topic.endswith("/events"):
            self.on_event(json.loads(text))
        elif topic.endswith("/snapshot") and not topic.endswith("/events/snapshot") and self.snapshot_path \
                and payload:  # the frame's snapshot, not an event's (one object only)
            with open(self.snapshot_path, "wb") as f:
                f.write(payload)
            if not self.snapshots:
                self.print(f"{topic}: annotated snapshot saved as {self.snapshot_path}")
            self.snapshots += 1
        elif topic.endswith("/state") or topic.endswith("/availability") or topic.endswith("/inference"):
            self.print(f"{topic}: {text}")

    def on_event(self, event: dict) -> None:
        """Print an event as a sentence: appeared / entered zone / left zone after / stationary / left after."""
        was_still = event["event_id"] in self._still
        for line in event_lines(event, self._zones.get(event["event_id"], {}), was_still):
            self.print(f"{event['last_seen_at'][11:23]} {line}")
        with self._lock:
            self.events += 1
            self._still.discard(event["event_id"])
            if event["stationary"] and event["type"] != "end":
                self._still.add(event["event_id"])
            if event["type"] == "end":
                self._zones.pop(event["event_id"], None)
            else:
                since = self._zones.setdefault(event["event_id"], {})
                for zone in [z for z in since if z not in event["zones"]]:
                    del since[zone]
                for zone in event["zones"]:
                    since.setdefault(zone, event["last_seen_at"])

    def summary(self) -> str:
        with self._lock:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            lat = sorted(self.latencies_ms)
            p50 = lat[len(lat) // 2] if lat else 0.0
            labels = ", ".join(f"{k} x{v}" for k, v in self.labels.most_common()) or "none"
            return (f"demo: {self.messages} detection messages in {elapsed:.0f} s "
                    f"({self.messages / elapsed:.1f}/s), {self.events} events, median capture-to-publish "
                    f"{p50:.0f} ms, labels seen: {labels}")


def _seconds(start: str, end: str) -> float:
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    return (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds()


def event_lines(event: dict, zones_since: dict[str, str], was_stationary: bool = False) -> list[str]:
    """What an event says, for people; `zones_since`: the event's zones so far and when it entered
    each; `was_stationary`: as last reported."""
    who, kind = event["label"], event["type"]
    lines = [f"{who} appeared (event {event['event_id']})"] if kind == "new" else []
    lines += [f"{who} entered zone {z}" for z in event["zones"] if z not in zones_since]
    gone = [z for z in zones_since if z not in event["zones"] or kind == "end"]
    lines += [f"{who} left zone {z} after {_seconds(zones_since[z], event['last_seen_at']):.1f} s" for z in gone]
    if kind != "end" and event["stationary"] != was_stationary:
        lines.append(f"{who} is stationary" if event["stationary"] else f"{who} is moving again")
    if kind == "end":
        lines.append(f"{who} left after {_seconds(event['start_at'], event['last_seen_at']):.1f} s "
                     f"(event {event['event_id']}, zones {', '.join(event['entered_zones']) or 'none'})")
    return lines


def run_demo(args, stop: threading.Event, print_fn: Callable[[str], None] = print) -> int:
    """Run the demo until `stop` is set or `args.seconds` have passed; 0 when detections arrived."""
    workdir = args.workdir or tempfile.mkdtemp(prefix="focoos-edge-demo-")
    os.makedirs(workdir, exist_ok=True)
    print_fn(f"demo: working in {workdir}")
    clip = os.path.join(workdir, "demo.mp4")
    if not os.path.exists(clip):
        make_clip(clip)
    server = LocalServer(port=0, api_key=DEMO_KEY)
    server.start()
    broker = None
    try:
        mqtt_port = args.mqtt_port
        if not mqtt_port:
            broker = Broker(workdir)
            mqtt_port = broker.port
        config = load_config(write_config(workdir, clip, server.url, mqtt_port))
        print_fn(f"demo: local inference server {server.url}, MQTT broker 127.0.0.1:{mqtt_port}; "
                 f"watch it with: mosquitto_sub -p {mqtt_port} -t 'focoos/#' -v")
        return _run_pipeline(config, args.seconds, stop, print_fn, os.path.join(workdir, "snapshot.jpg"))
    except DemoError as exc:
        print_fn(f"demo: {exc}")
        return 1
    finally:
        if broker:
            broker.stop()
        server.stop()


def _run_pipeline(config, seconds: float, stop: threading.Event, print_fn, snapshot_path: str) -> int:
    view = LiveView(print_fn, snapshot_path)
    sub = subscribe(mqtt_settings(config), f"{config.mqtt.topic_prefix}/#", view.on_message)
    daemon = Daemon(config, stop)
    thread = threading.Thread(target=daemon.run, name="daemon")
    thread.start()
    deadline = time.monotonic() + seconds if seconds else None
    next_summary = time.monotonic() + 10
    while not stop.wait(0.5):
        now = time.monotonic()
        if now >= next_summary:
            print_fn(view.summary())
            next_summary = now + 10
        if deadline and now >= deadline:
            stop.set()
    thread.join(30)
    sub.disconnect()
    sub.loop_stop()
    print_fn(view.summary())
    print_fn(f"demo: daemon accounting: {daemon.final_summary}")
    return 0 if view.messages else 1
