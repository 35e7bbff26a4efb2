"""Per-label filters (pure): applied before anything is published, so detections, counts,
snapshots, zones and events all see the same set."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from focoos_edge.config import FilterConfig
from focoos_edge.inference import Detection

ANY_LABEL = "*"


def filter_for(label: str | None, filters: Mapping[str, FilterConfig]) -> FilterConfig | None:
    """The label's own filter, else the `*` one, else None (a label's filter replaces `*`, so a
    label can be let through with looser bounds than the rest)."""
    own = filters.get(label) if label is not None else None
    return own if own is not None else filters.get(ANY_LABEL)


def _within(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def passes(det: Detection, flt: FilterConfig, width: int, height: int) -> bool:
    """Does `det` (original-frame pixels of a `width` x `height` frame) meet `flt`? Area and ratio
    bounds need a box: a detection without one is judged on its score only."""
    if flt.min_score is not None and det.conf < flt.min_score:
        return False
    if det.bbox is None:
        return True
    w, h = det.bbox[2] - det.bbox[0], det.bbox[3] - det.bbox[1]
    frame_area = float(width * height) or 1.0
    if not _within(w * h / frame_area, flt.min_area, flt.max_area):
        return False
    if flt.min_ratio is None and flt.max_ratio is None:
        return True
    return h > 0 and _within(w / h, flt.min_ratio, flt.max_ratio)


def apply_filters(dets: Iterable[Detection], filters: Mapping[str, FilterConfig], width: int,
                  height: int) -> list[Detection]:
    """The detections that pass their label's filter (all of them when `filters` is empty)."""
    out = []
    for det in dets:
        flt = filter_for(det.label, filters)
        if flt is None or passes(det, flt, width, height):
            out.append(det)
    return out
