"""The results stage's per-frame cost (pure work: filters, zones, tracker), for scripts/bench.py.

Frames hold `objects` boxes walking across a 1920x1080 frame (each moves 20 px per sampled frame,
so IoU matching keeps them), plus a fresh flicker box every frame that never becomes an event.
The baseline is the v1 results path on the same frames: scale back to the frame and the
label/threshold filter, measured in the same process.
"""

from __future__ import annotations

import time

from focoos_edge.config.results import EventsConfig, FilterConfig, ZoneConfig
from focoos_edge.delivery.messages import keeps
from focoos_edge.inference.geometry import map_to_frame
from focoos_edge.inference.parse import Detection
from focoos_edge.results.filters import apply_filters
from focoos_edge.results.track import NS, Seen, Tracker
from focoos_edge.results.zones import zones_of

W, H = 1920, 1080
ZONES = {"left": ZoneConfig(polygon=((0, 0.5), (0.5, 0.5), (0.5, 1), (0, 1))),
         "right": ZoneConfig(polygon=((0.5, 0.5), (1, 0.5), (1, 1), (0.6, 1), (0.55, 0.8)), labels=("person",))}
FILTERS = {"*": FilterConfig(min_area=0.0005), "person": FilterConfig(min_score=0.5, max_ratio=2.0)}


def frames(objects: int, count: int) -> list[list[Detection]]:
    """`count` frames in uploaded-image pixels (scale 1/3)."""
    out = []
    for i in range(count):
        dets = [Detection("person" if k % 2 else "car", k % 80, 0.6 + (k % 4) / 10,
                          ((40 + 20 * i + 50 * k) % 600, 20 + 30 * k % 300, (40 + 20 * i + 50 * k) % 600 + 40,
                           20 + 30 * k % 300 + 60)) for k in range(objects)]
        dets.append(Detection("dog", 16, 0.7, (i % 600, 5, i % 600 + 30, 35)))  # flicker
        out.append(dets)
    return out


def baseline(batch: list[list[Detection]]) -> None:
    for dets in batch:
        [d for d in map_to_frame(dets, scale=1 / 3, width=W, height=H) if keeps(d.label, d.conf, None, 0.5)]


def stage(batch: list[list[Detection]]) -> None:
    tracker = Tracker("cam", EventsConfig(min_frames=2, end_after_s=5))
    for i, dets in enumerate(batch):
        mapped = map_to_frame(dets, scale=1 / 3, width=W, height=H)
        kept = apply_filters([d for d in mapped if keeps(d.label, d.conf, None, 0.5)], FILTERS, W, H)
        seen = [Seen(d.label or "", d.conf, d.bbox, zones_of(d, ZONES, W, H)) for d in kept if d.bbox]
        tracker.step(seen, i * NS // 2)


def per_frame_us(fn, batch: list[list[Detection]], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):  # best of: the figure of an unloaded core
        t = time.perf_counter()
        fn(batch)
        best = min(best, time.perf_counter() - t)
    return best / len(batch) * 1e6


def rows(objects_list: tuple[int, ...] = (1, 10, 50), count: int = 2000) -> list[tuple]:
    """(case, figure, baseline, ratio, target, met) rows for bench.py."""
    out = []
    for objects in objects_list:
        batch = frames(objects, count)
        base, full = per_frame_us(baseline, batch), per_frame_us(stage, batch)
        out.append((f"results stage per frame, {objects} objects (filters + 2 zones + tracker), us",
                    f"{full:.0f}", f"{base:.0f} (v1: scale + thresholds)", full / base, "-", "-"))
    return out


if __name__ == "__main__":
    for r in rows():
        print(" | ".join(str(c) if not isinstance(c, float) else f"{c:.2f}" for c in r))
