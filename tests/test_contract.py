"""The MQTT contract: schemas are valid Draft 2020-12, payloads built by the real code validate, every
required field is required, docs/mqtt.md's examples validate, and the example consumer
(scripts/mqtt_monitor.py) flags invalid payloads coming from a real broker."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from focoos_edge.capture.encode import FrameJob
from focoos_edge.config.models import load_config
from focoos_edge.delivery import contract
from focoos_edge.delivery.contract import ContractError, SchemaNotFoundError, classify_topic, label_level
from focoos_edge.delivery.messages import (
    Topics,
    camera_state_payload,
    detection_dict,
    detections_payload,
    dumps,
    inference_state_payload,
)
from focoos_edge.delivery.publisher import OFFLINE, ONLINE
from focoos_edge.inference import live
from focoos_edge.inference.errors import FocoosError
from focoos_edge.service.daemon import Daemon

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "mqtt.md"
T0_NS = 1_764_186_000_123_456_789


def detections_example(**overrides) -> dict:
    args = dict(device_id="edge-01", camera="front_door", frame_id=f"front_door-{T0_NS}",
                captured_at_ns=T0_NS, published_at_ns=T0_NS + 178_000_000, replayed=False,
                model_ref="fai-detr-l-obj365", width=1920, height=1080,
                detections=[detection_dict("person", 0, 0.91344, (412, 157, 598, 633.25)),
                            detection_dict(None, None, 0.5, None)],
                inference_ms=120.54, total_ms=178.2, queue_ms=3.1)
    return detections_payload(**{**args, **overrides})


def all_reasons() -> set[str]:
    """Every state the inference link can report: the uplink's own and every error's reason."""
    reasons = {live.OK, live.STARTING, live.MODEL_NOT_READY, "timeout", "server_error"}
    stack = [FocoosError]
    while stack:
        cls = stack.pop()
        reasons.add(cls.reason)
        stack += cls.__subclasses__()
    return reasons


# -- the schemas themselves ---------------------------------------------------------------------
@pytest.mark.parametrize("name", contract.SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12(name):
    doc = contract.schema(name)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(doc)
    assert doc["$id"].endswith(f":{name}:v1")


def test_schema_returns_a_fresh_copy_and_unknown_names_fail():
    contract.schema("detections")["required"].clear()
    assert "frame_id" in contract.schema("detections")["required"]
    assert set(contract.schemas()) == set(contract.SCHEMA_NAMES)
    with pytest.raises(SchemaNotFoundError, match="stat"):
        contract.schema("stat")


def test_every_json_payload_schema_requires_the_version():
    for name in ("detections", "camera_state", "inference_state", "stats"):
        doc = contract.schema(name)
        assert "v" in doc["required"] and doc["properties"]["v"]["const"] == 1


def test_the_runtime_modules_do_not_import_jsonschema():
    code = ("import sys; import focoos_edge.delivery.contract, focoos_edge.subscribers.annotate, "
            "focoos_edge.subscribers.counts, focoos_edge.subscribers.homeassistant, focoos_edge.service.daemon; "
            "focoos_edge.delivery.contract.schema('stats'); "
            "sys.exit('jsonschema' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# -- real payloads validate ----------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [
    {}, {"detections": []}, {"replayed": True, "queue_ms": 0.0},
    {"total_ms": -3.0},  # a wall-clock step makes total negative: still a valid message
])
def test_detections_payloads_validate(overrides):
    payload = detections_example(**overrides)
    contract.validate("detections", payload)
    assert contract.validate_payload("detections", dumps(payload)) == payload


@pytest.mark.parametrize("state", ["streaming", "reconnecting", "offline"])
@pytest.mark.parametrize("detail", [None, "read failed"])
def test_camera_state_payloads_validate(state, detail):
    contract.validate("camera_state", camera_state_payload(state, 1_764_186_000.5, 12.345, detail))


@pytest.mark.parametrize("state", sorted(all_reasons()))
def test_inference_state_payloads_validate_for_every_reason(state):
    contract.validate("inference_state",
                      inference_state_payload(state, 1_764_186_000.5, "fai-detr-l-obj365", "HTTP 503"))


def test_availability_is_the_plain_text_online_or_offline():
    for payload in (ONLINE, OFFLINE):
        assert contract.validate_payload("availability", payload) == payload.decode()
    for bad in (b"ONLINE", b'"online"', b""):
        with pytest.raises(ContractError):
            contract.validate_payload("availability", bad)


def test_count_is_a_bare_non_negative_integer():
    assert contract.validate_payload("count", b"3") == 3
    for bad in (b"-1", b'"3"', b"2.5", b"three"):
        with pytest.raises(ContractError):
            contract.validate_payload("count", bad)


def test_stats_of_a_real_daemon_validate(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"""
device_id: edge.01
state_dir: {tmp_path / 'state'}
inference: {{api_url: "http://127.0.0.1:9/v0", api_key: k, model_ref: m}}
cameras: [{{name: front_door, source: "file:///nowhere.mp4"}}]
""")
    (tmp_path / "state").mkdir()
    daemon = Daemon(load_config(cfg), threading.Event())
    try:
        # A spooled frame gives the stats a camera entry without starting any thread.
        jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
        daemon.spool.put_frame(FrameJob("front_door", "front_door-1", T0_NS, 0.0, 8, 8, 1.0, jpeg))
        stats = daemon.stats()
        assert stats["cameras"]["front_door"]["pending"] == 1
        contract.validate("stats", stats)
        contract.validate_payload("stats", dumps(stats))
    finally:
        daemon.spool.close()
        daemon.uplink.client.close()


# -- every required field is required ----------------------------------------------------------
def required_paths(doc: dict, node: dict, path: tuple = ()) -> list[tuple]:
    """Paths of every required key in `node` and in the objects it nests (through $refs)."""
    if "$ref" in node:
        node = doc["$defs"][node["$ref"].rsplit("/", 1)[1]]
    out = [path + (key,) for key in node.get("required", ())]
    for key, sub in node.get("properties", {}).items():
        out += required_paths(doc, sub, path + (key,))
    return out


def stats_example() -> dict:
    queue = {"count": 0, "bytes": 0, "oldest_age_s": None}
    camera = {k: 0 for k in ("grabbed", "sampled", "reconnects", "uploaded", "bytes_uploaded", "results",
                             "spooled", "produced", "delivered", "pending", "evicted", "dead_lettered")}
    camera |= {"state": "streaming", "fps": 2.0, "errors": {"timeout": 1}, "evicted_by_reason": {},
               "dead_lettered_by_reason": {}, "inference_ms": {"p50": 120.5, "p95": None}}
    return {"v": 1, "device_id": "edge-01", "at": "2026-11-26T19:40:00.123456Z", "uptime_s": 1.0,
            "cpu_percent": 3.5, "rss_bytes": 1, "inference": {"state": "ok", "queue_depth": 0, "in_flight": 1},
            "mqtt": {"connected": True, "sent": 1, "acked": 1, "resent": 0, "dropped": 0},
            "spool": {"frames": queue, "outbox": dict(queue), "disk_bytes": 1, "max_bytes": 2, "disk_full": False},
            "cameras": {"front_door": camera},
            "quota": {"total_inferences": 950, "max_inferences": 1000, "checked_at": "2026-11-26T19:40:00.123456Z"}}


EXAMPLES = {
    "detections": lambda: detections_example(),
    "camera_state": lambda: {"v": 1, **camera_state_payload("streaming", 1.0, 2.0, "x")},
    "inference_state": lambda: {"v": 1, **inference_state_payload("ok", 1.0, "m", "x")},
    "stats": stats_example,
}


def test_the_hand_written_examples_are_valid():
    for name, make in EXAMPLES.items():
        contract.validate(name, make())


@pytest.mark.parametrize("name,path", [(n, p) for n, make in EXAMPLES.items()
                                       for p in required_paths(contract.schema(n), contract.schema(n))])
def test_a_missing_required_field_is_rejected(name, path):
    payload = copy.deepcopy(EXAMPLES[name]())
    parent = payload
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    errors = contract.check(name, payload)
    assert any(f"'{path[-1]}' is a required property" in e for e in errors), errors


def test_the_detections_schema_also_rejects_wrong_values():
    good = detections_example()
    for mutate in (
        lambda p: p.update(v=2), lambda p: p.update(extra=1), lambda p: p.update(replayed="no"),
        lambda p: p.update(captured_at="2026-11-26 19:40:00"), lambda p: p.update(camera="Front Door"),
        lambda p: p["detections"][0].update(conf=1.5), lambda p: p["detections"][0].update(bbox=[1, 2, 3]),
        lambda p: p["detections"][0].update(cls_id=-1), lambda p: p["latency_ms"].update(queue=-1),
    ):
        bad = copy.deepcopy(good)
        mutate(bad)
        with pytest.raises(ContractError):
            contract.validate("detections", bad)


def test_undecodable_payloads_are_contract_errors():
    with pytest.raises(ContractError, match="not JSON"):
        contract.validate_payload("detections", b"{not json")
    with pytest.raises(ContractError, match="not UTF-8"):
        contract.validate_payload("availability", b"\xff\xfe")


# -- topics ----------------------------------------------------------------------------------------
def test_topics_are_classified_under_a_multi_level_prefix():
    t = Topics("site/a", "edge-01")
    cases = {
        t.availability: ("availability", None, None, "availability"),
        t.stats: ("stats", None, None, "stats"),
        t.inference: ("inference", None, None, "inference_state"),
        t.detections("cam"): ("detections", "cam", None, "detections"),
        t.camera_state("cam"): ("state", "cam", None, "camera_state"),
        contract.snapshot_topic(t.base, "cam"): ("snapshot", "cam", None, None),
        contract.count_topic(t.base, "cam", "traffic light"): ("count", "cam", "traffic_light", "count"),
    }
    for topic, (kind, camera, label, schema) in cases.items():
        got = classify_topic(topic, "site/a")
        assert (got.kind, got.device_id, got.camera, got.label, got.schema) == \
               (kind, "edge-01", camera, label, schema), topic
    assert classify_topic("other/edge-01/stats", "site/a") is None
    assert classify_topic("site/a/edge-01/cam/x/y", "site/a") is None


def test_label_levels_never_collide_with_camera_topics_or_wildcards():
    assert label_level("person") == "person"
    assert label_level("traffic light") == "traffic_light"
    assert label_level("a/b+c#d") == "a_b_c_d"
    for reserved in ("detections", "state", "snapshot"):
        assert label_level(reserved) == f"{reserved}_label"
    assert label_level("") == "_"


# -- docs/mqtt.md ------------------------------------------------------------------------------------
def doc_examples() -> list[tuple[str, str]]:
    """(schema, text) of every block in docs/mqtt.md preceded by `<!-- example: NAME -->`."""
    text = DOCS.read_text()
    return re.findall(r"<!-- example: (\w+) -->\s*```(?:json|text)?\n(.*?)```", text, re.S)


def test_docs_examples_validate_and_cover_every_schema():
    examples = doc_examples()
    assert {name for name, _ in examples} == set(contract.SCHEMA_NAMES)
    for name, body in examples:
        contract.validate_payload(name, body.strip().encode())


def test_docs_name_every_schema_file_and_topic():
    text = DOCS.read_text()
    for name in contract.SCHEMA_NAMES:
        assert f"schemas/{name}.json" in text
    for topic in ("/availability", "/detections", "/state", "/stats", "/inference", "/snapshot",
                  "$share/", "frame_id", "replayed", "homeassistant/status"):
        assert topic in text, topic


# -- the example consumer against a real broker ---------------------------------------------------
def publish_retained(port: int, messages: dict[str, bytes]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="contract-test-pub")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload in messages.items():
            client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_the_monitor_validates_payloads_from_a_real_broker(mosquitto, spawn):
    t = Topics("focoos", "edge-01")
    good = detections_example(camera="cam_a", frame_id="cam_a-1",
                              detections=[detection_dict("person", 0, 0.9, (1, 2, 3, 4))] * 2)
    bad = detections_example(camera="cam_b", frame_id="cam_b-1")
    del bad["frame_id"]
    jpeg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    publish_retained(mosquitto.port, {
        t.availability: ONLINE,
        t.inference: dumps({"v": 1, **inference_state_payload("ok", 1.0, "m")}),
        t.detections("cam_a"): dumps(good),
        t.camera_state("cam_a"): dumps({"v": 1, **camera_state_payload("streaming", 1.0, 2.0)}),
        contract.count_topic(t.base, "cam_a", "person"): b"2",
        contract.snapshot_topic(t.base, "cam_a"): jpeg,
        t.detections("cam_b"): dumps(bad),
        contract.count_topic(t.base, "cam_b", "car"): b"-4",
    })
    proc = spawn([sys.executable, str(ROOT / "scripts" / "mqtt_monitor.py"), "--port", str(mosquitto.port),
                  "--seconds", "2", "--interval", "0.5", "--fail-on-invalid"], name="monitor")
    assert proc.wait(30) == 1, proc.describe()  # invalid payloads were seen
    final = proc.stdout_text().split("device/camera")[-1]
    row_a = next(line for line in final.splitlines() if line.startswith("edge-01/cam_a"))
    assert "streaming" in row_a and "person=2" in row_a and "100%" not in row_a
    assert re.search(r"\b1\s+0\s+person=2", row_a), row_a  # 1 snapshot, 0 invalid
    row_b = next(line for line in final.splitlines() if line.startswith("edge-01/cam_b"))
    assert re.search(r"\s2\s+-$", row_b), row_b  # 2 invalid, no counts
    assert "edge-01: availability online, inference ok" in final
    assert "8 messages, 2 invalid" in final
    assert "'frame_id' is a required property" in final
