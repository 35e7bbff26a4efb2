"""Resize and JPEG-encode sampled frames with TurboJPEG."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import cv2
import numpy as np

from focoos_edge.common.ospackages import package_for

log = logging.getLogger(__name__)

# Names this distribution's package (libturbojpeg0 on Debian, libturbojpeg on Ubuntu/JetPack).
TURBOJPEG_HINT = (
    f"libturbojpeg was not found: install it with 'apt-get install {package_for('turbojpeg')}', "
    "or set TURBOJPEG to the library's path"
)


class EncoderUnavailableError(RuntimeError):
    """The TurboJPEG library cannot be loaded; the message says what to install."""


@dataclass(frozen=True)
class FrameJob:
    """One sampled frame, ready to upload. `scale` is uploaded size / original size."""

    camera: str
    frame_id: str
    captured_at_ns: int  # wall clock (time.time_ns) when the frame was grabbed
    captured_mono: float  # monotonic clock at grab time, for latency figures
    width: int
    height: int
    scale: float
    jpeg: bytes
    encoded_mono: float = 0.0


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
        try:
            from turbojpeg import TurboJPEG
        except ImportError as exc:  # pragma: no cover - dependency of the package
            raise EncoderUnavailableError(f"PyTurboJPEG is not installed ({exc})") from None
        lib_path = lib_path or os.environ.get("TURBOJPEG") or None
        try:
            self._tj = TurboJPEG(lib_path) if lib_path else TurboJPEG()
        except (OSError, RuntimeError) as exc:
            raise EncoderUnavailableError(f"{TURBOJPEG_HINT} ({exc})") from None

    def encode(self, bgr: np.ndarray, quality: int) -> bytes:
        """Encode a BGR uint8 image (OpenCV order) to JPEG bytes."""
        return self._tj.encode(np.ascontiguousarray(bgr), quality=quality)

    def decode(self, jpeg: bytes) -> np.ndarray:
        """Decode JPEG bytes to a BGR image."""
        return self._tj.decode(jpeg)
