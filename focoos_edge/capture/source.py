"""The frame-source interface the camera thread uses, and its OpenCV implementation.

Three sources implement :class:`FrameSource`: :class:`OpenCvSource` (OpenCV/FFmpeg, V4L2),
:class:`~focoos_edge.capture.keyframes.KeyframeSource` (PyAV, keyframes only) and
:class:`~focoos_edge.capture.mjpeg.MjpegCapture` (USB MJPEG, scaled TurboJPEG decode). The camera
thread calls ``grab()`` for every frame and ``retrieve_scaled()`` only for the frames it samples.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from focoos_edge.capture.encode import resize_to_max_side


@dataclass(frozen=True)
class ScaledFrame:
    """A decoded frame: ``image`` (BGR) is at most ``max_side`` long; ``width``/``height`` are the
    original frame's; ``scale`` = image width / original width (what FrameJob.scale means)."""

    image: np.ndarray
    width: int
    height: int
    scale: float


@runtime_checkable
class FrameSource(Protocol):
    """The part of ``cv2.VideoCapture`` the camera thread and the probe use, plus a scaled retrieve.

    ``self_paced``: True when the source already plays a file at its native rate (the camera
    thread then adds no pacer of its own).
    """

    self_paced: bool

    def isOpened(self) -> bool:
        """True until released."""
        ...

    def grab(self) -> bool:
        """Take the next frame without converting it; False at the end or on failure."""
        ...

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        """The grabbed frame as a full-size BGR image."""
        ...

    def retrieve_scaled(self, max_side: int) -> ScaledFrame | None:
        """The grabbed frame in BGR, longest side at most ``max_side``; None on failure."""
        ...

    def read(self) -> tuple[bool, np.ndarray | None]:
        """grab() + retrieve()."""
        ...

    def get(self, prop: int) -> float:
        """A ``cv2.CAP_PROP_*`` value (0 when unknown)."""
        ...

    def release(self) -> None:
        """Close the source (idempotent)."""
        ...


class ConversionBuffers:
    """Full-size BGR buffers that the cameras' sampled frames are converted into, one per frame
    shape, shared by every camera of the process and used by one camera at a time.

    A sampled 1080p frame is 6 MB of BGR that lives for the few milliseconds of its downscale.
    Allocated afresh each time, it costs 1,500 page faults (glibc maps blocks that large afresh,
    and the daemon sets a low mmap threshold so that they are returned at once): with this the
    daemon used 2.5 % less CPU on one 1080p camera at 2 fps, side by side with the old one
    (docs/performance.md). Kept per camera, it would stay resident 6 MB per camera. Shared, it is
    one buffer per shape; cameras wait for each other only for one conversion and downscale
    (~5 ms at 1080p). Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_shape: dict[tuple[int, ...], np.ndarray] = {}

    @contextmanager
    def borrow(self, shape: tuple[int, ...] | None) -> Iterator[_Slot]:
        """Hold the buffer of ``shape`` (None: not known yet) for one conversion; whatever the
        conversion returns is kept for the next one (``slot.keep``)."""
        with self._lock:
            slot = _Slot(self._by_shape.get(shape) if shape is not None else None)
            yield slot
            if slot.kept is not None:
                self._by_shape[slot.kept.shape] = slot.kept

    def shapes(self) -> list[tuple[int, ...]]:
        """The shapes that have a buffer (one per distinct camera resolution)."""
        with self._lock:
            return list(self._by_shape)


class _Slot:
    """One borrowed buffer: ``buffer`` to convert into (None: allocate), ``keep`` what came out."""

    def __init__(self, buffer: np.ndarray | None):
        self.buffer = buffer
        self.kept: np.ndarray | None = None

    def keep(self, image: np.ndarray) -> None:
        self.kept = image


class OpenCvSource:
    """A :class:`FrameSource` over an open ``cv2.VideoCapture``: full decode, then INTER_AREA resize.

    With ``buffers``, sampled frames are converted into the shared :class:`ConversionBuffers`
    and only the downscaled copy leaves ``retrieve_scaled``.
    """

    self_paced = False

    def __init__(self, cap: cv2.VideoCapture, buffers: ConversionBuffers | None = None):
        self._cap = cap
        self._buffers = buffers
        self._shape: tuple[int, ...] | None = None  # the last converted frame's, to pick its buffer

    def isOpened(self) -> bool:
        """True while the capture is open."""
        return self._cap.isOpened()

    def grab(self) -> bool:
        """The next frame, not converted."""
        return self._cap.grab()

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        """The grabbed frame in BGR, full size."""
        ok, frame = self._cap.retrieve()
        return (True, frame) if ok and frame is not None else (False, None)

    def retrieve_scaled(self, max_side: int) -> ScaledFrame | None:
        """Decode + downscale (INTER_AREA), with the original size."""
        if self._buffers is None:
            ok, frame = self.retrieve()
            return _scaled(frame, max_side) if ok and frame is not None else None
        with self._buffers.borrow(self._shape) as slot:
            ok, frame = self._cap.retrieve(slot.buffer)
            if not ok or frame is None:
                return None
            slot.keep(frame)
            self._shape = frame.shape
            scaled = _scaled(frame, max_side)
            if scaled.image is frame:  # not downscaled: the shared buffer must not leave
                return ScaledFrame(frame.copy(), scaled.width, scaled.height, scaled.scale)
            return scaled

    def read(self) -> tuple[bool, np.ndarray | None]:
        """grab() + retrieve()."""
        return self.retrieve() if self.grab() else (False, None)

    def get(self, prop: int) -> float:
        """The capture's property."""
        return self._cap.get(prop)

    def release(self) -> None:
        """Close the capture."""
        self._cap.release()


def _scaled(frame: np.ndarray, max_side: int) -> ScaledFrame:
    h, w = frame.shape[:2]
    small, scale = resize_to_max_side(frame, max_side)
    return ScaledFrame(small, w, h, scale)
