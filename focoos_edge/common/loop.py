"""The one loop every long-running thread uses: `step()` until stop, a heartbeat, supervision.

Each loop body is a `step()` that does one turn of work and returns how long to wait before the
next turn (0 or None: at once). The helper waits on the daemon's stop event between turns (never a
blind sleep), records a heartbeat the watchdog reads, and supervises: an unexpected exception from
a step is logged once with the thread's name and traceback, counted (`restarts`, shown in the
stats), and the loop starts again after a capped, jittered backoff, so one bad input never ends a
thread and a step that fails every time does not spin. The clock and the waiting are injectable,
so the policy is unit-tested without threads or real time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from focoos_edge.common.backoff import Backoff

log = logging.getLogger(__name__)

Step = Callable[[], "float | None"]


class Loop:
    """Supervised `step()` loop named `name`; `run()` is the thread body (or call `start()`).

    `stop` ends it (checked before every turn); `wait(seconds)` defaults to `stop.wait` and must
    return True once stopping. `restarts` counts the steps that raised; `last_beat` is the
    `clock()` time of the last turn; `healthy_after_s` of turns without an error reset the backoff.
    """

    def __init__(self, name: str, step: Step, stop: threading.Event, *,
                 backoff: Backoff | None = None, clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], bool] | None = None, healthy_after_s: float = 30.0,
                 on_beat: Callable[[float], None] | None = None):
        self.name = name
        self.restarts = 0
        self.last_error: str | None = None
        self._step = step
        self._stop = stop
        self._backoff = backoff or Backoff(0.5, 30.0, jitter="equal")
        self._clock = clock
        self._wait = wait or stop.wait
        self._healthy_after_s = healthy_after_s
        self._on_beat = on_beat
        self._failed_at: float | None = None
        self.last_beat = clock()
        self._thread: threading.Thread | None = None

    def start(self) -> Loop:
        """Run in a daemon thread named `name`."""
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def alive(self) -> bool:
        """The thread runs (False before `start()` and once it ended)."""
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout_s: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def beat(self) -> None:
        """Record progress (a step that works for long can call this between its parts)."""
        self.last_beat = self._clock()
        if self._on_beat is not None:
            self._on_beat(self.last_beat)

    def run(self) -> None:
        """Turn until stop is set."""
        while not self._stop.is_set():
            delay = self.turn()
            if delay and self._wait(delay):
                return

    def turn(self) -> float:
        """One supervised step; returns the seconds to wait before the next one."""
        self.beat()
        if self._failed_at is not None and self.last_beat - self._failed_at >= self._healthy_after_s:
            self._failed_at = None  # quiet long enough: the next error starts from a short delay
            self._backoff.reset()
        try:
            delay = self._step()
        except Exception as exc:
            return self._crashed(exc)
        return float(delay or 0.0)

    def _crashed(self, exc: Exception) -> float:
        self.restarts += 1
        self.last_error = type(exc).__name__
        self._failed_at = self._clock()
        delay = self._backoff.next_delay()
        log.error("thread %s: unexpected %s; restarting its loop in %.1f s (restart %d)", self.name,
                  type(exc).__name__, delay, self.restarts, exc_info=exc)
        return delay
