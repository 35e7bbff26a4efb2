"""Zones (pure): which zones a detection is in, and the retained occupancy per zone and label.

A detection is in a zone when the bottom-centre of its box (where an object stands on the ground)
lies inside the zone's polygon, and its label is one of the zone's `labels` when those are given.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from focoos_edge.common import contains
from focoos_edge.config import ZoneConfig
from focoos_edge.delivery import label_level
from focoos_edge.inference import Detection


def anchor(bbox: Sequence[float], width: int, height: int) -> tuple[float, float]:
    """The bottom-centre of a pixel box, normalized to the frame."""
    return ((bbox[0] + bbox[2]) / 2 / max(width, 1), bbox[3] / max(height, 1))


def zones_of(det: Detection, zones: Mapping[str, ZoneConfig], width: int, height: int) -> tuple[str, ...]:
    """The names of the zones `det` is in, in config order (none without a box)."""
    if det.bbox is None or not zones:
        return ()
    point = anchor(det.bbox, width, height)
    return tuple(name for name, zone in zones.items()
                 if (zone.labels is None or det.label in zone.labels) and contains(zone.polygon, point))


def occupancy_topic(base: str, camera: str, zone: str, label: str) -> str:
    """`{prefix}/{device_id}/{camera}/zones/{zone}/{label}`: retained count."""
    return f"{base}/{camera}/zones/{zone}/{label_level(label)}"


class Occupancy:
    """Retained occupancy of one camera's zones. Not thread-safe (the stage calls it under a lock).

    Only changes come back; a zone's configured labels start at 0 so a stale retained value of the
    last run is overwritten; other labels appear when first seen and go back to 0 once empty."""

    def __init__(self, base: str, camera: str, zones: Mapping[str, ZoneConfig]):
        self.base, self.camera = base, camera
        self.zones = dict(zones)
        self._published: dict[tuple[str, str], int] = {
            (name, label): -1 for name, zone in zones.items() for label in (zone.labels or ())}
        self._latest_ns = -1

    def update(self, found: Iterable[tuple[str | None, Sequence[str]]], captured_at_ns: int) -> list[tuple[str, int]]:
        """`found`: (label, zones) of each detection of a frame; returns the (topic, count) changes.
        A frame older than one already counted changes nothing (results can finish out of order)."""
        if captured_at_ns < self._latest_ns:
            return []
        self._latest_ns = captured_at_ns
        now = Counter((zone, label) for label, zones in found if label is not None for zone in zones)
        return self._changes(now)

    def clear(self) -> list[tuple[str, int]]:
        """Every non-zero occupancy back to 0 (the camera leaves the config or the daemon stops)."""
        return self._changes(Counter())

    def _changes(self, now: Counter) -> list[tuple[str, int]]:
        out = []
        for key in dict.fromkeys([*self._published, *now]):
            if self._published.get(key) != now.get(key, 0):
                self._published[key] = now.get(key, 0)
                out.append((occupancy_topic(self.base, self.camera, *key), now.get(key, 0)))
        return out
