"""Home Assistant discovery payloads: topics, required keys per component, availability, no command
topics, and state topics that are the ones the daemon actually publishes."""

from __future__ import annotations

import json

import pytest

from focoos_edge import __version__
from focoos_edge.delivery import contract
from focoos_edge.delivery.messages import Topics
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
    assert sorted(m.topic for m in msgs) == sorted([
        "homeassistant/binary_sensor/edge_01/front_door_connectivity/config",
        "homeassistant/sensor/edge_01/front_door_person_count/config",
        "homeassistant/sensor/edge_01/front_door_traffic_light_count/config",
        "homeassistant/camera/edge_01/front_door_snapshot/config",
        "homeassistant/binary_sensor/edge_01/yard_connectivity/config",
    ])
    assert node_id("edge.01") == "edge_01"
    assert all(m.topic.startswith("ha/") for m in messages(prefix="ha"))


def test_every_payload_has_what_its_component_needs():
    for m in messages():
        component = m.topic.split("/")[1]
        assert component in REQUIRED_KEYS
        assert missing_keys(component, m.payload) == [], m.topic
        json.dumps(m.payload)  # the wire form is JSON


def test_availability_device_and_origin_are_shared_and_ids_unique():
    msgs = messages()
    assert len({m.payload["unique_id"] for m in msgs}) == len(msgs)
    for m in msgs:
        assert m.payload["availability"] == [{"topic": TOPICS.availability, "payload_available": "online",
                                              "payload_not_available": "offline"}]
        assert m.payload["device"] == {"identifiers": ["focoos_edge_edge_01"], "name": "edge.01",
                                       "model": "focoos-edge", "sw_version": __version__}
        assert m.payload["origin"]["name"] == "focoos-edge"


def test_no_entity_can_send_commands():
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
    sensors = {m.payload["state_topic"] for m in messages() if m.topic.split("/")[1] == "sensor"}
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
    ])


@pytest.mark.parametrize("component,drop", [
    ("binary_sensor", "state_topic"), ("binary_sensor", "value_template"), ("sensor", "state_class"),
    ("sensor", "unique_id"), ("camera", "topic"), ("camera", "availability"), ("camera", "device"),
])
def test_the_checker_notices_what_is_missing(component, drop):
    msg = next(m for m in messages() if m.topic.split("/")[1] == component)
    payload = dict(msg.payload)
    payload.pop(drop)
    if drop == "value_template":
        payload.pop("payload_on")
    if drop == "state_class":
        payload.pop("unit_of_measurement")
    assert missing_keys(component, payload)
    if drop == "availability":
        assert missing_keys(component, {**payload, "availability_topic": TOPICS.availability}) == []
