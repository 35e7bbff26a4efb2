"""Payloads built by the results stage (pure): detection entries with zones and event ids, and
the events message (schema: delivery/schemas/events.json)."""

from __future__ import annotations

from typing import Any

from focoos_edge.delivery import PAYLOAD_VERSION, detection_dict, iso_utc_ns
from focoos_edge.inference import Detection
from focoos_edge.results.track import EventMessage


def detection_entry(det: Detection, zones: tuple[str, ...] | None, event_id: str | None) -> dict:
    """One entry of the detections list: v1 fields, plus `zones` when the camera has zones and
    `event_id` when the detection belongs to an event."""
    out = detection_dict(det.label, det.cls_id, det.conf, det.bbox, mask=det.mask, keypoints=det.keypoints)
    if zones is not None:
        out["zones"] = list(zones)
    if event_id is not None:
        out["event_id"] = event_id
    return out


def event_payload(msg: EventMessage, *, device_id: str, camera: str, replayed: bool) -> dict[str, Any]:
    """The events message (docs/mqtt.md; schema delivery/schemas/events.json)."""
    return {
        "v": PAYLOAD_VERSION, "type": msg.kind, "event_id": msg.event_id, "device_id": device_id,
        "camera": camera, "label": msg.label, "score": round(float(msg.score), 4),
        "box": [round(float(v), 1) for v in msg.box], "zones": list(msg.zones),
        "entered_zones": list(msg.entered_zones), "start_at": iso_utc_ns(msg.start_ns),
        "last_seen_at": iso_utc_ns(msg.last_seen_ns),
        "end_at": None if msg.end_ns is None else iso_utc_ns(msg.end_ns),
        "stationary": msg.stationary, "frames": msg.frames, "replayed": replayed,
    }


def ended(payload: dict[str, Any], end_at_ns: int) -> dict[str, Any]:
    """The `end` of a persisted open event (its last payload), ended at `end_at_ns`."""
    return {**payload, "type": "end", "end_at": iso_utc_ns(end_at_ns)}
