"""Rates over a sliding window, in bounded memory."""

from __future__ import annotations

import time
from collections import deque


class HourlyRate:
    """Events and bytes over the last hour, in one-minute buckets (bounded memory at any rate)."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._buckets: deque[list] = deque()  # [minute, events, bytes], oldest first

    def add(self, n_bytes: int) -> None:
        minute = int(self._clock() // 60)
        if not self._buckets or self._buckets[-1][0] != minute:
            self._buckets.append([minute, 0, 0])
        self._buckets[-1][1] += 1
        self._buckets[-1][2] += n_bytes

    def last_hour(self) -> tuple[int, int]:
        """(events, bytes) in the last 60 minutes, this one included."""
        oldest = int(self._clock() // 60) - 59
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()
        buckets = list(self._buckets)
        return sum(b[1] for b in buckets), sum(b[2] for b in buckets)
