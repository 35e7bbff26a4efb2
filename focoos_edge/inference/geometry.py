"""From uploaded-image pixels back to original-frame pixels (pure functions).

The camera thread may downscale a frame and crop a region of it before upload; the FrameJob
records how (``scale`` = uploaded / original size, ``offset_x``/``offset_y`` = the region's
top-left corner in original pixels). Boxes, mask polygons and keypoints come back from the
server in uploaded-image pixels: ``original = uploaded / scale + offset``, clipped to the frame.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Protocol

from focoos_edge.inference.parse import Detection

KEYPOINT_SLACK_PX = 1.0  # keypoints this far outside the frame are rounding, not nonsense


class FrameGeometry(Protocol):
    """What the mapping needs from a FrameJob (read-only: FrameJob is frozen)."""

    @property
    def scale(self) -> float: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def offset_x(self) -> float: ...
    @property
    def offset_y(self) -> float: ...


def scale_detections(dets: Iterable[Detection], job: FrameGeometry) -> tuple[Detection, ...]:
    """Map boxes, mask polygons and keypoints of ``dets`` (uploaded-image pixels) to the original
    frame of ``job`` (its scale, crop offset and size), clipped to the frame, rounded to 0.1 px.

    Keypoints with a coordinate that is not finite or lies outside the frame are dropped (the
    detection is kept) and ``"keypoints"`` is added to the detection's ``broken``.
    """
    return map_to_frame(dets, scale=job.scale, width=job.width, height=job.height,
                        offset_x=getattr(job, "offset_x", 0.0), offset_y=getattr(job, "offset_y", 0.0))


def map_to_frame(dets: Iterable[Detection], *, scale: float, width: int, height: int,
                 offset_x: float = 0.0, offset_y: float = 0.0) -> tuple[Detection, ...]:
    """:func:`scale_detections` with the geometry spelled out."""
    if isinstance(scale, bool) or not (math.isfinite(scale) and scale > 0):
        raise ValueError("scale must be a positive finite number")
    mapper = _Mapper(scale, width, height, offset_x, offset_y)
    return tuple(mapper.detection(d) for d in dets)


@dataclasses.dataclass(frozen=True)
class _Mapper:
    scale: float
    width: int
    height: int
    offset_x: float
    offset_y: float

    def x(self, v: float) -> float:
        return _clip(v / self.scale + self.offset_x, self.width)

    def y(self, v: float) -> float:
        return _clip(v / self.scale + self.offset_y, self.height)

    def detection(self, det: Detection) -> Detection:
        bbox = None if det.bbox is None else (self.x(det.bbox[0]), self.y(det.bbox[1]),
                                              self.x(det.bbox[2]), self.y(det.bbox[3]))
        mask = None if det.mask is None else tuple(
            tuple((self.x(p[0]), self.y(p[1])) for p in poly) for poly in det.mask)
        keypoints, broken = self.keypoints(det)
        return dataclasses.replace(det, bbox=bbox, mask=mask, keypoints=keypoints, broken=broken)

    def keypoints(self, det: Detection) -> tuple[tuple[tuple[float, ...], ...] | None, tuple[str, ...]]:
        if det.keypoints is None:
            return None, det.broken
        raw = [(p[0] / self.scale + self.offset_x, p[1] / self.scale + self.offset_y, *p[2:])
               for p in det.keypoints]
        if not all(self._inside(p[0], p[1]) for p in raw):
            return None, (*det.broken, "keypoints")
        return tuple((_clip(p[0], self.width), _clip(p[1], self.height), *p[2:]) for p in raw), det.broken

    def _inside(self, x: float, y: float) -> bool:
        slack = KEYPOINT_SLACK_PX
        return (math.isfinite(x) and math.isfinite(y) and -slack <= x <= self.width + slack
                and -slack <= y <= self.height + slack)


def _clip(value: float, upper: float) -> float:
    return round(min(max(value, 0.0), float(upper)), 1) + 0.0  # + 0.0 turns -0.0 into 0.0
