"""Config models of the results stage: per-camera `zones` and `filters`, and `events` (top level,
overridable per camera). Geometry checks live in :mod:`focoos_edge.common.geometry`."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from focoos_edge.common import area, self_intersection
from focoos_edge.config.load import located_error
from focoos_edge.config.types import Unit, _Model

NormPoint = tuple[Unit, Unit]
ZONE_NAME = r"^[a-z0-9_-]+$"


class FilterConfig(_Model):
    """Bounds a detection must meet to be kept (each optional)."""

    min_score: Unit | None = Field(None, description="Minimum confidence (on top of the thresholds).")
    min_area: Unit | None = Field(None, description="Minimum box area as a fraction of the frame area.")
    max_area: Unit | None = Field(None, description="Maximum box area as a fraction of the frame area.")
    min_ratio: float | None = Field(None, gt=0, description="Minimum box width / height.")
    max_ratio: float | None = Field(None, gt=0, description="Maximum box width / height.")

    @model_validator(mode="after")
    def _ordered(self) -> FilterConfig:
        for low, high in (("min_area", "max_area"), ("min_ratio", "max_ratio")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise located_error((high,), "filter_bounds", f"must not be below {low} ({lo})")
        return self


class ZoneConfig(_Model):
    """A zone: a simple polygon in normalized coordinates (0..1, x right, y down)."""

    polygon: tuple[NormPoint, ...] = Field(
        min_length=3, description="Corners [[x, y], ...] normalized to the frame; at least 3, not self-intersecting.")
    labels: tuple[Annotated[str, Field(min_length=1)], ...] | None = Field(
        None, min_length=1, description="Only these labels count in the zone (default: any).")

    @model_validator(mode="after")
    def _simple(self) -> ZoneConfig:
        if (edges := self_intersection(self.polygon)) is not None:
            raise located_error(("polygon",), "zone_self_intersecting",
                                f"edges {edges[0]} and {edges[1]} cross: the polygon must not intersect itself")
        if area(self.polygon) == 0:
            raise located_error(("polygon",), "zone_empty", "the polygon has no area")
        return self


class EventsConfig(_Model):
    """Events (new/update/end) from the tracker."""

    enabled: bool = Field(True, description="Track objects and publish events on .../<camera>/events.")
    min_frames: int = Field(2, ge=1, le=100, description="Consecutive sampled frames before an object is an event.")
    end_after_s: float = Field(5, gt=0, le=3600, description="An object unseen this long ends its event.")
    stationary_after_s: float = Field(30, gt=0, description="An object that has not moved this long is stationary.")
    min_iou: float = Field(0.3, gt=0, le=1, description="Least box overlap that matches an object frame to frame.")


class EventsOverride(_Model):
    """A camera's changes to the top-level `events` (any key; the others are inherited)."""

    enabled: bool | None = Field(None, description="See events.enabled.")
    min_frames: int | None = Field(None, ge=1, le=100, description="See events.min_frames.")
    end_after_s: float | None = Field(None, gt=0, le=3600, description="See events.end_after_s.")
    stationary_after_s: float | None = Field(None, gt=0, description="See events.stationary_after_s.")
    min_iou: float | None = Field(None, gt=0, le=1, description="See events.min_iou.")

    def over(self, base: EventsConfig) -> EventsConfig:
        """`base` with this override's keys applied."""
        return base.model_copy(update={k: v for k, v in self.model_dump().items() if v is not None})
