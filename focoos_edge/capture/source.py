"""The frame-source interface the camera thread uses, and its OpenCV implementation.

Three sources implement :class:`FrameSource`: :class:`OpenCvSource` (OpenCV/FFmpeg, V4L2),
:class:`~focoos_edge.capture.keyframes.KeyframeSource` (PyAV, keyframes only) and
:class:`~focoos_edge.capture.mjpeg.MjpegCapture` (USB MJPEG, scaled TurboJPEG decode). The camera
thread calls ``grab()`` for every frame and ``retrieve_scaled()`` only for the frames it samples.
"""

from __future__ import annotations

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


class OpenCvSource:
    """A :class:`FrameSource` over an open ``cv2.VideoCapture``: full decode, then INTER_AREA resize."""

    self_paced = False

    def __init__(self, cap: cv2.VideoCapture):
        self._cap = cap

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
        ok, frame = self.retrieve()
        if not ok or frame is None:
            return None
        h, w = frame.shape[:2]
        small, scale = resize_to_max_side(frame, max_side)
        return ScaledFrame(small, w, h, scale)

    def read(self) -> tuple[bool, np.ndarray | None]:
        """grab() + retrieve()."""
        return self.retrieve() if self.grab() else (False, None)

    def get(self, prop: int) -> float:
        """The capture's property."""
        return self._cap.get(prop)

    def release(self) -> None:
        """Close the capture."""
        self._cap.release()
