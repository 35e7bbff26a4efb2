"""The MQTT contract in machine-checkable form: JSON Schemas of the payloads, and the topic names of
the per-label counts and snapshots. docs/mqtt.md explains both.

The schemas ship as package data (``focoos_edge/delivery/schemas/*.json``, JSON Schema Draft 2020-12).
`validate()` uses the ``jsonschema`` package, which is a test/consumer extra: the daemon itself
never imports it, so a box does not need it at run time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

# Schema name -> what its instance is. "json": the payload parsed as JSON; "text": the payload
# decoded as UTF-8 (availability is the plain string online/offline, not JSON).
SCHEMA_NAMES = ("detections", "camera_state", "inference_state", "stats", "availability", "count", "events",
                "detect_state")
_TEXT_SCHEMAS = frozenset({"availability", "detect_state"})

# Topic levels under {prefix}/{device_id}/{camera}/ that are not labels: a label with one of these
# names gets a suffix so its count cannot overwrite the camera's own topics.
CAMERA_TOPIC_LEVELS = frozenset({"detections", "state", "snapshot", "events", "zones", "detect"})
LABEL_SUFFIX = "_label"
_UNSAFE_LEVEL = re.compile(r"[\s/+#\x00-\x1f\x7f]+")
JPEG_MAGIC = b"\xff\xd8\xff"


class ContractError(ValueError):
    """A payload does not match its schema (or cannot be decoded); `errors` lists every problem."""

    def __init__(self, name: str, errors: list[str]):
        super().__init__(f"{name}: " + "; ".join(errors))
        self.name = name
        self.errors = errors


class SchemaNotFoundError(KeyError):
    """No schema of that name ships with the package."""


class ValidatorUnavailableError(RuntimeError):
    """`validate()` needs the `jsonschema` package (pip install 'focoos-edge[test]')."""


@cache
def _schema_text(name: str) -> str:
    if name not in SCHEMA_NAMES:
        raise SchemaNotFoundError(f"no schema named {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    return (resources.files("focoos_edge.delivery") / "schemas" / f"{name}.json").read_text(encoding="utf-8")


def schema(name: str) -> dict:
    """The JSON Schema `name` (one of SCHEMA_NAMES) as a fresh dict (callers may modify it)."""
    return json.loads(_schema_text(name))


def schemas() -> dict[str, dict]:
    """Every schema by name (what `focoos-edge schemas` prints)."""
    return {name: schema(name) for name in SCHEMA_NAMES}


@cache
def _validator(name: str) -> Any:
    try:
        import jsonschema  # consumer/test extra: never needed by the daemon
    except ImportError:
        raise ValidatorUnavailableError(
            "validating payloads needs the 'jsonschema' package: pip install 'jsonschema>=4.18'") from None
    doc = schema(name)
    cls = jsonschema.validators.validator_for(doc)
    return cls(doc, format_checker=cls.FORMAT_CHECKER)


def check(name: str, instance: Any) -> list[str]:
    """Every way `instance` breaks schema `name`, as 'path: message' strings; empty when valid."""
    errors = sorted(_validator(name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in errors]


def validate(name: str, instance: Any) -> None:
    """Raise ContractError when `instance` (decoded, see `decode`) does not match schema `name`."""
    if errors := check(name, instance):
        raise ContractError(name, errors)


def decode(name: str, payload: bytes) -> Any:
    """The instance a payload stands for: text for availability, parsed JSON for the others."""
    try:
        text = payload.decode("utf-8")
        return text if name in _TEXT_SCHEMAS else json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ContractError(name, [f"(payload): not {'UTF-8' if name in _TEXT_SCHEMAS else 'JSON'} ({exc})"]) from None


def validate_payload(name: str, payload: bytes) -> Any:
    """Decode and validate a raw MQTT payload; returns the decoded instance."""
    instance = decode(name, payload)
    validate(name, instance)
    return instance


# -- topics ----------------------------------------------------------------------------------
def label_level(label: str) -> str:
    """The topic level of a label's count: whitespace, '/', '+', '#' and control characters become
    '_' ('traffic light' -> 'traffic_light'); a label named like a camera topic gets '_label'."""
    level = _UNSAFE_LEVEL.sub("_", label) or "_"
    return level + LABEL_SUFFIX if level in CAMERA_TOPIC_LEVELS else level


def count_topic(base: str, camera: str, label: str) -> str:
    """`{prefix}/{device_id}/{camera}/{label}`; `base` is `{prefix}/{device_id}` (Topics.base)."""
    return f"{base}/{camera}/{label_level(label)}"


def snapshot_topic(base: str, camera: str) -> str:
    """`{prefix}/{device_id}/{camera}/snapshot`: retained annotated JPEG bytes."""
    return f"{base}/{camera}/snapshot"


@dataclass(frozen=True)
class TopicKind:
    """What a topic under the prefix carries: `schema` is None for the binary snapshot."""

    kind: str
    device_id: str
    camera: str | None = None
    label: str | None = None

    @property
    def schema(self) -> str | None:
        return {"snapshot": None, "event_snapshot": None, "detections": "detections", "state": "camera_state",
                "inference": "inference_state", "occupancy": "count",
                "detect_set": None}.get(self.kind, self.kind)


def classify_topic(topic: str, prefix: str) -> TopicKind | None:
    """Name what `topic` carries (None when it is not a focoos-edge topic under `prefix`)."""
    head = prefix.rstrip("/") + "/"
    if not topic.startswith(head):
        return None
    levels = topic[len(head):].split("/")
    if len(levels) == 2 and levels[1] in ("availability", "stats", "inference"):
        return TopicKind(levels[1], levels[0])
    if len(levels) > 3:
        return _camera_subtopic(levels)
    if len(levels) != 3:
        return None
    device, camera, last = levels
    if last in CAMERA_TOPIC_LEVELS:
        return TopicKind(last, device, camera)
    return TopicKind("count", device, camera, last)


def _camera_subtopic(levels: list[str]) -> TopicKind | None:
    """Topics deeper than `{device}/{camera}/x`: events snapshot, zone occupancy, detect switch."""
    device, camera, *rest = levels
    if rest == ["events", "snapshot"]:
        return TopicKind("event_snapshot", device, camera)
    if len(rest) == 3 and rest[0] == "zones":
        return TopicKind("occupancy", device, camera, rest[2])
    if len(rest) == 2 and rest[0] == "detect" and rest[1] in ("state", "set"):
        return TopicKind(f"detect_{rest[1]}", device, camera)
    return None
