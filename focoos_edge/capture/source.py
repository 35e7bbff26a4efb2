"""What every frame source hands the camera thread (moved out of mjpeg.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScaledFrame:
    """A decoded frame: ``image`` (BGR) is at most ``max_side`` long; ``width``/``height`` are the
    original JPEG's; ``scale`` = image width / original width (what FrameJob.scale means)."""

    image: np.ndarray
    width: int
    height: int
    scale: float
