"""Home Assistant MQTT discovery payloads (pure).

One device for the box (the inference-state enum sensor lives there) and one device per camera,
linked to the box with `via_device`, holding: a connectivity binary sensor, a count sensor per
configured label (only with `counts: true`), an occupancy binary sensor per zone and label, a
camera entity for the snapshot (and one for the event snapshot), a `detect` switch (only with
`mqtt.control: true`) and diagnostic sensors (fps, inference latency, backlog) disabled by default.

Every entity is unavailable while the box's availability topic says `offline`. Configs are
published retained on `{discovery_prefix}/{component}/{node_id}/{object_id}/config`, and again
whenever Home Assistant announces itself with `online` on `{discovery_prefix}/status`. Checked
against Home Assistant's MQTT discovery schemas (see tests/test_homeassistant.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from focoos_edge.delivery import count_topic, label_level, snapshot_topic

DEFAULT_DISCOVERY_PREFIX = "homeassistant"
ORIGIN_NAME = "focoos-edge"
_UNSAFE_ID = re.compile(r"[^a-zA-Z0-9_-]+")

# What Home Assistant needs for each component this module emits (checked by the tests and by
# scripts/mqtt_monitor.py); "availability" means availability_topic or an availability list.
REQUIRED_KEYS: Mapping[str, tuple[str, ...]] = {
    "binary_sensor": ("state_topic", "unique_id", "device", "origin", "availability"),
    "sensor": ("state_topic", "unique_id", "device", "origin", "availability"),
    "camera": ("topic", "unique_id", "device", "origin", "availability"),
    "switch": ("command_topic", "state_topic", "unique_id", "device", "origin", "availability"),
    "device_automation": ("automation_type", "topic", "type", "subtype", "device"),
}
# The inference link's states (schemas/inference_state.json): the options of the enum sensor.
INFERENCE_STATES = ("starting", "ok", "model_not_ready", "auth_failed", "model_not_found", "rate_limited",
                    "unreachable", "timeout", "server_error", "malformed_response", "rejected", "error",
                    "quota_exhausted")
# Home Assistant refuses `state` (and a few other keys) as attributes: the camera state JSON is
# renamed into attributes it accepts, so reconnecting/offline and the detail reach Home Assistant.
CAMERA_ATTRIBUTES = ("{{ {'camera_state': value_json.state, 'since': value_json.since, 'fps': value_json.fps, "
                     "'detail': value_json.detail | default(none)} | tojson }}")
INFERENCE_ATTRIBUTES = ("{{ {'since': value_json.since, 'model_ref': value_json.model_ref, "
                        "'detail': value_json.detail | default(none)} | tojson }}")


@dataclass(frozen=True)
class HaCamera:
    """What discovery needs of one camera: count sensors for `labels`, a camera entity if `snapshot`."""

    name: str
    labels: tuple[str, ...] = ()
    snapshot: bool = False
    zones: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (zone, labels with an occupancy sensor)
    control: bool = False  # a detect switch
    events: bool = False  # an event snapshot camera entity (with `snapshot`)


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
    box = {"identifiers": [f"focoos_edge_{node}"], "name": device_id, "model": "focoos-edge", "sw_version": version}
    common = {
        "origin": {"name": ORIGIN_NAME, "sw_version": version},
        "availability": [{"topic": f"{topic_base}/availability", "payload_available": "online",
                          "payload_not_available": "offline"}],
        "qos": 1,
    }

    def message(component: str, object_id: str, name: str, device: dict, **fields: Any) -> DiscoveryMessage:
        payload = {"name": name, "unique_id": f"focoos_edge_{node}_{object_id}", "device": device, **common,
                   **fields}
        return DiscoveryMessage(f"{discovery_prefix}/{component}/{node}/{object_id}/config", payload)

    out = [message("sensor", "inference_state", "Inference", box, state_topic=f"{topic_base}/inference",
                   value_template="{{ value_json.state }}", device_class="enum", options=list(INFERENCE_STATES),
                   json_attributes_topic=f"{topic_base}/inference", json_attributes_template=INFERENCE_ATTRIBUTES,
                   entity_category="diagnostic", icon="mdi:cloud-check")]
    for cam in cameras:
        device = {"identifiers": [f"focoos_edge_{node}_{cam.name}"], "name": f"{device_id} {_title(cam.name)}",
                  "model": "focoos-edge camera", "sw_version": version, "via_device": f"focoos_edge_{node}"}
        out += _camera_messages(cam, topic_base, lambda *a, d=device, **k: message(a[0], a[1], a[2], d, **k))
    return out


def _camera_messages(cam: HaCamera, base: str, message: Any) -> list[DiscoveryMessage]:
    """A camera's entities; entity names are short: Home Assistant prefixes the device's name."""
    state = f"{base}/{cam.name}/state"
    out = [message("binary_sensor", f"{cam.name}_connectivity", "Connected", state_topic=state,
                   json_attributes_topic=state, json_attributes_template=CAMERA_ATTRIBUTES,
                   device_class="connectivity", payload_on="ON", payload_off="OFF",
                   value_template="{{ 'ON' if value_json.state == 'streaming' else 'OFF' }}")]
    for label in dict.fromkeys(cam.labels):
        out.append(message("sensor", f"{cam.name}_{_slug(label)}_count", f"{label} count",
                           state_topic=count_topic(base, cam.name, label), state_class="measurement",
                           unit_of_measurement="objects", icon="mdi:counter"))
    for zone, labels in cam.zones:
        for label in dict.fromkeys(labels):
            out.append(message(
                "binary_sensor", f"{cam.name}_{zone}_{_slug(label)}_occupancy", f"{zone} {label}",
                state_topic=f"{base}/{cam.name}/zones/{zone}/{label_level(label)}", device_class="occupancy",
                value_template="{{ 'ON' if (value | int(0)) > 0 else 'OFF' }}", payload_on="ON", payload_off="OFF"))
    if cam.snapshot:
        out.append(message("camera", f"{cam.name}_snapshot", "Snapshot", topic=snapshot_topic(base, cam.name)))
        if cam.events:
            out.append(message("camera", f"{cam.name}_event_snapshot", "Event snapshot",
                               topic=f"{base}/{cam.name}/events/snapshot"))
    if cam.events:
        out += _event_triggers(cam.name, base, message)
    if cam.control:
        out.append(message("switch", f"{cam.name}_detect", "Detect", icon="mdi:motion-sensor",
                           command_topic=f"{base}/{cam.name}/detect/set",
                           state_topic=f"{base}/{cam.name}/detect/state", payload_on="ON", payload_off="OFF"))
    return out + _diagnostics(cam.name, base, message)


def _event_triggers(camera: str, base: str, message: Any) -> list[DiscoveryMessage]:
    """Device triggers on the camera's events topic ("an object appeared" / "an object left"): they
    show up in Home Assistant's automation editor under the camera's device."""
    out = []
    for kind, trigger in (("new", "object_appeared"), ("end", "object_left")):
        msg = message("device_automation", f"{camera}_event_{kind}", "", automation_type="trigger",
                      topic=f"{base}/{camera}/events", type=trigger, subtype="any_object",
                      value_template="{{ value_json.type }}", payload=kind)
        # Device triggers are not entities: no name, unique_id or availability (HA drops them).
        for key in ("name", "unique_id", "availability"):
            msg.payload.pop(key, None)
        out.append(msg)
    return out


def _diagnostics(camera: str, base: str, message: Any) -> list[DiscoveryMessage]:
    """fps, inference latency and backlog from the stats topic: diagnostic, disabled by default
    (a user enables the ones they want to graph)."""
    path = f"value_json.cameras['{camera}']"
    specs = (("fps", "Capture fps", f"{{{{ {path}.fps }}}}", "fps", None),
             ("latency", "Inference latency", f"{{{{ {path}.inference_ms.p50 }}}}", "ms", "duration"),
             ("backlog", "Backlog", f"{{{{ {path}.pending }}}}", "frames", None))
    out = []
    for key, name, template, unit, device_class in specs:
        extra = {"device_class": device_class} if device_class else {}
        out.append(message("sensor", f"{camera}_{key}", name, state_topic=f"{base}/stats", value_template=template,
                           unit_of_measurement=unit, state_class="measurement", entity_category="diagnostic",
                           enabled_by_default=False, **extra))
    return out


def removed_topics(old: Iterable[DiscoveryMessage], new: Iterable[DiscoveryMessage]) -> list[str]:
    """Config topics published before and gone now (a camera or label left the config): publish
    an empty retained payload on each so Home Assistant deletes the entity."""
    keep = {m.topic for m in new}
    return [m.topic for m in old if m.topic not in keep]


def missing_keys(component: str, payload: Mapping[str, Any]) -> list[str]:
    """What `payload` lacks to be a usable config for `component` (empty when complete)."""
    missing = [k for k in REQUIRED_KEYS.get(component, ()) if k not in payload]
    if component == "device_automation":
        return missing
    if "availability" in missing and "availability_topic" in payload:
        missing.remove("availability")
    if component == "binary_sensor" and "value_template" not in payload and not (
            "payload_on" in payload and "payload_off" in payload):
        missing.append("payload_on/payload_off or value_template")
    if component == "sensor" and not ({"unit_of_measurement", "state_class"} & payload.keys()) and not (
            payload.get("device_class") == "enum" and payload.get("options")):
        missing.append("unit_of_measurement or state_class (or device_class enum with options)")
    if "device" in payload and not payload["device"].get("identifiers"):
        missing.append("device.identifiers")
    return missing
