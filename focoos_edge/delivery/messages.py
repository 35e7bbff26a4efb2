"""MQTT topics and payloads (pure functions). The contract is in docs/mqtt.md."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

PAYLOAD_VERSION = 1


def iso_utc_ns(t_ns: int) -> str:
    """ISO-8601 UTC with microseconds, e.g. '2026-11-26T19:40:00.123456Z'."""
    secs, rem_ns = divmod(t_ns, 1_000_000_000)
    dt = datetime.fromtimestamp(secs, tz=timezone.utc).replace(microsecond=rem_ns // 1000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_utc(t_s: float) -> str:
    """ISO-8601 UTC of a `time.time()` value."""
    return iso_utc_ns(int(t_s * 1_000_000_000))


class Topics:
    """Topic names for one device: `{prefix}/{device_id}/...`."""

    def __init__(self, prefix: str, device_id: str):
        self.base = f"{prefix}/{device_id}"

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    @property
    def inference(self) -> str:
        """Retained state of the inference link (ok, auth_failed, model_not_found, unreachable...)."""
        return f"{self.base}/inference"

    def detections(self, camera: str) -> str:
        return f"{self.base}/{camera}/detections"

    def camera_state(self, camera: str) -> str:
        return f"{self.base}/{camera}/state"


def detection_dict(label: str | None, cls_id: int | None, conf: float, bbox: Sequence[float] | None,
                   mask: Sequence[Sequence[Sequence[float]]] | None = None,
                   keypoints: Sequence[Sequence[float]] | None = None) -> dict:
    """One entry of the `detections` list; `mask` (polygons of [x, y]) and `keypoints` ([x, y,
    score] each), in original-frame pixels, only when given (optional fields of v1.1).
    conf within [0, 1] as the schema says, whatever reached here (parsing clamps it already)."""
    out: dict[str, Any] = {"label": label, "cls_id": cls_id, "conf": round(min(max(float(conf), 0.0), 1.0), 4)}
    out["bbox"] = None if bbox is None else [round(float(v), 1) for v in bbox]
    if mask:
        out["mask"] = [[[round(float(x), 1), round(float(y), 1)] for x, y in poly] for poly in mask]
    if keypoints:
        out["keypoints"] = [[round(float(p[0]), 1), round(float(p[1]), 1), round(float(p[2]), 4)]
                            for p in keypoints]
    return out


def keeps(label: str | None, conf: float, labels: Sequence[str] | None, threshold: float,
          thresholds: Mapping[str, float] | None = None) -> bool:
    """Is a detection published? Above its label's threshold (or `threshold`), and one of `labels`
    when that filter is set. Strict `>`, as the Focoos server filters."""
    limit = (thresholds or {}).get(label, threshold) if label is not None else threshold
    return conf > limit and (not labels or label in labels)


def detections_payload(
    *,
    device_id: str,
    camera: str,
    frame_id: str,
    captured_at_ns: int,
    published_at_ns: int,
    replayed: bool,
    model_ref: str,
    width: int,
    height: int,
    detections: list[dict],
    inference_ms: float,
    total_ms: float,
    queue_ms: float,
) -> dict:
    """The v1 detections message (docs/mqtt.md; schema delivery/schemas/detections.json)."""
    return {
        "v": PAYLOAD_VERSION,
        "device_id": device_id,
        "camera": camera,
        "frame_id": frame_id,
        "captured_at": iso_utc_ns(captured_at_ns),
        "published_at": iso_utc_ns(published_at_ns),
        "replayed": replayed,
        "model_ref": model_ref,
        "width": width,
        "height": height,
        "detections": detections,
        "latency_ms": {
            "inference": round(inference_ms, 1),
            "queue": round(queue_ms, 1),
            "total": round(total_ms, 1),
        },
    }


def camera_state_payload(state: str, since_s: float, fps: float, detail: str | None = None) -> dict:
    """Retained camera state: streaming / reconnecting / offline."""
    out: dict[str, Any] = {"v": PAYLOAD_VERSION, "state": state, "since": iso_utc(since_s), "fps": round(fps, 2)}
    if detail:
        out["detail"] = detail
    return out


def inference_state_payload(state: str, since_s: float, model_ref: str, detail: str | None = None,
                            config_warnings: Sequence[str] = ()) -> dict:
    """Retained inference-link state; `config_warnings` (v1.1) only when there are some."""
    out: dict[str, Any] = {"v": PAYLOAD_VERSION, "state": state, "since": iso_utc(since_s), "model_ref": model_ref}
    if detail:
        out["detail"] = detail
    if config_warnings:
        out["config_warnings"] = list(config_warnings)
    return out


def dumps(payload: dict) -> bytes:
    """Compact UTF-8 JSON, the wire form of every JSON message."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        # Last resort (parsing already cleans labels): a lone surrogate has no UTF-8 form; a '?'
        # in its place keeps the message valid instead of failing the whole result.
        return text.encode("utf-8", "replace")
