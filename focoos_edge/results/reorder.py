"""Puts one camera's results back in capture order before tracking (pure; clock passed in).

With several requests in flight, frame 2's result can come back before frame 1's. The stage says
which live frames it expects (`expect`, when a frame enters the live queue) and hands results in
(`arrive`); a result is released once no earlier expected frame is outstanding. An expected frame
that never comes back (spooled, dead-lettered) stops holding the others after `wait_s`.
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import Any


class ReorderBuffer:
    """Results of one camera, released in `captured_at_ns` order. Not thread-safe."""

    def __init__(self, wait_s: float):
        self.wait_s = wait_s
        self._expected: dict[int, float] = {}  # captured_at_ns -> monotonic time it was expected
        self._ready: list[tuple[int, int, Any]] = []
        self._seq = count()
        self.released_ns = -1
        self.late = 0  # results that came after a later one was released (counted, not tracked)

    def expect(self, captured_ns: int, now_s: float) -> None:
        self._expected[captured_ns] = now_s

    def forget(self, captured_ns: int) -> None:
        """A frame that will not come back live (it went to the spool)."""
        self._expected.pop(captured_ns, None)

    def arrive(self, captured_ns: int, item: Any, now_s: float) -> list[Any] | None:
        """Hand in a result; returns what can go on now, in order, or None when `item` is late
        (a later frame was already released: it cannot be tracked in order any more)."""
        self._expected.pop(captured_ns, None)
        if captured_ns < self.released_ns:
            self.late += 1
            return None
        heapq.heappush(self._ready, (captured_ns, next(self._seq), item))
        return self.release(now_s)

    def release(self, now_s: float) -> list[Any]:
        """What can go on now: expectations older than `wait_s` are given up first."""
        for ns in [ns for ns, at in self._expected.items() if now_s - at >= self.wait_s]:
            del self._expected[ns]
        first_missing = min(self._expected, default=None)
        out = []
        while self._ready and (first_missing is None or self._ready[0][0] < first_missing):
            ns, _, item = heapq.heappop(self._ready)
            self.released_ns = max(self.released_ns, ns)
            out.append(item)
        return out

    def pending(self) -> int:
        return len(self._ready)
