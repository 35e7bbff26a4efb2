"""The `Results` stage: (job, inference result, delivery) in, durable MQTT messages out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from focoos_edge.capture.encode import FrameJob
from focoos_edge.config.models import CameraConfig, Config
from focoos_edge.delivery.messages import Topics, detection_dict, detections_payload, keeps
from focoos_edge.delivery.publisher import Publisher
from focoos_edge.delivery.spool import Spool, SpoolError
from focoos_edge.inference.client import Detection, InferenceResult, scale_detections
from focoos_edge.inference.uplink import Delivery
from focoos_edge.subscribers.features import SubscriberFeatures

log = logging.getLogger(__name__)


class Results:
    """Turns inference results into published messages; `handle` is called from uplink threads.

    `on_lost(camera, reason)` counts a result that could not be stored (dead-lettered)."""

    def __init__(self, config: Config, topics: Topics, publisher: Publisher, spool: Spool,
                 features: SubscriberFeatures, on_lost: Callable[[str, str], None]):
        self.topics = topics
        self.publisher = publisher
        self.spool = spool
        self.features = features
        self._on_lost = on_lost
        self.config = config
        self.cameras: dict[str, CameraConfig] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Apply a (new) config: thresholds, labels and filters apply to the next result."""
        self.config = config
        self.cameras = {cam.name: cam for cam in config.cameras}

    def handle(self, job: FrameJob, result: InferenceResult, delivery: Delivery) -> None:
        """One result: scale, keep what passes, publish (durably), then counts and snapshots."""
        kept = self.kept(job, result)
        # A message built while the broker is down waits in the outbox: it is replayed as well.
        replayed = delivery.replayed or not self.publisher.connected.is_set()
        payload = self._payload(job, result, delivery, kept, replayed)
        try:
            self.publisher.publish_durable(job.camera, self.topics.detections(job.camera), payload,
                                           done_frame=delivery.frame_row)
            self.features.on_result(job, kept, replayed)
        except SpoolError as exc:
            log.error("camera %s: result of frame %s not stored: %s", job.camera, job.frame_id, exc)
            if delivery.frame_row is not None:
                self.spool.release_frame(delivery.frame_row, attempted=False)  # retried later
            else:
                self._on_lost(job.camera, "spool_error")

    def kept(self, job: FrameJob, result: InferenceResult) -> list[Detection]:
        """The result's detections in original-frame pixels that pass the camera's labels/thresholds."""
        cam = self.cameras.get(job.camera)  # None: spooled by a camera since removed from the config
        threshold = self.config.threshold_for(cam) if cam else self.config.inference.threshold
        return [d for d in scale_detections(result.detections, job.scale, job.width, job.height)
                if keeps(d.label, d.conf, cam.labels if cam else None, threshold,
                         cam.thresholds if cam else None)]

    def _payload(self, job: FrameJob, result: InferenceResult, delivery: Delivery,
                 kept: Sequence[Detection], replayed: bool) -> dict:
        now_ns = time.time_ns()
        inference_ms = result.round_trip_s * 1000
        total_ms = (now_ns - job.captured_at_ns) / 1e6
        queue_ms = 0.0 if delivery.replayed else \
            max(0.0, total_ms - inference_ms - (job.encoded_mono - job.captured_mono) * 1000)
        return detections_payload(
            device_id=self.config.device_id, camera=job.camera, frame_id=job.frame_id,
            captured_at_ns=job.captured_at_ns, published_at_ns=now_ns, replayed=replayed,
            model_ref=self.config.inference.model_ref, width=job.width, height=job.height,
            detections=[detection_dict(d.label, d.cls_id, d.conf, d.bbox) for d in kept],
            inference_ms=inference_ms, total_ms=total_ms, queue_ms=queue_ms,
        )
