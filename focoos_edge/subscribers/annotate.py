"""Annotated snapshots: boxes, segmentation masks and `label NN%` in the Focoos palette, drawn with
OpenCV only (the equivalent of the Focoos SDK's `annotate_image`), plus the per-camera rate limit.

Coordinates: `bbox`, mask polygons and keypoints are original-frame pixels; `(v - offset) * scale`
reaches the pixels of the image drawn on (the daemon draws on the uploaded JPEG: `scale=job.scale`,
`offset` = the crop's corner). A mask is either polygons (what the daemon publishes) or, as the
server returns it for the uploaded JPEG, a base64 single-channel PNG in that image's pixels cropped
to the box with its origin at (x1, y1); older servers sent full-frame masks, which are recognised
by having the image's exact size. Masks are clipped to the image.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

PALETTE_HEX = ("#015fe6", "#3faebd", "#63dba6", "#a151ff", "#df923a")
MASK_ALPHA = 0.5
_MAX_MASK_BYTES = 4 * 1024 * 1024  # a bbox-cropped 0/255 PNG is a few KiB; bounds a broken reply


class SnapshotError(ValueError):
    """The image to annotate cannot be decoded or encoded."""


def hex_to_bgr(colour: str) -> tuple[int, int, int]:
    """'#015fe6' -> (230, 95, 1): OpenCV's channel order."""
    value = colour.lstrip("#")
    r, g, b = (int(value[i:i + 2], 16) for i in (0, 2, 4))
    return b, g, r


PALETTE_BGR = tuple(hex_to_bgr(c) for c in PALETTE_HEX)


def colour_for(cls_id: int | None) -> tuple[int, int, int]:
    """Palette colour (BGR) of a class id, as the SDK picks it: `cls_id % 5`; no id -> the first."""
    return PALETTE_BGR[(cls_id or 0) % len(PALETTE_BGR)]


def label_text(label: str | None, cls_id: int | None, conf: float) -> str:
    """'person 91%'; the class id stands in for a missing label. ASCII only (Hershey fonts)."""
    name = label if label else (f"class {cls_id}" if cls_id is not None else "object")
    name = name.encode("ascii", "replace").decode("ascii")
    return f"{name} {round(float(conf) * 100):d}%"


def _field(det: Any, name: str, fallback: str | None = None) -> Any:
    """Detections may be message dicts or focoos.Detection objects; `fallback`: a second name."""
    value = det.get(name) if isinstance(det, Mapping) else getattr(det, name, None)
    if value is None and fallback is not None:
        return _field(det, fallback)
    return value


def decode_mask(b64_png: str) -> np.ndarray | None:
    """A base64 PNG mask as a bool array; None (logged) when it cannot be decoded."""
    try:
        raw = base64.b64decode(b64_png, validate=False)
    except (binascii.Error, ValueError):
        log.debug("mask is not base64; not drawn")
        return None
    if not raw or len(raw) > _MAX_MASK_BYTES:
        return None
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None:
        log.debug("mask is not a decodable image; not drawn")
        return None
    return img > 0


def place_mask(mask: np.ndarray, bbox_px: Sequence[float] | None, width: int,
               height: int) -> tuple[int, int, np.ndarray] | None:
    """(x0, y0, crop) of `mask` in a `width` x `height` image, clipped to it; None when nothing is left.

    A mask of the image's exact size is a full-frame mask; any other is cropped to the box with its
    origin at the box's top-left corner (bbox_px in image pixels).
    """
    if mask.shape == (height, width):
        x0, y0 = 0, 0
    elif bbox_px is None:
        return None
    else:
        x0, y0 = math.floor(bbox_px[0] + 1e-6), math.floor(bbox_px[1] + 1e-6)
    x1, y1 = max(x0, 0), max(y0, 0)
    x2, y2 = min(x0 + mask.shape[1], width), min(y0 + mask.shape[0], height)
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, mask[y1 - y0:y2 - y0, x1 - x0:x2 - x0]


@dataclass(frozen=True)
class _Item:
    colour: tuple[int, int, int]
    text: str
    box: tuple[int, int, int, int] | None  # output pixels
    mask: tuple[int, int, np.ndarray] | None  # output pixels
    keypoints: tuple[tuple[int, int], ...] = ()  # output pixels


def _polygon_mask(polygons: Any, f: float, offset: tuple[float, float], width: int,
                  height: int) -> tuple[int, int, np.ndarray] | None:
    """Polygons (original-frame pixels) rasterised on a ``width`` x ``height`` canvas."""
    try:
        pts = [np.round((np.asarray(p, np.float64) - offset) * f).astype(np.int32) for p in polygons]
    except (TypeError, ValueError):
        return None
    pts = [p for p in pts if p.ndim == 2 and p.shape[0] >= 3 and p.shape[1] == 2]
    if not pts:
        return None
    canvas = np.zeros((height, width), np.uint8)
    cv2.fillPoly(canvas, pts, 1)
    return 0, 0, canvas > 0


def _keypoints(det: Any, f: float, offset: tuple[float, float]) -> tuple[tuple[int, int], ...]:
    points = _field(det, "keypoints") or ()
    try:
        return tuple((round((float(p[0]) - offset[0]) * f), round((float(p[1]) - offset[1]) * f)) for p in points)
    except (TypeError, ValueError, IndexError):
        return ()


def _prepare(det: Any, src_w: int, src_h: int, scale: float, out_f: float,
             offset: tuple[float, float] = (0.0, 0.0)) -> _Item:
    bbox = _field(det, "bbox")
    bbox_src = None if bbox is None else [(float(v) - offset[i % 2]) * scale for i, v in enumerate(bbox)]
    mask = None
    polygons = _field(det, "mask")
    if isinstance(polygons, (list, tuple)) and polygons:
        mask = _polygon_mask(polygons, scale * out_f, offset, round(src_w * out_f), round(src_h * out_f))
        out_f_mask = 1.0  # already in output pixels
    else:
        out_f_mask = out_f
    if isinstance(b64 := _field(det, "mask_png", "mask"), str) and b64 and mask is None:
        bits = decode_mask(b64)
        if bits is not None:
            mask = place_mask(bits, bbox_src, src_w, src_h)
    if mask is not None and out_f_mask != 1.0:
        x0, y0, crop = mask
        ox0, oy0 = round(x0 * out_f), round(y0 * out_f)
        ow = max(1, round((x0 + crop.shape[1]) * out_f) - ox0)
        oh = max(1, round((y0 + crop.shape[0]) * out_f) - oy0)
        crop = cv2.resize(crop.astype(np.uint8), (ow, oh), interpolation=cv2.INTER_NEAREST) > 0
        mask = (ox0, oy0, crop)
    box = None if bbox_src is None else (round(bbox_src[0] * out_f), round(bbox_src[1] * out_f),
                                         round(bbox_src[2] * out_f), round(bbox_src[3] * out_f))
    cls_id = _field(det, "cls_id")
    return _Item(colour_for(cls_id if isinstance(cls_id, int) else None),
                 label_text(_field(det, "label"), cls_id, _field(det, "conf") or 0.0), box, mask,
                 _keypoints(det, scale * out_f, offset))


def _fill_mask(img: np.ndarray, placed: tuple[int, int, np.ndarray], colour: tuple[int, int, int]) -> None:
    x0, y0, crop = placed
    h, w = img.shape[:2]
    crop = crop[:max(0, h - y0), :max(0, w - x0)]
    region = img[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]]
    tint = np.asarray(colour, np.float32)
    region[crop] = (region[crop] * (1 - MASK_ALPHA) + tint * MASK_ALPHA).astype(np.uint8)


def _text_colour(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    b, g, r = colour
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def _draw_label(img: np.ndarray, text: str, colour: tuple[int, int, int], anchor: tuple[int, int],
                font_scale: float, thickness: int) -> int:
    """A filled tag with `text`, above `anchor` (x, y) when it fits, else below; returns its height."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    pad = max(2, th // 4)
    tag_h = th + base + 2 * pad
    h, w = img.shape[:2]
    x = min(max(anchor[0], 0), max(0, w - tw - 2 * pad))
    y = anchor[1] - tag_h if anchor[1] - tag_h >= 0 else min(anchor[1], max(0, h - tag_h))
    cv2.rectangle(img, (x, y), (x + tw + 2 * pad, y + tag_h), colour, cv2.FILLED)
    cv2.putText(img, text, (x + pad, y + pad + th), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                _text_colour(colour), thickness, cv2.LINE_AA)
    return tag_h


def annotate(bgr: np.ndarray, detections: Iterable[Any], height: int | None = None,
             scale: float = 1.0, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """A new BGR image: `bgr` resized to `height` (aspect kept; None: as is) with masks, boxes and
    `label NN%` tags drawn in the class's palette colour. `detections` are message dicts or
    focoos.Detection objects (`label`, `cls_id`, `conf`, `bbox`, optional `mask`); see the module
    docstring for `scale` and `offset`. Keypoints are drawn as dots. Detections without a box get
    their tag in the top-left corner."""
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise SnapshotError("expected an 8-bit BGR image")
    src_h, src_w = bgr.shape[:2]
    out_f = 1.0 if not height else height / src_h
    if out_f != 1.0:
        out_w = max(1, round(src_w * out_f))
        interp = cv2.INTER_AREA if out_f < 1 else cv2.INTER_LINEAR
        img = cv2.resize(bgr, (out_w, round(src_h * out_f)), interpolation=interp)
    else:
        img = bgr.copy()
    items = [_prepare(d, src_w, src_h, scale, out_f, offset) for d in detections]
    # Masks first, then boxes, then tags: tags stay readable over everything else.
    for item in items:
        if item.mask is not None:
            _fill_mask(img, item.mask, item.colour)
    out_h = img.shape[0]
    thickness = max(2, round(out_h / 240))
    font_scale = max(0.4, out_h / 900)
    text_thick = max(1, round(out_h / 500))
    for item in items:
        if item.box is not None:
            cv2.rectangle(img, item.box[:2], item.box[2:], item.colour, thickness)
        for point in item.keypoints:
            cv2.circle(img, point, thickness + 1, item.colour, cv2.FILLED)
    corner_y = 0
    for item in items:
        if item.box is not None:
            _draw_label(img, item.text, item.colour, (item.box[0], item.box[1]), font_scale, text_thick)
        else:
            corner_y += _draw_label(img, item.text, item.colour, (0, corner_y), font_scale, text_thick)
    return img


def render_snapshot(jpeg: bytes, detections: Iterable[Any], *, scale: float = 1.0,
                    height: int | None = None, quality: int = 80,
                    offset: tuple[float, float] = (0.0, 0.0)) -> bytes:
    """Decode `jpeg`, annotate it (see `annotate`), encode it again: the snapshot topic's payload.
    Thread-safe (OpenCV codecs, no shared state), so uplink workers may call it directly."""
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise SnapshotError("the frame is not a decodable JPEG")
    ok, buf = cv2.imencode(".jpg", annotate(img, detections, height=height, scale=scale, offset=offset),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise SnapshotError("JPEG encoding of the snapshot failed")
    return buf.tobytes()


class SnapshotGate:
    """Per camera: is a snapshot due for this result? Only when a triggering label was detected,
    and at most one per `min_interval_s` (monotonic clock). Thread-safe enough for one camera's
    results arriving from several uplink workers: a rare extra snapshot is harmless."""

    def __init__(self, labels: Iterable[str] | None = None, min_interval_s: float = 1.0,
                 clock=time.monotonic):
        self.labels = frozenset(labels) if labels else None
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last: float | None = None

    def due(self, labels: Iterable[str | None]) -> bool:
        """True (and the interval restarts) when one of `labels` triggers (any detection, when no
        labels are configured) and the interval has passed since the last snapshot."""
        hit = any(self.labels is None or label in self.labels for label in labels)
        now = self._clock()
        if not hit or (self._last is not None and now - self._last < self.min_interval_s):
            return False
        self._last = now
        return True
