"""Home Assistant MQTT discovery payloads (pure): one device per box, and per camera a connectivity
binary sensor, a count sensor per configured label and, when snapshots are on, a camera entity.

Every entity is read-only (no command topics) and unavailable while the box's availability topic
says `offline`. Configs are published retained on
`{discovery_prefix}/{component}/{node_id}/{object_id}/config`, and again whenever Home Assistant
announces itself with `online` on `{discovery_prefix}/status`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from focoos_edge.delivery.contract import count_topic, snapshot_topic

DEFAULT_DISCOVERY_PREFIX = "homeassistant"
ORIGIN_NAME = "focoos-edge"
_UNSAFE_ID = re.compile(r"[^a-zA-Z0-9_-]+")

# What Home Assistant needs for each component this module emits (checked by the tests and by
# scripts/mqtt_monitor.py); "availability" means availability_topic or an availability list.
REQUIRED_KEYS: Mapping[str, tuple[str, ...]] = {
    "binary_sensor": ("state_topic", "unique_id", "device", "origin", "availability"),
    "sensor": ("state_topic", "unique_id", "device", "origin", "availability"),
    "camera": ("topic", "unique_id", "device", "origin", "availability"),
}


@dataclass(frozen=True)
class HaCamera:
    """What discovery needs of one camera: count sensors for `labels`, a camera entity if `snapshot`."""

    name: str
    labels: tuple[str, ...] = ()
    snapshot: bool = False


@dataclass(frozen=True)
class DiscoveryMessage:
    """One retained discovery config."""

    topic: str
    payload: dict[str, Any]


def node_id(device_id: str) -> str:
    """The discovery topic's node_id: device_id with anything outside [a-zA-Z0-9_-] as '_'."""
    return _UNSAFE_ID.sub("_", device_id)


def _slug(text: str) -> str:
    return _UNSAFE_ID.sub("_", text.strip().lower()).strip("_") or "_"


def _title(camera: str) -> str:
    return camera.replace("_", " ").replace("-", " ").strip().capitalize() or camera


def status_topic(discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX) -> str:
    """Where Home Assistant publishes its birth (`online`) and will (`offline`) messages."""
    return f"{discovery_prefix}/status"


def is_birth(topic: str, payload: bytes, discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX) -> bool:
    """True for Home Assistant's `online` announcement: time to publish the configs again."""
    return topic == status_topic(discovery_prefix) and payload.strip() == b"online"


def discovery_messages(*, topic_base: str, device_id: str, cameras: Sequence[HaCamera], version: str,
                       discovery_prefix: str = DEFAULT_DISCOVERY_PREFIX) -> list[DiscoveryMessage]:
    """Every discovery config of the box. `topic_base` is `{prefix}/{device_id}` (Topics.base)."""
    node = node_id(device_id)
    common = {
        "device": {"identifiers": [f"focoos_edge_{node}"], "name": device_id, "model": "focoos-edge",
                   "sw_version": version},
        "origin": {"name": ORIGIN_NAME, "sw_version": version},
        "availability": [{"topic": f"{topic_base}/availability", "payload_available": "online",
                          "payload_not_available": "offline"}],
        "qos": 1,
    }

    def message(component: str, object_id: str, name: str, **fields: Any) -> DiscoveryMessage:
        payload = {"name": name, "unique_id": f"focoos_edge_{node}_{object_id}", **common, **fields}
        return DiscoveryMessage(f"{discovery_prefix}/{component}/{node}/{object_id}/config", payload)

    out = []
    for cam in cameras:
        title = _title(cam.name)
        state = f"{topic_base}/{cam.name}/state"
        out.append(message(
            "binary_sensor", f"{cam.name}_connectivity", f"{title} connected",
            state_topic=state, json_attributes_topic=state, device_class="connectivity",
            value_template="{{ 'ON' if value_json.state == 'streaming' else 'OFF' }}",
            payload_on="ON", payload_off="OFF"))
        for label in dict.fromkeys(cam.labels):
            out.append(message(
                "sensor", f"{cam.name}_{_slug(label)}_count", f"{title} {label} count",
                state_topic=count_topic(topic_base, cam.name, label), state_class="measurement",
                unit_of_measurement="objects", icon="mdi:counter"))
        if cam.snapshot:
            out.append(message("camera", f"{cam.name}_snapshot", f"{title} snapshot",
                               topic=snapshot_topic(topic_base, cam.name)))
    return out


def removed_topics(old: Iterable[DiscoveryMessage], new: Iterable[DiscoveryMessage]) -> list[str]:
    """Config topics published before and gone now (a camera or label left the config): publish
    an empty retained payload on each so Home Assistant deletes the entity."""
    keep = {m.topic for m in new}
    return [m.topic for m in old if m.topic not in keep]


def missing_keys(component: str, payload: Mapping[str, Any]) -> list[str]:
    """What `payload` lacks to be a usable config for `component` (empty when complete)."""
    missing = [k for k in REQUIRED_KEYS.get(component, ()) if k not in payload]
    if "availability" in missing and "availability_topic" in payload:
        missing.remove("availability")
    if component == "binary_sensor" and "value_template" not in payload and not (
            "payload_on" in payload and "payload_off" in payload):
        missing.append("payload_on/payload_off or value_template")
    if component == "sensor" and not ({"unit_of_measurement", "state_class"} & payload.keys()):
        missing.append("unit_of_measurement or state_class")
    if "device" in payload and not payload["device"].get("identifiers"):
        missing.append("device.identifiers")
    return missing
