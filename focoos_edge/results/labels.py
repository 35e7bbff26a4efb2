"""Labels the results stage's config names (pure), for the start-up check against the model's
classes: `(camera, key path, label)` triples, e.g. `("front_door", "filters.person", "person")`."""

from __future__ import annotations

from collections.abc import Iterator

from focoos_edge.config.models import Config
from focoos_edge.results.filters import ANY_LABEL


def named_labels(config: Config) -> Iterator[tuple[str, str, str]]:
    """Every label named by a camera's `filters` keys (not `*`) and its zones' `labels`."""
    for cam in config.cameras:
        for label in cam.filters:
            if label != ANY_LABEL:
                yield cam.name, f"filters.{label}", label
        for name, zone in cam.zones.items():
            for label in zone.labels or ():
                yield cam.name, f"zones.{name}.labels", label
