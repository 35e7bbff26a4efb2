"""Config keys that name a class the model does not have (pure functions).

A misspelt label (``labels: [preson]``) or a threshold for a class the model lacks silently
filters everything out. At start, once the model info (its ``classes``) is known, every label
the config names is checked; each unknown one gives a warning naming the camera, the key and the
closest class names. The check takes ``(camera, key, label)`` triples, so any config part that
names labels (labels, thresholds, snapshot labels; filters and zones) plugs in.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from focoos_edge.config.models import Config

LabelRef = tuple[str, str, str]  # (camera, key, label)


def label_references(config: Config) -> list[LabelRef]:
    """Every (camera, key, label) the config names: labels, per-label thresholds, snapshot labels,
    filters (not `*`) and zone labels."""
    refs: list[LabelRef] = []
    for cam in config.cameras:
        refs += [(cam.name, "labels", label) for label in cam.labels or ()]
        refs += [(cam.name, f"thresholds.{label}", label) for label in cam.thresholds or {}]
        if cam.snapshot is not None:
            refs += [(cam.name, "snapshot.labels", label) for label in cam.snapshot.labels or ()]
        refs += [(cam.name, f"filters.{label}", label) for label in cam.filters if label != "*"]
        refs += [(cam.name, f"zones.{name}.labels", label)
                 for name, zone in cam.zones.items() for label in zone.labels or ()]
    return refs


def class_warnings(refs: Iterable[LabelRef], classes: Sequence[str], model_ref: str) -> list[str]:
    """One line per reference to a class not in ``classes`` (none when the model lists no classes)."""
    if not classes:
        return []
    known = set(classes)
    warnings = []
    for camera, key, label in refs:
        if label in known or label == "*":
            continue
        close = difflib.get_close_matches(label, classes, n=3, cutoff=0.6)
        hint = f"closest: {', '.join(close)}" if close else "no similar class"
        warnings.append(f"camera {camera}: {key}: {label!r} is not a class of model {model_ref} ({hint})")
    return warnings
