"""The uplink's circuit breaker: stop hammering an API that is down, one probe per backoff delay."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from focoos_edge.common import Backoff

BREAKER_MAX_S = 4.0


class CircuitBreaker:
    """Closed -> open after `threshold` failures in a row; while open, one probe per backoff delay."""

    def __init__(self, threshold: int = 3, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        # Capped at 4 s with equal jitter (2-4 s between probes once open): inference resumes within
        # a few seconds of the API coming back, a dead host sees one small request every 2-4 s, and
        # a fleet's probes do not arrive in step.
        self._backoff = backoff or Backoff(1.0, BREAKER_MAX_S, jitter="equal")
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self._lock = threading.Lock()

    def ready(self) -> bool:
        """Would `allow()` let a request through now? Unlike `allow()`, does not take the probe."""
        with self._lock:
            return self._failures < self.threshold or (not self._probing and self._clock() >= self._open_until)

    def allow(self) -> bool:
        """May a request be sent now? While open, lets exactly one probe through per delay."""
        with self._lock:
            if self._failures < self.threshold:
                return True
            if self._probing or self._clock() < self._open_until:
                return False
            self._probing = True
            return True

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._probing = False
            self._backoff.reset()

    def failure(self, retry_after_s: float | None = None) -> None:
        """Record a failure; a Retry-After opens the breaker at once for at least that long."""
        with self._lock:
            self._probing = False
            self._failures = self.threshold if retry_after_s else self._failures + 1
            if self._failures >= self.threshold:
                delay = max(retry_after_s or 0.0, self._backoff.next_delay())
                self._open_until = self._clock() + delay
