"""What happens to a sampled frame before it is encoded: privacy masks, crop, upload size.

Privacy masks are polygons in normalized frame coordinates (0..1) filled black on the sampled,
scaled frame, before it is encoded: a masked region never leaves the camera thread (upload,
snapshot, probe JPEG, demo picture all start from that image). The polygons are turned into
pixel coordinates once per frame size; filling them is one ``cv2.fillPoly`` call (a few
microseconds on a 640 px frame: scripts/bench.py, "privacy mask fill").

A crop uploads only its region (normalized ``[x1, y1, x2, y2]``); the FrameJob carries the
region's offset in original-frame pixels so results map back (inference/geometry.py).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from focoos_edge.capture.encode import resize_to_max_side
from focoos_edge.capture.source import ScaledFrame

Polygon = Sequence[Sequence[float]]
Crop = Sequence[float]
FULL_SIZE = 1 << 16  # a longest side no frame reaches: no downscale before the crop
DEFAULT_IM_SIZE = 640  # the upload size when max_side is auto and the model does not say


class ModelImSize:
    """The model's input size (longest side), shared between the uplink (which learns it from the
    model info) and the camera threads (which size their uploads with it). Thread-safe."""

    def __init__(self, default: int = DEFAULT_IM_SIZE):
        self._side = default
        self._known = False
        self._lock = threading.Lock()

    def set(self, im_size: int | tuple[int, int] | None) -> None:
        """Record the model's ``im_size`` (an int or ``(w, h)``: the larger side counts)."""
        if im_size is None:
            return
        side = max(im_size) if isinstance(im_size, tuple) else int(im_size)
        with self._lock:
            self._side, self._known = side, True

    @property
    def side(self) -> int:
        """The longest upload side to use now."""
        with self._lock:
            return self._side

    @property
    def known(self) -> bool:
        """True once the model said its size."""
        with self._lock:
            return self._known


@dataclass(frozen=True)
class Prepared:
    """The image to encode and how it maps to the original frame: original = px / scale + offset."""

    image: np.ndarray
    scale: float
    offset_x: float
    offset_y: float


def pixel_polygons(polygons: Sequence[Polygon], width: int, height: int) -> list[np.ndarray]:
    """Normalized polygons as int32 pixel point arrays of a ``width`` x ``height`` image."""
    size = np.array([width, height], np.float64)
    return [np.round(np.asarray(p, np.float64) * size).astype(np.int32) for p in polygons]


def fill_black(image: np.ndarray, polygons_px: list[np.ndarray]) -> None:
    """Fill the polygons black in place."""
    if polygons_px:
        cv2.fillPoly(image, polygons_px, (0,) * (image.shape[2] if image.ndim == 3 else 1))


def crop_box(crop: Crop, width: int, height: int) -> tuple[int, int, int, int]:
    """The crop in pixels of a ``width`` x ``height`` image, at least one pixel each way."""
    x1, y1 = math.floor(crop[0] * width), math.floor(crop[1] * height)
    x2, y2 = max(x1 + 1, math.ceil(crop[2] * width)), max(y1 + 1, math.ceil(crop[3] * height))
    return x1, y1, min(x2, width), min(y2, height)


class FramePrep:
    """Masks, crops and sizes sampled frames for one camera (one per camera thread: not thread-safe)."""

    def __init__(self, privacy_masks: Sequence[Polygon] = (), crop: Crop | None = None):
        self.privacy_masks = tuple(privacy_masks)
        self.crop = tuple(crop) if crop is not None else None
        self._cache: tuple[tuple[int, int], list[np.ndarray]] | None = None

    def source_side(self, max_side: int) -> int:
        """The longest side to ask the source for. With a crop: the whole frame, so that only the
        region is resized, once (a smaller frame first and the region again costs 3x as much:
        scripts/bench.py, "crop")."""
        return max_side if self.crop is None else FULL_SIZE

    def masks_for(self, width: int, height: int) -> list[np.ndarray]:
        """The pixel polygons for this frame size (computed once per size)."""
        if self._cache is None or self._cache[0] != (width, height):
            self._cache = ((width, height), pixel_polygons(self.privacy_masks, width, height))
        return self._cache[1]

    def apply(self, frame: ScaledFrame, max_side: int) -> Prepared:
        """Mask (in place), crop and downscale ``frame`` to at most ``max_side``."""
        image = frame.image
        if self.privacy_masks:
            if not image.flags.writeable or not image.flags.c_contiguous:
                image = np.ascontiguousarray(image).copy()
            h, w = image.shape[:2]
            fill_black(image, self.masks_for(w, h))
        if self.crop is None:
            return Prepared(image, frame.scale, 0.0, 0.0)
        h, w = image.shape[:2]
        x1, y1, x2, y2 = crop_box(self.crop, w, h)
        region, extra = resize_to_max_side(image[y1:y2, x1:x2], max_side)
        return Prepared(region, frame.scale * extra, x1 / frame.scale, y1 / frame.scale)

