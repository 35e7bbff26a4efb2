"""Home Assistant discovery payloads: topics, required keys per component, availability, no command
topics, and state topics that are the ones the daemon actually publishes."""

from __future__ import annotations

import json

import jinja2.sandbox
import pytest

from focoos_edge import __version__
from focoos_edge.delivery import contract
from focoos_edge.delivery.messages import Topics, camera_state_payload
from focoos_edge.subscribers.counts import CountTracker
from focoos_edge.subscribers.homeassistant import (
    REQUIRED_KEYS,
    DiscoveryMessage,
    HaCamera,
    discovery_messages,
    is_birth,
    missing_keys,
    node_id,
    removed_topics,
    status_topic,
)

TOPICS = Topics("focoos", "edge.01")
CAMERAS = [HaCamera("front_door", labels=("person", "traffic light"), snapshot=True), HaCamera("yard")]


def messages(cameras=CAMERAS, prefix="homeassistant") -> list[DiscoveryMessage]:
    return discovery_messages(topic_base=TOPICS.base, device_id="edge.01", cameras=cameras,
                              version=__version__, discovery_prefix=prefix)


def by_object(msgs) -> dict[str, DiscoveryMessage]:
    return {m.topic.split("/")[3]: m for m in msgs}


def test_topics_follow_the_discovery_layout():
    msgs = messages()
    diagnostics = [f"homeassistant/sensor/edge_01/{cam}_{key}/config"
                   for cam in ("front_door", "yard") for key in ("fps", "latency", "backlog")]
    assert sorted(m.topic for m in msgs) == sorted([
        "homeassistant/sensor/edge_01/inference_state/config",
        "homeassistant/binary_sensor/edge_01/front_door_connectivity/config",
        "homeassistant/sensor/edge_01/front_door_person_count/config",
        "homeassistant/sensor/edge_01/front_door_traffic_light_count/config",
        "homeassistant/camera/edge_01/front_door_snapshot/config",
        "homeassistant/binary_sensor/edge_01/yard_connectivity/config",
        *diagnostics,
    ])
    assert node_id("edge.01") == "edge_01"
    assert all(m.topic.startswith("ha/") for m in messages(prefix="ha"))


def test_every_payload_has_what_its_component_needs():
    for m in messages():
        component = m.topic.split("/")[1]
        assert component in REQUIRED_KEYS
        assert missing_keys(component, m.payload) == [], m.topic
        json.dumps(m.payload)  # the wire form is JSON


def test_one_device_per_camera_linked_to_the_box_and_ids_unique():
    msgs = messages()
    assert len({m.payload["unique_id"] for m in msgs}) == len(msgs)
    box = {"identifiers": ["focoos_edge_edge_01"], "name": "edge.01", "model": "focoos-edge",
           "sw_version": __version__}
    for m in msgs:
        assert m.payload["availability"] == [{"topic": TOPICS.availability, "payload_available": "online",
                                              "payload_not_available": "offline"}]
        assert m.payload["origin"]["name"] == "focoos-edge"
        object_id = m.topic.split("/")[3]
        camera = next((c.name for c in CAMERAS if object_id.startswith(c.name + "_")), None)
        if camera is None:
            assert m.payload["device"] == box, m.topic
        else:
            assert m.payload["device"]["identifiers"] == [f"focoos_edge_edge_01_{camera}"]
            assert m.payload["device"]["via_device"] == "focoos_edge_edge_01"


def test_no_entity_can_send_commands_without_control():
    for m in messages():
        assert not [k for k in m.payload if "command" in k], m.topic


def test_connectivity_reads_the_retained_camera_state():
    sensor = by_object(messages())["front_door_connectivity"].payload
    assert sensor["state_topic"] == TOPICS.camera_state("front_door")
    assert sensor["device_class"] == "connectivity"
    assert "value_json.state == 'streaming'" in sensor["value_template"]
    assert (sensor["payload_on"], sensor["payload_off"]) == ("ON", "OFF")


def test_count_sensors_read_the_topics_the_count_tracker_publishes():
    tracker = CountTracker(TOPICS.base, "front_door", labels=("person", "traffic light"))
    published = {t for t, _ in tracker.update([])}
    sensors = {m.payload["state_topic"] for m in messages() if m.topic.endswith("_count/config")}
    assert sensors == published
    person = by_object(messages())["front_door_person_count"].payload
    assert person["state_class"] == "measurement"
    assert contract.classify_topic(person["state_topic"], "focoos").kind == "count"


def test_a_camera_entity_only_where_snapshots_are_on():
    cams = [m for m in messages() if m.topic.split("/")[1] == "camera"]
    assert [m.payload["topic"] for m in cams] == [contract.snapshot_topic(TOPICS.base, "front_door")]


def test_home_assistant_birth_is_recognised():
    assert status_topic() == "homeassistant/status"
    assert is_birth("homeassistant/status", b"online")
    assert not is_birth("homeassistant/status", b"offline")
    assert not is_birth("ha/status", b"online")
    assert is_birth("ha/status", b"online", "ha")


def test_entities_of_a_removed_camera_or_label_are_deleted():
    old = messages()
    new = messages([HaCamera("front_door", labels=("person",))])
    assert sorted(removed_topics(old, new)) == sorted([
        "homeassistant/sensor/edge_01/front_door_traffic_light_count/config",
        "homeassistant/camera/edge_01/front_door_snapshot/config",
        "homeassistant/binary_sensor/edge_01/yard_connectivity/config",
        *(f"homeassistant/sensor/edge_01/yard_{key}/config" for key in ("fps", "latency", "backlog")),
    ])


@pytest.mark.parametrize("component,drop", [
    ("binary_sensor", "state_topic"), ("binary_sensor", "value_template"), ("sensor", "state_class"),
    ("sensor", "unique_id"), ("camera", "topic"), ("camera", "availability"), ("camera", "device"),
])
def test_the_checker_notices_what_is_missing(component, drop):
    msg = next(m for m in messages() if m.topic.split("/")[1] == component and "inference_state" not in m.topic)
    payload = dict(msg.payload)
    payload.pop(drop)
    if drop == "value_template":
        payload.pop("payload_on")
    if drop == "state_class":
        payload.pop("unit_of_measurement")
    assert missing_keys(component, payload)
    if drop == "availability":
        assert missing_keys(component, {**payload, "availability_topic": TOPICS.availability}) == []


# -- v1.1: devices, zones, control, diagnostics, attributes ---------------------------------------------
# Home Assistant's own rules, read in homeassistant/components/mqtt: entity.py MQTT_ATTRIBUTES_BLOCKED
# (keys it drops from attributes), sensor.py validate_sensor_state_and_device_class_config (options
# only with device_class enum, never with state_class/unit), switch.py (command_topic, payload_on/off).
HA_BLOCKED_ATTRIBUTES = {"assumed_state", "available", "device_class", "device_info", "entity_category",
                         "entity_picture", "entity_registry_enabled_default", "extra_state_attributes",
                         "force_update", "icon", "name", "should_poll", "state", "supported_features",
                         "unique_id", "unit_of_measurement", "friendly_name"}
FULL = [HaCamera("front_door", labels=("person",), snapshot=True, zones=(("door", ("person", "dog")),),
                 control=True, events=True)]


def render(template: str, payload: str) -> str:
    """Render a template as Home Assistant does: Jinja2 (sandboxed) with `value` and `value_json`."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment()
    value_json = json.loads(payload) if payload[:1] in "{[" else None
    return env.from_string(template).render(value=payload, value_json=value_json)


def camera_state(state: str, detail: str | None = None) -> str:
    payload = camera_state_payload(state, 1764186000.0, 12.5, detail)
    contract.validate("camera_state", payload)
    return json.dumps(payload)


def test_every_v11_payload_follows_home_assistant_rules():
    for m in messages(FULL):
        component, p = m.topic.split("/")[1], m.payload
        assert missing_keys(component, p) == [], m.topic
        if "options" in p:
            assert p["device_class"] == "enum" and "state_class" not in p and "unit_of_measurement" not in p
        assert p.get("entity_category", "diagnostic") in ("config", "diagnostic")
        if component == "switch":
            assert (p["payload_on"], p["payload_off"]) == ("ON", "OFF")


def test_connectivity_attributes_avoid_keys_home_assistant_blocks():
    sensor = by_object(messages())["front_door_connectivity"].payload
    attrs = json.loads(render(sensor["json_attributes_template"], camera_state("reconnecting", "rtsp timeout")))
    assert attrs["camera_state"] == "reconnecting" and attrs["detail"] == "rtsp timeout"
    assert not HA_BLOCKED_ATTRIBUTES & attrs.keys()
    assert render(sensor["value_template"], camera_state("reconnecting")) == "OFF"
    ok = json.loads(render(sensor["json_attributes_template"], camera_state("streaming")))
    assert ok["detail"] is None and ok["fps"] == 12.5


def test_occupancy_switch_and_event_snapshot_read_what_the_daemon_publishes():
    by = by_object(messages(FULL))
    door = by["front_door_door_person_occupancy"].payload
    assert door["device_class"] == "occupancy"
    assert contract.classify_topic(door["state_topic"], "focoos").kind == "occupancy"
    assert (render(door["value_template"], "2"), render(door["value_template"], "0")) == ("ON", "OFF")
    assert "front_door_door_dog_occupancy" in by
    switch = by["front_door_detect"].payload
    assert contract.classify_topic(switch["command_topic"], "focoos").kind == "detect_set"
    assert contract.classify_topic(switch["state_topic"], "focoos").kind == "detect_state"
    assert by["front_door_event_snapshot"].payload["topic"].endswith("/front_door/events/snapshot")


def test_inference_enum_covers_every_state_and_diagnostics_are_disabled():
    by = by_object(messages(FULL))
    enum = by["inference_state"].payload
    assert set(contract.schema("inference_state")["properties"]["state"]["enum"]) <= set(enum["options"])
    assert render(enum["value_template"], json.dumps({"state": "ok"})) == "ok"
    stats = json.dumps({"cameras": {"front_door": {"fps": 25.0, "inference_ms": {"p50": 80.5}, "pending": 3}}})
    for key, expected in (("fps", "25.0"), ("latency", "80.5"), ("backlog", "3")):
        p = by[f"front_door_{key}"].payload
        assert p["enabled_by_default"] is False and p["entity_category"] == "diagnostic"
        assert render(p["value_template"], stats) == expected


def test_count_sensors_only_with_counts_on():
    assert not [m for m in messages([HaCamera("yard", labels=())]) if m.topic.endswith("_count/config")]


def test_event_device_triggers_fire_on_new_and_end():
    by = by_object(messages(FULL))
    for kind, trigger in (("new", "object_appeared"), ("end", "object_left")):
        p = by[f"front_door_event_{kind}"].payload
        assert by[f"front_door_event_{kind}"].topic.split("/")[1] == "device_automation"
        assert (p["automation_type"], p["type"], p["subtype"], p["payload"]) == ("trigger", trigger, "any_object", kind)
        assert contract.classify_topic(p["topic"], "focoos").kind == "events"
        assert render(p["value_template"], json.dumps({"type": kind})) == kind
        assert p["device"]["identifiers"] == ["focoos_edge_edge_01_front_door"]
