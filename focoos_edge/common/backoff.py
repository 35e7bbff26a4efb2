"""Retry delays: capped exponential backoff with jitter.

Small enough to own: the retry libraries (tenacity, backoff) wrap a call and sleep themselves, while
every loop here must wait on the daemon's stop event and interleave other work.
"""

from __future__ import annotations

import random


class Backoff:
    """Capped exponential delays. `jitter="full"` draws from [0, d] (AWS "full jitter", best for
    many clients hitting one server); `"equal"` draws from [d/2, d] (never retries at once)."""

    def __init__(self, initial_s: float, max_s: float, multiplier: float = 2.0, jitter: str = "full",
                 rng: random.Random | None = None):
        if jitter not in ("full", "equal", "none"):
            raise ValueError(f"unknown jitter {jitter!r}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self.jitter = jitter
        self.attempts = 0
        self._rng = rng or random.Random()

    def ceiling(self) -> float:
        """The un-jittered delay for the current attempt."""
        return min(self.max_s, self.initial_s * self.multiplier ** self.attempts)

    def next_delay(self) -> float:
        """The delay before the next attempt; advances the attempt count."""
        d = self.ceiling()
        self.attempts += 1
        if self.jitter == "full":
            return self._rng.uniform(0.0, d)
        if self.jitter == "equal":
            return self._rng.uniform(d / 2, d)
        return d

    def reset(self) -> None:
        self.attempts = 0
