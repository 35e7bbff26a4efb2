"""Plane geometry on normalized or pixel coordinates (pure): polygons for zones, boxes for filters
and the tracker. Small enough to own; no shapely on a Raspberry Pi for a point-in-polygon test."""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]
Box = tuple[float, float, float, float]  # x1, y1, x2, y2


def _orient(a: Point, b: Point, c: Point) -> float:
    return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])


def _on_segment(a: Point, b: Point, p: Point) -> bool:
    return min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def segments_cross(a: Point, b: Point, c: Point, d: Point) -> bool:
    """Do segments ab and cd share a point (touching counts)?"""
    o1, o2, o3, o4 = _orient(a, b, c), _orient(a, b, d), _orient(c, d, a), _orient(c, d, b)
    if ((o1 > 0) != (o2 > 0)) and ((o3 > 0) != (o4 > 0)) and 0 not in (o1, o2, o3, o4):
        return True
    return any(o == 0 and _on_segment(s, e, p) for o, s, e, p in
               ((o1, a, b, c), (o2, a, b, d), (o3, c, d, a), (o4, c, d, b)))


def self_intersection(polygon: Sequence[Point]) -> tuple[int, int] | None:
    """The indexes of two non-adjacent edges that touch or cross (edge i runs from point i to point
    i+1, closing back to 0), or None for a simple polygon."""
    n = len(polygon)
    edges = [(polygon[i], polygon[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # adjacent through the closing point
            if segments_cross(*edges[i], *edges[j]):
                return i, j
    return None


def area(polygon: Sequence[Point]) -> float:
    """Unsigned area (shoelace formula)."""
    n = len(polygon)
    return abs(sum(polygon[i][0] * polygon[(i + 1) % n][1] - polygon[(i + 1) % n][0] * polygon[i][1]
                   for i in range(n))) / 2


def contains(polygon: Sequence[Point], p: Point) -> bool:
    """Is `p` inside `polygon` (even-odd rule; a point on the boundary counts as inside)?"""
    inside = False
    n = len(polygon)
    for i in range(n):
        a, b = polygon[i], polygon[(i + 1) % n]
        if _orient(a, b, p) == 0 and _on_segment(a, b, p):
            return True
        if (a[1] > p[1]) != (b[1] > p[1]) and p[0] < a[0] + (p[1] - a[1]) * (b[0] - a[0]) / (b[1] - a[1]):
            inside = not inside
    return inside


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when either is empty)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def visible_share(polygons: Sequence[Sequence[Point]], region: Box = (0.0, 0.0, 1.0, 1.0), grid: int = 128) -> float:
    """The share of `region` that no polygon covers, sampled at the centres of a `grid` x `grid`
    raster of the region (normalized coordinates). Pure Python: the config check needs no OpenCV."""
    x1, y1, x2, y2 = region
    centres = [(x1 + (x2 - x1) * (i + 0.5) / grid, y1 + (y2 - y1) * (j + 0.5) / grid)
               for j in range(grid) for i in range(grid)]
    free = [p for p in centres if not any(contains(poly, p) for poly in polygons)]
    return len(free) / len(centres)
