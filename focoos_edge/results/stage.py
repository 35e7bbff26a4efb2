"""The `Results` stage: (job, inference result, delivery) in, durable MQTT messages out.

Per result: boxes scaled back to the original frame, labels/thresholds and `filters` applied (so
detections, counts, snapshots, zones and events see the same set), zones found, the camera's
tracker fed (live results in capture order, replayed ones on a tracker of their own), then the
detections message, the events and the occupancy are published.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from focoos_edge.capture import FrameJob
from focoos_edge.config import CameraConfig, Config
from focoos_edge.delivery import Publisher, SpoolError, Topics, detections_payload, keeps
from focoos_edge.inference import Delivery, Detection, InferenceResult, scale_detections, trace_masks
from focoos_edge.results.camera import CameraResults
from focoos_edge.results.filters import apply_filters
from focoos_edge.results.payloads import detection_entry, ended, event_payload
from focoos_edge.results.store import OpenEventStore
from focoos_edge.results.track import EventMessage, Seen, Tracker
from focoos_edge.results.zones import zones_of
from focoos_edge.subscribers import SubscriberFeatures

log = logging.getLogger(__name__)


def events_key(camera: str) -> str:
    """The outbox's camera column for a camera's events: not a camera name (those have no '/'),
    so events stay out of the per-frame accounting (one frame -> one detections message)."""
    return f"{camera}/events"


@dataclass(frozen=True)
class EventFigures:
    """A camera's events now: open ones, results held for an earlier frame, results too late to be tracked."""

    open: int
    held_for_order: int
    late: int


@dataclass(frozen=True)
class ResultsCameraSnapshot:
    """One camera's figures in the results stage."""

    events: EventFigures | None = None  # None: the camera is not (or no longer) in the config
    errors: Mapping[str, int] = field(default_factory=dict)  # problems found in its results, by reason
    dead_lettered: Mapping[str, int] = field(default_factory=dict)  # results that could not be stored


@dataclass(frozen=True)
class ResultsSnapshot:
    """The results stage's figures at one moment (`Results.snapshot`), per camera."""

    cameras: Mapping[str, ResultsCameraSnapshot]


@dataclass(frozen=True)
class _Item:
    job: FrameJob
    result: InferenceResult
    delivery: Delivery
    kept: list[Detection]


class Results:
    """Turns inference results into published messages; `handle` is called from uplink threads.

    The stage never touches the spool's leases: a replayed result is handled before `handle`
    returns, and when it could not be stored (`delivery.stored` unset) the uplink gives its frame
    back to the spool. A live result that could not be stored has no frame left anywhere: it is
    dead-lettered and counted here (`snapshot()`)."""

    def __init__(self, config: Config, topics: Topics, publisher: Publisher, features: SubscriberFeatures):
        self.topics = topics
        self.publisher = publisher
        self.features = features
        self.config = config
        self.cameras: dict[str, CameraConfig] = {}
        self._state: dict[str, CameraResults] = {}
        self.store = OpenEventStore(config.state_dir)
        self.events_published = 0
        self._figures = threading.Lock()  # guards the two counters below (any uplink thread writes them)
        self._errors: defaultdict[str, Counter] = defaultdict(Counter)  # per camera, by reason
        self._lost: defaultdict[str, Counter] = defaultdict(Counter)  # dead-lettered, per camera
        self._end_previous_run()
        self.configure(config)

    # -- config and lifecycle -------------------------------------------------------------
    def configure(self, config: Config) -> None:
        """Apply a (new) config; a camera that left it has its events ended and occupancy zeroed."""
        self.config = config
        self.cameras = {cam.name: cam for cam in config.cameras}
        for gone in [n for n in self._state if n not in self.cameras]:
            self._retire(self._state.pop(gone))
        for cam in config.cameras:
            state = self._state.setdefault(cam.name, CameraResults(cam.name))
            with state.lock:
                self._publish_counts(state.configure(config, cam, self.topics.base))

    def close(self) -> None:
        """Clean stop: results held for ordering go out, then every open event ends."""
        for state in list(self._state.values()):
            with state.lock:
                for item in state.reorder.release(float("inf")):
                    self._process(state, item, state.live)
                self._publish_events(state.name, state.end_all(time.time_ns()))

    def tick(self) -> None:
        """Called by the daemon's loop (about once a second): releases results that waited long
        enough for an earlier frame and ends events of cameras that send nothing any more."""
        now_s, now_ns = time.monotonic(), time.time_ns()
        for state in list(self._state.values()):
            with state.lock:
                for item in state.reorder.release(now_s):
                    self._process(state, item, state.live)
                self._publish_events(state.name, state.expire(now_ns, now_s))

    def expect(self, job: FrameJob) -> None:
        """A live frame entered the queue: its result is waited for (briefly) to keep order."""
        if (state := self._state.get(job.camera)) is not None:
            with state.lock:
                state.reorder.expect(job.captured_at_ns, time.monotonic())

    def forget(self, job: FrameJob) -> None:
        """A live frame went to the spool instead: its result will come back replayed."""
        if (state := self._state.get(job.camera)) is not None:
            with state.lock:
                state.reorder.forget(job.captured_at_ns)

    def snapshot(self) -> ResultsSnapshot:
        """Per camera: its events (read under the camera's lock), the problems found in its results and
        the results that could not be stored (under the stage's)."""
        events = {}
        for name, state in list(self._state.items()):
            with state.lock:
                events[name] = EventFigures(
                    open=sum(len(t.open_events()) for t in (state.live, state.replay) if t),
                    held_for_order=state.reorder.pending(), late=state.reorder.late)
        with self._figures:
            errors = {camera: dict(reasons) for camera, reasons in self._errors.items()}
            lost = {camera: dict(reasons) for camera, reasons in self._lost.items()}
        return ResultsSnapshot({name: ResultsCameraSnapshot(events.get(name), errors.get(name, {}), lost.get(name, {}))
                                for name in {**events, **errors, **lost}})

    # -- per result -------------------------------------------------------------------------
    def handle(self, job: FrameJob, result: InferenceResult, delivery: Delivery) -> None:
        """One result: kept detections, then in order through the camera's tracker and out."""
        item = _Item(job, result, delivery, self.kept(job, result))
        state = self._state.get(job.camera)
        if state is None:  # spooled by a camera since removed from the config: no tracking
            return self._process(None, item, None)
        with state.lock:
            if delivery.replayed:
                state.replay_seen_s = time.monotonic()
                return self._process(state, item, state.replay)
            released = state.reorder.arrive(job.captured_at_ns, item, time.monotonic())
            if released is None:  # a later frame was already tracked: published, not tracked
                return self._process(state, item, None)
            for ready in released:
                self._process(state, ready, state.live)
        return None

    def kept(self, job: FrameJob, result: InferenceResult) -> list[Detection]:
        """The result's detections in original-frame pixels that pass the camera's labels,
        thresholds and filters."""
        cam = self.cameras.get(job.camera)
        threshold = self.config.threshold_for(cam) if cam else self.config.inference.threshold
        traced = trace_masks(result.detections, polygons=cam is None or cam.masks == "polygons",
                             upload_w=math.ceil(job.width * job.scale), upload_h=math.ceil(job.height * job.scale))
        mapped = scale_detections(traced, job)
        if broken := sum(1 for d in mapped if d.broken):  # kept without the unusable mask/keypoints
            with self._figures:
                self._errors[job.camera]["malformed_mask"] += broken
        scaled = [d for d in mapped if keeps(d.label, d.conf, cam.labels if cam else None, threshold,
                                             cam.thresholds if cam else None)]
        return apply_filters(scaled, cam.filters, job.width, job.height) if cam else scaled

    def _process(self, state: CameraResults | None, item: _Item, tracker: Tracker | None) -> None:
        job, delivery = item.job, item.delivery
        cam = self.cameras.get(job.camera)
        zones = [zones_of(d, cam.zones, job.width, job.height) if cam else () for d in item.kept]
        ids, events = self._track(tracker, item.kept, zones, job.captured_at_ns)
        # A message built while the broker is down waits in the outbox: it is replayed as well.
        replayed = delivery.replayed or not self.publisher.connected.is_set()
        entries = [detection_entry(d, z if cam and cam.zones else None, i)
                   for d, z, i in zip(item.kept, zones, ids, strict=True)]
        try:
            self.publisher.publish_durable(job.camera, self.topics.detections(job.camera),
                                           self._payload(item, entries, replayed), done_frame=delivery.frame_row)
        except SpoolError as exc:
            return self._not_stored(job, delivery, exc)
        delivery.stored.set()  # accounted for in the outbox now (see Uplink._deliver)
        self._publish_events(job.camera, [(delivery.replayed, m) for m in events])
        if state is not None and not delivery.replayed and cam is not None and cam.snapshot is not None:
            self._best_snapshots(state, job, item.kept, ids)
        if state is not None and state.occupancy is not None and not delivery.replayed:
            found = [(d.label, z) for d, z in zip(item.kept, zones, strict=True)]
            self._publish_counts(state.occupancy.update(found, job.captured_at_ns))
        self.features.on_result(job, item.kept, replayed)
        return None

    @staticmethod
    def _track(tracker: Tracker | None, kept: Sequence[Detection], zones: list[tuple[str, ...]],
               t_ns: int) -> tuple[list[str | None], list[EventMessage]]:
        ids: list[str | None] = [None] * len(kept)
        if tracker is None:
            return ids, []
        index = [i for i, d in enumerate(kept) if d.bbox is not None and d.label is not None]
        seen = [Seen(str(kept[i].label), kept[i].conf, kept[i].bbox, zones[i]) for i in index]  # type: ignore[arg-type]
        found, events = tracker.step(seen, t_ns)
        for i, event_id in zip(index, found, strict=True):
            ids[i] = event_id
        return ids, events

    def _not_stored(self, job: FrameJob, delivery: Delivery, exc: SpoolError) -> None:
        if delivery.frame_row is not None:  # still in the spool: the uplink gives it back, retried later
            log.error("camera %s: result of frame %s not stored (%s); its frame stays in the spool",
                      job.camera, job.frame_id, exc)
            return
        log.error("camera %s: result of frame %s not stored: %s", job.camera, job.frame_id, exc)
        with self._figures:
            self._lost[job.camera]["spool_error"] += 1

    def _payload(self, item: _Item, entries: list[dict], replayed: bool) -> dict:
        job, result, delivery = item.job, item.result, item.delivery
        now_ns = time.time_ns()
        inference_ms = result.round_trip_s * 1000
        total_ms = (now_ns - job.captured_at_ns) / 1e6
        queue_ms = 0.0 if delivery.replayed else \
            max(0.0, total_ms - inference_ms - (job.encoded_mono - job.captured_mono) * 1000)
        return detections_payload(
            device_id=self.config.device_id, camera=job.camera, frame_id=job.frame_id,
            captured_at_ns=job.captured_at_ns, published_at_ns=now_ns, replayed=replayed,
            model_ref=self.config.inference.model_ref, width=job.width, height=job.height,
            detections=entries, inference_ms=inference_ms, total_ms=total_ms, queue_ms=queue_ms,
        )

    # -- events, occupancy ----------------------------------------------------------------------
    def _publish_events(self, camera: str, events: Sequence[tuple[bool, EventMessage]]) -> None:
        for replayed, msg in events:
            payload = event_payload(msg, device_id=self.config.device_id, camera=camera, replayed=replayed)
            self._publish_event(camera, payload)
            if msg.kind == "end" and (state := self._state.get(camera)) is not None:
                state.best.pop(msg.event_id, None)

    def _best_snapshots(self, state: CameraResults, job: FrameJob, kept: Sequence[Detection],
                        ids: Sequence[str | None]) -> None:
        """Each live event's best frame (highest score so far) as the retained events snapshot."""
        for det, event_id in zip(kept, ids, strict=True):
            if event_id is not None and det.conf > state.best.get(event_id, -1.0):
                state.best[event_id] = det.conf
                self.features.publish_snapshot(job, [det], f"{self.topics.base}/{job.camera}/events/snapshot")

    def _publish_event(self, camera: str, payload: dict) -> None:
        # Persisted before it is queued: a crash in between leaves an extra `end`, never a lost one.
        self.store.record(payload)
        try:
            self.publisher.publish_durable(events_key(camera), f"{self.topics.base}/{camera}/events", payload)
            self.events_published += 1
        except SpoolError as exc:
            log.error("camera %s: event %s (%s) not stored: %s", camera, payload["event_id"], payload["type"], exc)

    def _publish_counts(self, changes: Sequence[tuple[str, int]]) -> None:
        for topic, count in changes:
            self.publisher.publish(topic, str(count).encode(), qos=1, retain=True)

    def _retire(self, state: CameraResults) -> None:
        with state.lock:
            for item in state.reorder.release(float("inf")):
                self._process(state, item, state.live)
            self._publish_events(state.name, state.end_all(time.time_ns()))
            if state.occupancy is not None:
                self._publish_counts(state.occupancy.clear())

    def _end_previous_run(self) -> None:
        """Events a crashed run left open end now (a clean stop leaves none)."""
        previous = self.store.load()
        now_ns = time.time_ns()
        for payload in previous:
            self._publish_event(str(payload.get("camera", "")), ended(payload, now_ns))
        if previous:
            log.info("events: %d event(s) left open by the last run ended", len(previous))
        self.store.forget_all()
