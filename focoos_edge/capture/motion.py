"""Cost controls for one camera: a scene-change gate and an hourly inference budget.

Every inference is paid for. A camera looking at an empty car park sends the same picture over
and over: :class:`SceneGate` compares a tiny grey thumbnail of each sampled frame with the one of
the last frame actually *sent*, and lets a frame through only when the mean absolute difference
exceeds a threshold, or when ``heartbeat_s`` has passed (so a static scene is still checked, and
a consumer still sees results). Comparing with the last sent frame, not the previous one, means
a slow change (a shadow moving) adds up until it is sent.

:class:`InferenceBudget` caps inferences per camera per hour and spreads them: a token bucket
refilled at ``per_hour / 3600`` per second (bursts of at most ``burst`` after a quiet spell), and
never more than ``per_hour`` in any sliding hour. Both are pure logic with an injectable clock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

THUMB_SIDE_PX = 64
HOUR_S = 3600.0

SEND_FIRST = "first"
SEND_CHANGED = "changed"
SEND_HEARTBEAT = "heartbeat"
SKIP_STATIC = "static"


def thumbnail(bgr: np.ndarray, side_px: int = THUMB_SIDE_PX) -> np.ndarray:
    """A grey thumbnail whose longest side is ``side_px`` (area-averaged: sensor noise cancels)."""
    h, w = bgr.shape[:2]
    scale = side_px / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA) if scale < 1 else bgr
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two grey thumbnails, in grey levels (0..255)."""
    if a.shape != b.shape:
        return float("inf")  # the stream changed resolution: certainly a new scene
    return float(cv2.mean(cv2.absdiff(a, b))[0])


@dataclass(frozen=True)
class GateDecision:
    """Whether to send a frame, why (first / changed / heartbeat / static), and the difference."""

    send: bool
    reason: str
    diff: float


class SceneGate:
    """Lets through frames whose scene changed since the last sent one, plus one per heartbeat.

    ``threshold`` is a mean absolute grey-level difference of the 64-px thumbnails (0..255);
    ``heartbeat_s`` the longest time without a sent frame. Call :meth:`check` for each sampled
    frame and :meth:`sent` when the frame was really sent (a budget may still refuse it).
    """

    def __init__(self, threshold: float, heartbeat_s: float,
                 clock: Callable[[], float] = time.monotonic):
        if threshold < 0 or heartbeat_s <= 0:
            raise ValueError("threshold must be >= 0 and heartbeat_s > 0")
        self.threshold = threshold
        self.heartbeat_s = heartbeat_s
        self._clock = clock
        self._ref: np.ndarray | None = None
        self._ref_at = 0.0

    def check(self, bgr: np.ndarray) -> tuple[GateDecision, np.ndarray]:
        """The decision for this frame, and its thumbnail (hand it back to :meth:`sent`)."""
        thumb = thumbnail(bgr)
        if self._ref is None:
            return GateDecision(True, SEND_FIRST, float("inf")), thumb
        diff = mean_abs_diff(thumb, self._ref)
        if diff > self.threshold:
            return GateDecision(True, SEND_CHANGED, diff), thumb
        if self._clock() - self._ref_at >= self.heartbeat_s:
            return GateDecision(True, SEND_HEARTBEAT, diff), thumb
        return GateDecision(False, SKIP_STATIC, diff), thumb

    def sent(self, thumb: np.ndarray) -> None:
        """The frame of ``thumb`` was sent: it is the new reference."""
        self._ref = thumb
        self._ref_at = self._clock()


class InferenceBudget:
    """At most ``per_hour`` inferences in any sliding hour, spread by a token bucket."""

    def __init__(self, per_hour: int, burst: int | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if per_hour < 1:
            raise ValueError("per_hour must be >= 1")
        self.per_hour = per_hour
        # Five minutes' worth by default: an event after a quiet spell gets a few frames at once.
        self.burst = max(1, burst if burst is not None else per_hour // 12)
        self._rate_per_s = per_hour / HOUR_S
        self._clock = clock
        self._tokens = float(self.burst)
        self._refilled_at = clock()
        self._spent: deque[float] = deque()

    def try_spend(self) -> bool:
        """Take one inference from the budget; False (nothing taken) when it is used up."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._refilled_at) * self._rate_per_s)
        self._refilled_at = now
        while self._spent and now - self._spent[0] >= HOUR_S:
            self._spent.popleft()
        if self._tokens < 1.0 or len(self._spent) >= self.per_hour:
            return False
        self._tokens -= 1.0
        self._spent.append(now)
        return True
