"""Scaled decode of MJPEG frames (USB cameras) with TurboJPEG.

A USB camera that delivers MJPEG hands over a JPEG per frame. Decoding it at full size and then
shrinking it to the upload size wastes most of the work: libjpeg-turbo can decode straight to
1/2, 3/8, 1/4... of the size by skipping DCT coefficients. :func:`decode_scaled` picks the
smallest such size whose longest side is still at least ``max_side`` and resizes only the rest.

The rest is a small ratio (at most about 1.33:1 once a scaling factor has been applied), where
``INTER_LINEAR`` costs a fraction of ``INTER_AREA`` for a PSNR within a few tenths of a dB of it
(see docs/performance.md, measured by ``scripts/bench.py``).
"""

from __future__ import annotations

import logging
from fractions import Fraction

import cv2
import numpy as np

from focoos_edge.capture.encode import fit_size
from focoos_edge.capture.source import OpenCvSource, ScaledFrame
from focoos_edge.capture.turbo import load_turbojpeg

log = logging.getLogger(__name__)

# The residual resize after a scaled decode: measured in scripts/bench.py (mjpeg case).
RESIDUAL_INTERPOLATION = cv2.INTER_LINEAR


class MjpegDecodeError(ValueError):
    """The bytes are not a JPEG that libjpeg-turbo can decode."""


def pick_scaling_factor(width: int, height: int, max_side: int,
                        factors: list[tuple[int, int]]) -> tuple[int, int]:
    """The smallest downscaling factor (num, den) <= 1 that keeps the longest side >= ``max_side``.

    libjpeg-turbo rounds scaled sizes up (ceil(side * num / den)); (1, 1) when none fits.
    """
    longest = max(width, height)
    best = Fraction(1)
    for num, den in factors:
        factor = Fraction(num, den)
        if factor < best and -(-longest * num // den) >= max_side:
            best = factor
    return best.numerator, best.denominator


class MjpegDecoder:
    """TurboJPEG decoder for MJPEG frames. Not thread-safe: one per camera thread."""

    def __init__(self, lib_path: str | None = None):
        # The shared loader: $TURBOJPEG is honoured here as in the encoder (it used not to be).
        self._tj = load_turbojpeg(lib_path)
        self._factors = sorted(self._tj.scaling_factors)

    def size(self, jpeg: bytes | np.ndarray) -> tuple[int, int]:
        """(width, height) from the JPEG header, without decoding."""
        try:
            width, height, _subsample, _colorspace = self._tj.decode_header(_as_bytes(jpeg))
        except (OSError, ValueError) as exc:
            raise MjpegDecodeError(f"not a decodable JPEG ({exc})") from None
        return int(width), int(height)

    def decode_scaled(self, jpeg: bytes | np.ndarray, max_side: int) -> ScaledFrame:
        """Decode ``jpeg`` to BGR with its longest side ``max_side`` (never upscaled)."""
        data = _as_bytes(jpeg)
        width, height = self.size(data)
        factor = pick_scaling_factor(width, height, max_side, self._factors)
        try:
            image = self._tj.decode(data, scaling_factor=None if factor == (1, 1) else factor)
        except (OSError, ValueError) as exc:
            raise MjpegDecodeError(f"not a decodable JPEG ({exc})") from None
        new_w, new_h, _ = fit_size(width, height, max_side)
        if image.shape[1] != new_w or image.shape[0] != new_h:
            image = cv2.resize(image, (new_w, new_h), interpolation=RESIDUAL_INTERPOLATION)
        return ScaledFrame(image=image, width=width, height=height, scale=new_w / width)


    def decode_full(self, jpeg: bytes | np.ndarray) -> np.ndarray:
        """Decode ``jpeg`` to BGR at full size."""
        try:
            return self._tj.decode(_as_bytes(jpeg))
        except (OSError, ValueError) as exc:
            raise MjpegDecodeError(f"not a decodable JPEG ({exc})") from None


def decode_scaled(jpeg_bytes: bytes | np.ndarray, max_side: int,
                  decoder: MjpegDecoder | None = None) -> ScaledFrame:
    """Decode one MJPEG frame scaled so that its longest side is ``max_side`` (see module doc).

    Pass a ``decoder`` when decoding many frames: building one loads libturbojpeg.
    """
    return (decoder or MjpegDecoder()).decode_scaled(jpeg_bytes, max_side)


def _as_bytes(jpeg: bytes | np.ndarray) -> bytes:
    # OpenCV hands a raw V4L2 MJPEG buffer over as a 1xN uint8 Mat.
    return jpeg.tobytes() if isinstance(jpeg, np.ndarray) else bytes(jpeg)


MJPG_FOURCC = cv2.VideoWriter.fourcc(*"MJPG")


class MjpegCapture(OpenCvSource):
    """A :class:`~focoos_edge.capture.source.FrameSource`: a V4L2 capture that hands over the
    camera's JPEGs undecoded (CAP_PROP_CONVERT_RGB = 0),
    so that only sampled frames are decoded, scaled (:meth:`retrieve_scaled`).

    Build it with :func:`wrap_usb_capture`, which falls back to the plain capture when the
    device does not deliver MJPEG.
    """

    self_paced = False  # a live device: never paced, never a file

    def __init__(self, cap: cv2.VideoCapture, decoder: MjpegDecoder | None = None):
        super().__init__(cap)  # isOpened, grab, read, get and release act on the device as they are
        self._decoder = decoder or MjpegDecoder()

    def retrieve_scaled(self, max_side: int) -> ScaledFrame | None:
        """The grabbed JPEG decoded at the largest scaling factor that still reaches ``max_side``."""
        ok, raw = self._cap.retrieve()
        if not ok or raw is None or raw.size == 0:
            return None
        try:
            return self._decoder.decode_scaled(raw, max_side)
        except MjpegDecodeError as exc:  # a torn frame from the driver: skip it
            log.debug("mjpeg: %s", exc)
            return None

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        """The grabbed frame decoded at full size (for the probe)."""
        ok, raw = self._cap.retrieve()
        if not ok or raw is None or raw.size == 0:
            return False, None
        try:
            return True, self._decoder.decode_full(raw)
        except MjpegDecodeError:
            return False, None


def wrap_usb_capture(cap: cv2.VideoCapture, name: str) -> cv2.VideoCapture | MjpegCapture:
    """Ask an open V4L2 device for MJPEG without conversion; the plain capture if it refuses.

    Untested on hardware (no USB camera on the build machines): the JPEG handling is tested
    with real JPEG bytes, the V4L2 negotiation is OpenCV's.
    """
    cap.set(cv2.CAP_PROP_FOURCC, MJPG_FOURCC)
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
    if fourcc != MJPG_FOURCC or not cap.set(cv2.CAP_PROP_CONVERT_RGB, 0):
        cap.set(cv2.CAP_PROP_CONVERT_RGB, 1)
        log.info("camera %s: the device does not deliver MJPEG; decoding as usual", name)
        return cap
    return MjpegCapture(cap)
