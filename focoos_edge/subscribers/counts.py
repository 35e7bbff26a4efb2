"""Retained per-label counts of one camera (`{prefix}/{device_id}/{camera}/{label}` -> integer).

Pure bookkeeping: the daemon feeds the labels of each detections message and publishes, retained,
the `(topic, count)` pairs it gets back. Only changes come back, so a steady scene costs nothing;
a label that disappears goes to 0 exactly once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from focoos_edge.delivery import count_topic

log = logging.getLogger(__name__)

# A server inventing labels would otherwise create a retained topic per label, for ever.
MAX_LABELS = 64


class CountTracker:
    """Counts of one camera. Not thread-safe: call it from one thread, or under a lock.

    `labels` are the labels whose count is published from the first message on even when absent
    (0): a retained count left on the broker by the previous run must not stay stale, and Home
    Assistant's count sensors need a value. Other labels appear when first seen.
    """

    def __init__(self, base: str, camera: str, labels: Iterable[str] = (), max_labels: int = MAX_LABELS):
        self.base = base
        self.camera = camera
        self._configured = tuple(dict.fromkeys(labels))
        self.max_labels = max(max_labels, len(self._configured))
        self.labels_dropped = 0  # detections not counted: their label came after the first max_labels
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
        first = self._published is None
        published = self._published if self._published is not None else {}
        now = self._within_cap(Counter(label for label in labels if label is not None), published)
        changes = []
        for label in dict.fromkeys([*(self._configured if first else ()), *published, *now]):
            count = now.get(label, 0)
            if published.get(label) != count:
                changes.append((count_topic(self.base, self.camera, label), count))
                published[label] = count
        self._published = published
        return changes

    def _within_cap(self, now: Counter, published: dict[str, int]) -> Counter:
        """`now` without the labels that would take this camera past `max_labels` distinct ones."""
        known = set(published) | set(self._configured)
        room = self.max_labels - len(known)
        kept: Counter = Counter()
        for label, n in now.items():
            if label in known or room > 0:
                room -= label not in known
                known.add(label)
                kept[label] = n
            else:
                if not self.labels_dropped:
                    log.warning("camera %s: more than %d distinct labels; further new labels are not "
                                "counted (no new count topics)", self.camera, self.max_labels)
                self.labels_dropped += n
        return kept

    def clear(self) -> list[tuple[str, int]]:
        """Every non-zero count back to 0 (the camera stops or leaves the config)."""
        return self.update(())

    def counts(self) -> dict[str, int]:
        """The counts last returned, by label."""
        return dict(self._published or {})
