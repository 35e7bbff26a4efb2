"""Snapshots, counts and Home Assistant discovery from the real daemon, seen by a real subscriber."""

from __future__ import annotations

import json
import signal
import subprocess

import cv2
import numpy as np
import yaml
from daemon_infra import KEY, TOPIC, daemon_command, daemon_config, stop_daemon

from focoos_edge.subscribers.annotate import colour_for


def test_snapshot_counts_and_discovery(marker_clip, local_server, mosquitto, mqtt_sub, spawn, tmp_path):
    sub = mqtt_sub(mosquitto.port, "#")
    labels = [f"aruco_{m.id}" for m in marker_clip.markers]
    config = daemon_config(
        tmp_path, api_url=local_server.url, mqtt_port=mosquitto.port, api_key=KEY,
        homeassistant={"birth_jitter_s": 0},
        cameras=[{"name": "gate", "source": f"file://{marker_clip.path}", "sample_fps": 2, "max_side": 640,
                  "labels": labels, "thresholds": {labels[0]: 1.0},
                  "snapshot": {"height": 360, "quality": 90, "min_interval_s": 0}}])
    daemon = spawn(daemon_command(config), name="daemon")

    snap = sub.wait_for(lambda m: m.topic == f"{TOPIC}/gate/snapshot", 30, "a snapshot", watch=[daemon])
    img = cv2.imdecode(np.frombuffer(snap.payload_bytes, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (360, 640, 3)
    det = next(m.json() for m in sub.messages(f"{TOPIC}/gate/detections") if m.json()["detections"])
    box = det["detections"][0]
    x1, y1, x2, y2 = (int(v / 3) for v in box["bbox"])  # 1920x1080 -> 640x360
    edge = img[y1 + 1:y2 - 1, x1:x1 + 2].reshape(-1, 3).astype(int)  # the box's left border
    expected = np.array(colour_for(box["cls_id"]))
    assert (np.abs(edge - expected).max(axis=1) < 60).mean() > 0.8, (box, edge[:5], expected)

    for label in labels[1:]:
        count = sub.wait_for(lambda m, t=f"{TOPIC}/gate/{label}": m.topic == t, 10, f"count of {label}")
        assert count.retained is False and count.payload == "1"
    seen = {d["label"] for m in sub.messages(f"{TOPIC}/gate/detections") for d in m.json()["detections"]}
    # The first marker is detected at the default threshold (test_e2e), but its own threshold of 1.0
    # filters it on the box; the request still asks for the lowest threshold.
    assert seen == set(labels[1:]), seen

    discovery = sub.wait_for(lambda m: m.topic.startswith("homeassistant/camera/"), 10, "camera discovery")
    assert discovery.json()["topic"] == f"{TOPIC}/gate/snapshot"
    configs = [m.topic for m in sub.messages("homeassistant/#")]
    assert any("/binary_sensor/" in t for t in configs) and sum(t.endswith("_count/config") for t in configs) == 3
    assert len(configs) == len(set(configs)), "a discovery config was sent twice at start"

    mark = sub.count
    subprocess.run(["mosquitto_pub", "-p", str(mosquitto.port), "-t", "homeassistant/status", "-m", "online"],
                   check=True)
    sub.wait_for(lambda m: m.topic.startswith("homeassistant/camera/"), 15, "discovery after HA birth", since=mark)

    data = yaml.safe_load(config.read_text())
    data["cameras"][0]["name"] = "yard"
    config.write_text(yaml.safe_dump(data))
    mark = sub.count
    daemon.signal(signal.SIGHUP)
    zero = sub.wait_for(lambda m: m.topic == f"{TOPIC}/gate/{labels[1]}" and m.payload == "0", 20,
                        "count back to 0 when the camera leaves", since=mark)
    assert zero
    sub.wait_for(lambda m: m.topic.startswith("homeassistant/camera/") and "gate" in m.topic
                 and m.payload_bytes == b"", 20, "gate's discovery retired", since=mark)
    stop_daemon(daemon, sub)
    assert json.loads(sub.messages(f"{TOPIC}/yard/state")[-1].payload)["state"] == "offline"
