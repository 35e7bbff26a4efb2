"""Retained per-label counts of one camera (`{prefix}/{device_id}/{camera}/{label}` -> integer).

Pure bookkeeping: the daemon feeds the labels of each detections message and publishes, retained,
the `(topic, count)` pairs it gets back. Only changes come back, so a steady scene costs nothing;
a label that disappears goes to 0 exactly once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from focoos_edge.delivery.contract import count_topic


class CountTracker:
    """Counts of one camera. Not thread-safe: call it from one thread, or under a lock.

    `labels` are the labels whose count is published from the first message on even when absent
    (0): a retained count left on the broker by the previous run must not stay stale, and Home
    Assistant's count sensors need a value. Other labels appear when first seen.
    """

    def __init__(self, base: str, camera: str, labels: Iterable[str] = ()):
        self.base = base
        self.camera = camera
        self._configured = tuple(dict.fromkeys(labels))
        self._published: dict[str, int] | None = None  # None: nothing published yet
        self._latest_ns = -1

    def update(self, labels: Iterable[str | None], captured_at_ns: int | None = None) -> list[tuple[str, int]]:
        """The counts to publish after a message whose detections carry `labels` (None ignored:
        such detections have no name to count under). With `captured_at_ns`, a result older than
        one already counted changes nothing: uplink workers can finish frames out of order."""
        if captured_at_ns is not None:
            if captured_at_ns < self._latest_ns:
                return []
            self._latest_ns = captured_at_ns
        now = Counter(label for label in labels if label is not None)
        first = self._published is None
        published = self._published if self._published is not None else {}
        changes = []
        for label in dict.fromkeys([*(self._configured if first else ()), *published, *now]):
            count = now.get(label, 0)
            if published.get(label) != count:
                changes.append((count_topic(self.base, self.camera, label), count))
                published[label] = count
        self._published = published
        return changes

    def clear(self) -> list[tuple[str, int]]:
        """Every non-zero count back to 0 (the camera stops or leaves the config)."""
        return self.update(())

    def counts(self) -> dict[str, int]:
        """The counts last returned, by label."""
        return dict(self._published or {})
