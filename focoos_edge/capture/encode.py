"""Resize and JPEG-encode sampled frames with TurboJPEG."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from focoos_edge.capture.turbo import load_turbojpeg

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class FrameJob:
    """One sampled frame, ready to upload. `scale` is uploaded size / original size; with a crop,
    `offset_x`/`offset_y` are the uploaded region's top-left corner in original-frame pixels, so
    original = uploaded / scale + offset."""

    camera: str
    frame_id: str
    captured_at_ns: int  # wall clock (time.time_ns) when the frame was grabbed
    captured_mono: float  # monotonic clock at grab time, for latency figures
    width: int
    height: int
    scale: float
    jpeg: bytes
    encoded_mono: float = 0.0
    offset_x: float = 0.0
    offset_y: float = 0.0


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int, float]:
    """Size whose longest side is at most `max_side`, keeping aspect; never upscales.

    Returns (new_width, new_height, scale) with scale = new / original.
    """
    longest = max(width, height)
    if longest <= max_side:
        return width, height, 1.0
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def resize_to_max_side(img: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale `img` so its longest side is `max_side` (INTER_AREA: no aliasing on big ratios)."""
    h, w = img.shape[:2]
    new_w, new_h, scale = fit_size(w, h, max_side)
    if scale == 1.0:
        return img, 1.0
    # Report the scale actually applied per axis' rounding via the width ratio.
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA), new_w / w


class JpegEncoder:
    """A TurboJPEG encoder for BGR frames. Not thread-safe: use one per camera thread."""

    def __init__(self, lib_path: str | None = None):
        self._tj = load_turbojpeg(lib_path)

    def encode(self, bgr: np.ndarray, quality: int) -> bytes:
        """Encode a BGR uint8 image (OpenCV order) to JPEG bytes."""
        return self._tj.encode(np.ascontiguousarray(bgr), quality=quality)
