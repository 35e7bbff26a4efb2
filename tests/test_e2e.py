"""The daemon end to end on real parts: RTSP server -> daemon -> inference server -> Mosquitto -> subscriber."""

from __future__ import annotations

from datetime import datetime

import cv2
import httpfault
import numpy as np
import pytest
from daemon_infra import KEY, TOPIC, daemon_command, daemon_config, state_is, stop_daemon
from procs import free_port, wait_until

from focoos_edge.tools.localserver import LocalServer

CANARY = "CANARY-7f3a9c"
PAYLOAD_KEYS = {"v", "device_id", "camera", "frame_id", "captured_at", "published_at", "replayed", "model_ref",
                "width", "height", "detections", "latency_ms"}


@pytest.fixture
def start_daemon(spawn, tmp_path):
    def start(**kwargs):
        kwargs.setdefault("api_key", KEY)
        return spawn(daemon_command(daemon_config(tmp_path, **kwargs)), name="daemon")
    return start


def ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


def test_rtsp_to_mqtt_end_to_end(marker_clip, rtsp_server, local_server, mosquitto, mqtt_sub, start_daemon):
    camera = rtsp_server(clip=marker_clip.path)
    sub = mqtt_sub(mosquitto.port, "focoos/#")
    daemon = start_daemon(api_url=local_server.url, mqtt_port=mosquitto.port,
                          cameras=[{"name": "gate", "source": camera.url, "sample_fps": 4, "max_side": 640}])

    msgs = sub.wait_count(f"{TOPIC}/gate/detections", 6, 60)
    payloads = [m.json() for m in msgs]
    for p in payloads:
        assert set(p) == PAYLOAD_KEYS
        assert (p["v"], p["device_id"], p["camera"], p["model_ref"]) == (1, "box1", "gate", "local-aruco")
        assert (p["width"], p["height"]) == (1920, 1080)
        assert p["replayed"] is False
        assert p["frame_id"].startswith("gate-")
        assert ts(p["captured_at"]) <= ts(p["published_at"])
        assert set(p["latency_ms"]) == {"inference", "queue", "total"}
        assert p["latency_ms"]["total"] >= p["latency_ms"]["inference"] > 0
        found = {d["cls_id"]: d for d in p["detections"]}
        assert sorted(found) == sorted(m.id for m in marker_clip.markers), p["detections"]
        for marker in marker_clip.markers:
            det = found[marker.id]
            assert det["label"] == f"aruco_{marker.id}" and 0 < det["conf"] <= 1
            # Uploaded at 640x360 (1/3 scale): boxes come back in 1920x1080 pixels, within 2 upload px.
            assert det["bbox"] == pytest.approx(list(marker.box), abs=6), (marker, det["bbox"])
    assert len({p["frame_id"] for p in payloads}) == len(payloads)

    assert sub.messages(f"{TOPIC}/availability")[-1].payload == "online"
    assert sub.wait_for(state_is(f"{TOPIC}/gate/state", "streaming"), 5, "camera streaming")
    assert sub.wait_for(state_is(f"{TOPIC}/inference", "ok"), 5, "inference ok")
    stats = sub.wait_for(lambda m: m.topic == f"{TOPIC}/stats" and m.json()["cameras"]["gate"]["delivered"] > 0,
                         10, "stats with delivered results").json()
    gate = stats["cameras"]["gate"]
    assert gate["fps"] > 5 and gate["sampled"] >= gate["uploaded"] >= gate["delivered"] > 0
    assert stats["rss_bytes"] > 0 and stats["mqtt"]["connected"] is True

    stop_daemon(daemon, sub)
    assert sub.messages(f"{TOPIC}/gate/state")[-1].json()["state"] == "offline"


def _fake_focoos(detections):
    """Model info on GET, a fixed inference reply on POST."""
    info = httpfault.json(200, {"ref": "local-aruco", "name": "x", "task": "detection",
                                "status": "TRAINING_COMPLETED", "classes": ["person", "dog", "car"]})
    reply = httpfault.json(200, {"detections": detections, "latency": {"inference": 0.01}})
    return lambda h: (info if h.command == "GET" else reply)(h)


def test_wire_format_and_box_scaling(marker_clip, mosquitto, mqtt_sub, start_daemon):
    """The request is exactly the Focoos wire format, and predictable boxes come back scaled to the frame."""
    with httpfault.FaultServer() as server:
        server.default = _fake_focoos([
            {"bbox": [64, 36, 320, 180], "conf": 0.9, "cls_id": 0, "label": "person"},
            {"bbox": [1.5, 2.5, 10, 10], "conf": 0.95, "cls_id": 1, "label": "dog", "mask": None},  # not in labels
            {"bbox": [0, 0, 700, 400], "conf": 0.55, "cls_id": 2, "label": "car"},  # under the threshold
        ])
        sub = mqtt_sub(mosquitto.port, "focoos/#")
        daemon = start_daemon(
            api_url=server.url, mqtt_port=mosquitto.port,
            cameras=[{"name": "yard", "source": f"file://{marker_clip.path}", "sample_fps": 2, "max_side": 640,
                      "jpeg_quality": 70, "threshold": 0.6, "labels": ["person", "car"]}])
        msg = sub.wait_for(lambda m: m.topic == f"{TOPIC}/yard/detections", 30, "a detections message").json()
        assert msg["detections"] == [
            {"label": "person", "cls_id": 0, "conf": 0.9, "bbox": [192.0, 108.0, 960.0, 540.0]}]

        posts = [r for r in server.requests if r.method == "POST"]
        assert posts, [r.path for r in server.requests]
        req = posts[0]
        assert req.path == "/v0/models/local-aruco/inference"
        assert req.header("x-api-key") == KEY and req.header("authorization") is None
        assert req.query == {"confidence_threshold": ["0.6"]}
        parts = httpfault.multipart_parts(req)
        assert [(p.name, p.filename, p.content_type) for p in parts] == [("file", "image", "image/jpeg")]
        img = cv2.imdecode(np.frombuffer(parts[0].data, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (360, 640, 3)
        stop_daemon(daemon, sub)


def test_slow_inference_never_sends_stale_frames(rtsp_server, mosquitto, mqtt_sub, start_daemon):
    """With a 1 s server and one request in flight, frames wait at most about two sample intervals."""
    slow = LocalServer(port=0, api_key=KEY, latency_s=1.0)
    slow.start()
    try:
        camera = rtsp_server(pattern="ball", width=640, height=360, fps=25)
        sub = mqtt_sub(mosquitto.port, "focoos/#")
        daemon = start_daemon(api_url=slow.url, mqtt_port=mosquitto.port, inference={"max_in_flight": 1},
                              cameras=[{"name": "cam", "source": camera.url, "sample_fps": 2}])
        msgs = [m.json() for m in sub.wait_count(f"{TOPIC}/cam/detections", 6, 60)]
        live = [p for p in msgs[1:] if not p["replayed"]]  # the first may have waited for the model check
        assert len(live) >= 3, msgs
        interval_ms = 500
        for p in live:
            waited_ms = p["latency_ms"]["total"] - p["latency_ms"]["inference"]
            assert waited_ms <= 2 * interval_ms, p["latency_ms"]
            assert p["latency_ms"]["inference"] >= 1000
        # Frames the busy uplink could not take live wait in the spool instead of being lost.
        sub.wait_for(lambda m: m.topic == f"{TOPIC}/stats" and m.json()["cameras"]["cam"]["spooled"] > 0,
                     10, "frames spooled")
        final = stop_daemon(daemon, sub)
        assert final["cameras"]["cam"]["pending"] > 0  # the backlog a busy uplink could not drain
    finally:
        slow.stop()


def test_camera_drop_and_resume(rtsp_server, local_server, mosquitto, mqtt_sub, start_daemon):
    camera = rtsp_server(pattern="ball", width=640, height=360, fps=25)
    sub = mqtt_sub(mosquitto.port, "focoos/#")
    daemon = start_daemon(api_url=local_server.url, mqtt_port=mosquitto.port,
                          cameras=[{"name": "cam", "source": camera.url, "sample_fps": 2,
                                    "open_timeout_s": 3, "read_timeout_s": 3}])
    state_topic = f"{TOPIC}/cam/state"
    sub.wait_for(state_is(state_topic, "streaming"), 30, "streaming")
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/cam/detections", 30, "detections before the drop")
    pid = daemon.pid

    mark = sub.count  # before the kill: the state can change (and arrive) before kill() returns
    camera.kill()
    sub.wait_for(state_is(state_topic, "reconnecting"), 30, "reconnecting after the drop", since=mark)
    camera.start()
    mark = sub.count
    sub.wait_for(state_is(state_topic, "streaming"), 60, "streaming again", since=mark)
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/cam/detections", 30, "detections after the drop", since=mark)
    assert daemon.alive and daemon.pid == pid
    states = [m.json()["state"] for m in sub.messages(state_topic)]
    assert "reconnecting" in states[states.index("streaming"):]
    stop_daemon(daemon, sub)


def test_wrong_api_key_pauses_uploads_without_retry_storm(rtsp_server, local_server, mosquitto, mqtt_sub,
                                                         start_daemon):
    camera = rtsp_server(pattern="ball", width=640, height=360, fps=25)
    sub = mqtt_sub(mosquitto.port, "focoos/#")
    daemon = start_daemon(api_url=local_server.url, mqtt_port=mosquitto.port, api_key=f"wrong-{CANARY}",
                          cameras=[{"name": "cam", "source": camera.url, "sample_fps": 5}])
    state = sub.wait_for(state_is(f"{TOPIC}/inference", "auth_failed"), 30, "auth_failed").json()
    assert "401" in state["detail"]
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/stats"
                 and m.json()["cameras"]["cam"]["spooled"] >= 10,
                 30, "frames kept in the spool while uploads are paused")
    assert local_server.stats.auth_failures <= 2  # one model check, not one request per frame
    assert daemon.alive
    stop_daemon(daemon, sub)
    log = daemon.stderr_text()
    assert sum("API key" in line for line in log.splitlines()) == 1, log
    assert CANARY not in log and all(CANARY not in m.payload for m in sub.messages())


def test_unknown_model_is_reported(rtsp_server, local_server, mosquitto, mqtt_sub, start_daemon):
    camera = rtsp_server(pattern="ball", width=640, height=360, fps=25)
    sub = mqtt_sub(mosquitto.port, "focoos/#")
    daemon = start_daemon(api_url=local_server.url, mqtt_port=mosquitto.port, model_ref="no-such-model",
                          cameras=[{"name": "cam", "source": camera.url}])
    state = sub.wait_for(state_is(f"{TOPIC}/inference", "model_not_found"), 30, "model_not_found").json()
    assert state["model_ref"] == "no-such-model"
    sub.wait_for(state_is(f"{TOPIC}/cam/state", "streaming"), 30, "camera keeps streaming")
    stop_daemon(daemon, sub)


def test_api_unreachable_at_start_then_recovers(rtsp_server, mosquitto, mqtt_sub, start_daemon):
    port = free_port()
    camera = rtsp_server(pattern="ball", width=640, height=360, fps=25)
    sub = mqtt_sub(mosquitto.port, "focoos/#")
    daemon = start_daemon(api_url=f"http://127.0.0.1:{port}/v0", mqtt_port=mosquitto.port,
                          cameras=[{"name": "cam", "source": camera.url}])
    state = sub.wait_for(lambda m: m.topic == f"{TOPIC}/inference" and m.json()["state"] != "starting",
                         30, "inference state").json()
    assert state["state"] == "unreachable", state
    server = LocalServer(port=port, api_key=KEY)
    server.start()
    try:
        mark = sub.count
        sub.wait_for(state_is(f"{TOPIC}/inference", "ok"), 60, "inference ok", since=mark)
        sub.wait_for(lambda m: m.topic == f"{TOPIC}/cam/detections", 30, "detections", since=mark)
        stop_daemon(daemon, sub)
    finally:
        server.stop()


def test_broker_unreachable_at_start_then_recovers(rtsp_server, local_server, mosquitto_factory, mqtt_sub,
                                                   start_daemon):
    port = free_port()
    camera = rtsp_server(pattern="ball", width=640, height=360, fps=25)
    daemon = start_daemon(api_url=local_server.url, mqtt_port=port,
                          cameras=[{"name": "cam", "source": camera.url}])
    wait_until(lambda: "cannot reach broker" in daemon.stderr_text(), 20, message="broker failure logged")
    assert daemon.alive
    broker = mosquitto_factory(port=port)
    sub = mqtt_sub(broker.port, "focoos/#")
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/availability" and m.payload == "online", 60, "online")
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/cam/detections", 30, "detections")
    stop_daemon(daemon, sub)


def test_rtsp_credentials_never_leak(rtsp_server, local_server, mosquitto, mqtt_sub, start_daemon):
    camera = rtsp_server(pattern="ball", width=640, height=360, fps=25, user="viewer", password=CANARY)
    sub = mqtt_sub(mosquitto.port, "focoos/#")
    daemon = start_daemon(
        api_url=local_server.url, mqtt_port=mosquitto.port, log_level="debug",
        cameras=[{"name": "good", "source": camera.url},
                 {"name": "bad", "source": camera.url_with("viewer", f"{CANARY}-wrong"), "open_timeout_s": 3}])
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/good/detections", 30, "detections from the good camera")
    bad = sub.wait_for(state_is(f"{TOPIC}/bad/state", "reconnecting"), 30, "bad camera reconnecting").json()
    wait_until(lambda: "camera bad" in daemon.stderr_text(), 20, message="bad camera logged")
    stop_daemon(daemon, sub)
    log = daemon.stderr_text() + daemon.stdout_text()
    assert "camera bad" in log and "rtsp://***@127.0.0.1" in log
    assert CANARY not in log
    assert all(CANARY not in m.payload for m in sub.messages()), bad
