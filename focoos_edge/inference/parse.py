"""Tolerant parsing of Focoos HUB replies (used by :mod:`focoos_edge.inference.client`).

Only what cannot be used raises :class:`~focoos_edge.inference.errors.MalformedResponseError`;
optional parts that are missing or odd get defaults (recorded in ``ModelInfo.notes``) or are dropped.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, TypeGuard

from focoos_edge.inference.errors import MalformedResponseError

log = logging.getLogger(__name__)

READY_STATUSES = frozenset({"TRAINING_COMPLETED", "DEPLOYED"})
_DETAIL_MAX_CHARS = 200
# Ceilings on what one reply may make the daemon publish (docs/reliability.md). A real detector
# returns at most a few hundred objects with short class names; beyond that it is a broken or
# hostile server, and every extra detection costs memory, MQTT bytes and spool space.
MAX_DETECTIONS = 1000
MAX_LABEL_CHARS = 100
MAX_CLS_ID = 100_000


@dataclass(frozen=True)
class Detection:
    """One detection; ``bbox`` is ``(x1, y1, x2, y2)`` in pixels, None for classification models."""

    label: str | None
    cls_id: int | None
    conf: float
    bbox: tuple[float, float, float, float] | None
    has_mask: bool = False
    keypoints: tuple[tuple[float, ...], ...] | None = None  # (x, y, score) each
    mask_png: str | None = field(default=None, repr=False)  # base64 PNG as received, bbox-cropped, upload px
    # Outer contours traced from mask_png (inference/masks.py), each a tuple of (x, y) points; in
    # uploaded-image pixels until inference/geometry.py maps them to the original frame.
    mask: tuple[tuple[tuple[float, float], ...], ...] | None = field(default=None, repr=False)
    broken: tuple[str, ...] = ()  # parts of the reply dropped as malformed: "mask", "keypoints"


@dataclass(frozen=True)
class InferenceResult:
    """A parsed inference reply: detections in uploaded-image pixels, server latencies, client round trip."""

    detections: tuple[Detection, ...]
    server_latency_s: dict[str, float]
    round_trip_s: float
    clamped: dict[str, int] = field(default_factory=dict)  # what parsing had to fix or drop, by reason


@dataclass(frozen=True)
class ModelInfo:
    """What ``GET models/{ref}`` says about a model; ``notes`` lists what had to be assumed."""

    ref: str
    name: str
    task: str
    status: str | None
    classes: tuple[str, ...]
    im_size: int | tuple[int, int] | None
    notes: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        """True when the model can serve inference; a missing status is assumed ready (see ``notes``)."""
        return self.status is None or self.status in READY_STATUSES


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from ``now``: delta-seconds or an HTTP-date; None if absent or unparseable."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def error_detail(body: bytes, api_key: str) -> str:
    """Up to 200 chars of a JSON error body's ``detail``, one line, with the API key blanked out."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    detail = doc.get("detail") if isinstance(doc, dict) else None
    if detail is None:
        return ""
    text = detail if isinstance(detail, str) else json.dumps(detail, separators=(",", ":"))
    # A server that echoes the key back must not get it into our logs and MQTT states.
    text = " ".join(text.replace(api_key, "***").split())
    return text[:_DETAIL_MAX_CHARS]


def _malformed(what: str) -> MalformedResponseError:
    return MalformedResponseError(f"malformed reply: {what}")


_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}


def _kind(value: object) -> str:
    return _KINDS.get(type(value), "a number")


def _is_number(value: object) -> TypeGuard[int | float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # a JSON integer with hundreds of digits
        return False


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise _malformed(f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError):
        raise _malformed("invalid JSON (bad encoding or nested too deeply)") from None


def parse_inference(body: bytes, round_trip_s: float) -> InferenceResult:
    """Parse a 200 inference reply; only what cannot be used raises :class:`MalformedResponseError`."""
    doc = _load_json(body)
    if not isinstance(doc, dict):
        raise _malformed(f"top level is {_kind(doc)}, expected an object")
    if "detections" not in doc:
        raise _malformed("no 'detections' key")
    raw = doc["detections"]
    if not isinstance(raw, list):
        raise _malformed(f"detections is {_kind(raw)}, expected a list")
    clamped: Counter = Counter()
    if len(raw) > MAX_DETECTIONS:
        clamped["too_many_detections"] += len(raw) - MAX_DETECTIONS
        raw = raw[:MAX_DETECTIONS]
    detections = tuple(_clamp(_parse_detection(item, f"detections[{i}]"), clamped) for i, item in enumerate(raw))
    return InferenceResult(detections, _parse_latency(doc.get("latency")), round_trip_s, dict(clamped))


def _clamp(det: Detection, clamped: Counter) -> Detection:
    """Bring a parsed detection within what the detections schema allows, counting each fix:
    conf into [0, 1], a box with its corners swapped put right, an absurd class id dropped, a label
    cut to MAX_LABEL_CHARS and made encodable (a lone surrogate cannot be UTF-8)."""
    changes: dict[str, object] = {}
    if not 0.0 <= det.conf <= 1.0:
        changes["conf"] = min(max(det.conf, 0.0), 1.0)
        clamped["conf_out_of_range"] += 1
    if det.bbox is not None and (det.bbox[0] > det.bbox[2] or det.bbox[1] > det.bbox[3]):
        x1, y1, x2, y2 = det.bbox
        changes["bbox"] = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
        clamped["inverted_box"] += 1
    if det.cls_id is not None and not 0 <= det.cls_id <= MAX_CLS_ID:
        changes["cls_id"] = None
        clamped["cls_id_out_of_range"] += 1
    if det.label is not None:
        label = _clean_label(det.label, clamped)
        if label != det.label:
            changes["label"] = label
    return replace(det, **changes) if changes else det  # type: ignore[arg-type]


def _clean_label(label: str, clamped: Counter) -> str:
    if len(label) > MAX_LABEL_CHARS:
        label = label[:MAX_LABEL_CHARS]
        clamped["label_too_long"] += 1
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        label = label.encode("utf-8", "replace").decode("utf-8")
        clamped["label_not_unicode"] += 1
    return label


def _parse_detection(raw: object, where: str) -> Detection:
    if not isinstance(raw, dict):
        raise _malformed(f"{where} is {_kind(raw)}, expected an object")
    conf = raw.get("conf")
    if not _is_number(conf):
        raise _malformed(f"{where}.conf is not a number")
    bbox = raw.get("bbox")
    if bbox is not None:
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise _malformed(f"{where}.bbox is not 4 numbers")
        bbox = tuple(float(v) for v in bbox)
    label = raw.get("label")
    cls_id = raw.get("cls_id")
    if _is_number(cls_id) and float(cls_id).is_integer():
        cls_id = int(cls_id)
    else:
        cls_id = None
    keypoints, broken = _parse_keypoints(raw.get("keypoints"), where)
    mask = raw.get("mask")
    if mask is not None and not (isinstance(mask, str) and mask):
        broken += ("mask",)
    return Detection(label=label if isinstance(label, str) else None, cls_id=cls_id, conf=float(conf),
                     bbox=bbox, has_mask=bool(mask), mask_png=mask if isinstance(mask, str) and mask else None,
                     keypoints=keypoints, broken=broken)


def _parse_keypoints(raw: object, where: str) -> tuple[tuple[tuple[float, ...], ...] | None, tuple[str, ...]]:
    """The keypoints as (x, y, score) triples, or None and ``("keypoints",)`` when they are not."""
    if raw is None:
        return None, ()
    if isinstance(raw, list) and all(
        isinstance(p, list) and len(p) == 3 and all(_is_number(v) for v in p) for p in raw
    ):
        return tuple(tuple(float(v) for v in p) for p in raw), ()
    log.debug("ignoring unusable %s.keypoints", where)  # optional data: not worth rejecting the frame
    return None, ("keypoints",)


def _parse_latency(raw: object) -> dict[str, float]:
    if not isinstance(raw, dict):
        return {}
    return {str(k): float(v) for k, v in raw.items() if _is_number(v)}


def parse_model_info(body: bytes, model_ref: str) -> ModelInfo:
    """Parse ``GET models/{ref}``; missing fields get defaults that ``notes`` records."""
    doc = _load_json(body)
    if not isinstance(doc, dict):
        raise _malformed(f"top level is {_kind(doc)}, expected an object")
    notes = []
    status = doc.get("status")
    if not isinstance(status, str) or not status:
        status = None
        notes.append("the reply has no model status; assuming the model is ready")
    classes = doc.get("classes")
    if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        classes = tuple(classes)
    else:
        classes = ()
        notes.append("the reply has no usable class list")
    def text(key: str, default: str) -> str:
        return doc[key] if isinstance(doc.get(key), str) and doc[key] else default

    ref = text("ref", model_ref)
    return ModelInfo(ref=ref, name=text("name", ref), task=text("task", "unknown"), status=status, classes=classes,
                     im_size=_parse_im_size(doc.get("im_size")), notes=tuple(notes))


def _parse_im_size(raw: object) -> int | tuple[int, int] | None:
    def is_int(v: object) -> TypeGuard[int | float]:
        return _is_number(v) and float(v).is_integer() and float(v) > 0

    if is_int(raw):
        return int(raw)
    if isinstance(raw, list) and len(raw) == 2 and all(is_int(v) for v in raw):
        return int(raw[0]), int(raw[1])
    return None
