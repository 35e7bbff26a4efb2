"""What subscribers get beyond detections: retained per-label counts, annotated snapshots and Home
Assistant discovery. Counts and snapshots follow live results only (a replayed backlog frame says
nothing about "now")."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from focoos_edge import __version__
from focoos_edge.capture import FrameJob
from focoos_edge.config import CameraConfig, Config
from focoos_edge.delivery import Publisher, Topics, dumps, snapshot_topic
from focoos_edge.inference import Detection
from focoos_edge.subscribers.annotate import SnapshotError, SnapshotGate, render_snapshot
from focoos_edge.subscribers.counts import CountTracker
from focoos_edge.subscribers.homeassistant import (
    DiscoveryMessage,
    HaCamera,
    discovery_messages,
    is_birth,
    removed_topics,
    status_topic,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeaturesSnapshot:
    """What the subscriber features count (`SubscriberFeatures.snapshot`)."""

    labels_dropped: Mapping[str, int]  # per camera with counts on: detections whose label came after the cap


class SubscriberFeatures:
    """Counts, snapshots and discovery for one daemon; `on_result` is called from uplink threads."""

    def __init__(self, config: Config, topics: Topics, publisher: Publisher):
        self.topics = topics
        self.publisher = publisher
        self._lock = threading.Lock()
        self._counts: dict[str, CountTracker] = {}
        self._gates: dict[str, SnapshotGate] = {}
        self._discovery: list[DiscoveryMessage] = []
        self._rediscover_at: float | None = None
        self.config = config
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Apply a (new) config: trackers for new cameras, counts of removed ones back to 0."""
        with self._lock:
            names = {c.name for c in config.cameras}
            for gone in [n for n in self._counts if n not in names]:
                self._publish_counts(self._counts.pop(gone).clear())
            for cam in config.cameras:
                if cam.counts and cam.name not in self._counts:
                    self._counts[cam.name] = CountTracker(self.topics.base, cam.name, config.count_labels(cam))
                elif not cam.counts:
                    self._counts.pop(cam.name, None)
            self._gates = {
                c.name: self._gates.get(c.name) or SnapshotGate(c.snapshot.labels, c.snapshot.min_interval_s)
                for c in config.cameras if c.snapshot}
            self.config = config
        self.announce()

    # -- per result -------------------------------------------------------------------
    def on_result(self, job: FrameJob, kept: Sequence[Detection], replayed: bool) -> None:
        """Counts and snapshot after one result (`kept`: detections that passed the filters)."""
        if replayed:
            return
        labels = [d.label for d in kept]
        with self._lock:
            tracker = self._counts.get(job.camera)
            changes = tracker.update(labels, job.captured_at_ns) if tracker else []
            gate = self._gates.get(job.camera)
            due = gate is not None and gate.due(labels)
        self._publish_counts(changes)
        if due:
            self.publish_snapshot(job, kept, snapshot_topic(self.topics.base, job.camera))

    def snapshot(self) -> FeaturesSnapshot:
        """The count trackers' figures, read under the lock they are updated under."""
        with self._lock:
            return FeaturesSnapshot({camera: t.labels_dropped for camera, t in self._counts.items()})

    def _publish_counts(self, changes: list[tuple[str, int]]) -> None:
        for topic, count in changes:
            self.publisher.publish(topic, str(count).encode(), qos=1, retain=True)

    def publish_snapshot(self, job: FrameJob, kept: Sequence[Detection], topic: str) -> None:
        """Render `kept` on the job's (already privacy-masked) JPEG and publish it retained on
        `topic`, when the camera has snapshots on."""
        cam = next((c for c in self.config.cameras if c.name == job.camera), None)
        if cam is None or cam.snapshot is None:
            return
        try:
            jpeg = render_snapshot(job.jpeg, kept, scale=job.scale, height=cam.snapshot.height,
                                   quality=cam.snapshot.quality, offset=(job.offset_x, job.offset_y))
        except SnapshotError as exc:
            log.warning("camera %s: no snapshot: %s", job.camera, exc)
            return
        self.publisher.publish(topic, jpeg, qos=1, retain=True)

    # -- Home Assistant discovery ----------------------------------------------------------
    def announce(self) -> None:
        """Publish the discovery configs (retained); empty payloads retire configs that are gone."""
        ha = self.config.homeassistant
        new = [] if ha is None else discovery_messages(
            topic_base=self.topics.base, device_id=self.config.device_id, version=__version__,
            discovery_prefix=ha.discovery_prefix,
            cameras=[self._ha_camera(c) for c in self.config.cameras])
        for topic in removed_topics(self._discovery, new):
            self.publisher.publish(topic, b"", qos=1, retain=True)
        for msg in new:
            self.publisher.publish(msg.topic, dumps(msg.payload), qos=1, retain=True)
        if ha is not None and not self._discovery:
            self.publisher.subscribe(status_topic(ha.discovery_prefix), self._on_status)
        self._discovery = new

    def _ha_camera(self, cam: CameraConfig) -> HaCamera:
        """What discovery announces for `cam`: count sensors only with counts on; an occupancy sensor
        per zone and label (the zone's labels, else the camera's count labels)."""
        labels = self.config.count_labels(cam)
        zones = tuple((name, zone.labels or labels) for name, zone in cam.zones.items())
        return HaCamera(cam.name, labels if cam.counts else (), cam.snapshot is not None, zones,
                        control=self.config.mqtt.control, events=self.config.events_for(cam).enabled)

    def _on_status(self, topic: str, payload: bytes) -> None:
        # paho's network thread: only schedule; the daemon's loop re-publishes after a random delay
        # so a fleet of boxes does not answer a Home Assistant restart all at once.
        ha = self.config.homeassistant
        if ha is not None and is_birth(topic, payload, ha.discovery_prefix):
            self._rediscover_at = time.monotonic() + random.uniform(0, ha.birth_jitter_s)

    def tick(self) -> None:
        """Called by the daemon's loop: re-announce when Home Assistant came back."""
        if self._rediscover_at is not None and time.monotonic() >= self._rediscover_at:
            self._rediscover_at = None
            log.info("Home Assistant announced itself: discovery published again")
            self.announce()
