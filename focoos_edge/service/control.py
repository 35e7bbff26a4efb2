"""MQTT control (`mqtt.control: true`): `{prefix}/{device}/{camera}/detect/set` ON/OFF pauses and
resumes a camera's inference without disconnecting it. The setting is retained on `.../detect/state`
and persisted in `state_dir/detect.json`, so it survives restarts.

Everything arriving here comes from the network: only the documented topic and the payloads `ON`
and `OFF` are accepted; anything else is ignored with a rate-limited log line, and a flood of
changes is throttled per camera so it cannot turn the box into a disk-writing loop.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from focoos_edge.common import write_json
from focoos_edge.delivery import Publisher, Topics

log = logging.getLogger(__name__)

FILENAME = "detect.json"
CHANGES_PER_WINDOW = 5  # accepted changes of one camera per WINDOW_S; more are ignored
WINDOW_S = 10.0
LOG_EVERY_S = 30.0


class RateLimitedLog:
    """At most one warning per `every_s` per key; the lines suppressed in between are counted."""

    def __init__(self, every_s: float = LOG_EVERY_S, clock=time.monotonic):
        self.every_s = every_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self.suppressed = 0

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = self._clock()
        if now - self._last.get(key, -self.every_s) < self.every_s:
            self.suppressed += 1
            return
        self._last[key] = now
        log.warning(msg, *args)


def parse_command(topic: str, payload: bytes, base: str) -> tuple[str, bool] | None:
    """(camera, on) for a valid `{base}/{camera}/detect/set` with payload ON/OFF, else None."""
    head, tail = f"{base}/", "/detect/set"
    if not (topic.startswith(head) and topic.endswith(tail)):
        return None
    camera = topic[len(head):-len(tail)]
    if not camera or "/" in camera:
        return None
    value = payload.strip()
    return (camera, value == b"ON") if value in (b"ON", b"OFF") else None


@dataclass(frozen=True)
class ControlSnapshot:
    """The detect switches at one moment (`DetectControl.snapshot`)."""

    off: frozenset[str]  # cameras whose detect switch is OFF (set by a message or persisted)

    def detect(self, camera: str) -> str:
        """"ON" or "OFF", as on the camera's `detect/state` topic."""
        return "OFF" if camera in self.off else "ON"


class DetectControl:
    """Which cameras are paused; one `threading.Event` per camera (set: paused) that its worker
    checks before decoding a sampled frame. Thread-safe (MQTT callbacks on paho's thread)."""

    def __init__(self, state_dir: Path, topics: Topics, publisher: Publisher, enabled: bool):
        self.path = Path(state_dir) / FILENAME
        self.topics = topics
        self.publisher = publisher
        self.enabled = enabled
        self._lock = threading.Lock()
        self._paused: dict[str, threading.Event] = {}
        self._cameras: set[str] = set()
        self._changes: dict[str, deque] = {}
        self.ignored = 0
        self._log = RateLimitedLog()
        self._saved_off = self._load() if enabled else set()

    def paused(self, camera: str) -> threading.Event:
        """The camera's pause flag (created OFF/ON from the persisted setting)."""
        with self._lock:
            if camera not in self._paused:
                self._paused[camera] = threading.Event()
                if camera in self._saved_off:
                    self._paused[camera].set()
            return self._paused[camera]

    def state(self, camera: str) -> str:
        return "OFF" if self.paused(camera).is_set() else "ON"

    def snapshot(self) -> ControlSnapshot:
        """Every camera's switch, as `state` would give it, without creating flags: a camera with no
        flag yet is OFF when the persisted setting says so."""
        with self._lock:
            off = {camera for camera, event in self._paused.items() if event.is_set()}
            return ControlSnapshot(frozenset(off | (self._saved_off - self._paused.keys())))

    def configure(self, cameras: Iterable[str]) -> None:
        """The cameras that exist now: their retained state is published; others are refused."""
        names = set(cameras)
        with self._lock:
            self._cameras = names
        if not self.enabled:
            return
        # Subscribed first: a client that answers the state at once (ON seen, OFF sent) must find the
        # subscription in place; the broker handles one client's packets in order.
        self.publisher.subscribe(f"{self.topics.base}/+/detect/set", self.on_message)
        for camera in sorted(names):
            self._publish_state(camera)

    def topics_state(self, camera: str) -> str:
        return f"{self.topics.base}/{camera}/detect/state"

    def on_message(self, topic: str, payload: bytes) -> None:
        """A message on `{base}/+/detect/set` (paho's thread)."""
        command = parse_command(topic, payload[:16], self.topics.base) if len(payload) <= 16 else None
        if command is None or command[0] not in self._cameras:
            self.ignored += 1
            self._log.warning("bad", "control: ignored a message on %s (only ON/OFF for a configured camera; "
                              "such lines at most every 30 s)",
                              topic[:200])
            return
        camera, on = command
        if (not self.paused(camera).is_set()) == on:
            return self._publish_state(camera)  # no change (a Home Assistant resync, say)
        if not self._allow(camera):
            self.ignored += 1
            self._log.warning(f"flood-{camera}", "control: camera %s changed more than %d times in %.0f s; "
                              "ignoring changes for now", camera, CHANGES_PER_WINDOW, WINDOW_S)
            return None
        self._apply(camera, on)
        return None

    def _allow(self, camera: str) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = self._changes.setdefault(camera, deque())
            while recent and now - recent[0] > WINDOW_S:
                recent.popleft()
            if len(recent) >= CHANGES_PER_WINDOW:
                return False
            recent.append(now)
            return True

    def _apply(self, camera: str, on: bool) -> None:
        event = self.paused(camera)
        event.clear() if on else event.set()
        log.info("control: camera %s inference %s", camera, "resumed (ON)" if on else "paused (OFF)")
        self._save()
        self._publish_state(camera)

    def _publish_state(self, camera: str) -> None:
        self.publisher.publish(self.topics_state(camera), self.state(camera).encode(), qos=1, retain=True)

    def _load(self) -> set[str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {str(c) for c in data.get("off", [])}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, AttributeError) as exc:
            log.error("control: cannot read %s (%s): every camera starts ON", self.path, exc)
            return set()

    def _save(self) -> None:
        with self._lock:
            off = sorted(c for c, e in self._paused.items() if e.is_set())
        try:
            write_json(self.path, {"v": 1, "off": off})
        except OSError as exc:
            log.error("control: cannot write %s: %s (the setting will not survive a restart)", self.path, exc)
