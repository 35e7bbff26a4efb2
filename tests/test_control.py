"""`mqtt.control`: detect/set OFF pauses one camera's uploads (the other goes on, the camera stays
connected), survives a restart, ON resumes; garbage and floods are ignored. Real daemon, Mosquitto,
an inference server and mosquitto_pub as Home Assistant would publish."""

from __future__ import annotations

import subprocess

import httpfault
from daemon_infra import KEY, TOPIC, daemon_command, daemon_config, stop_daemon

from focoos_edge.service.control import parse_command


def pub(port: int, topic: str, payload: str, *lines: str) -> None:
    if lines:  # one message per line, as fast as the client can send them
        subprocess.run(["mosquitto_pub", "-p", str(port), "-t", topic, "-l"], input="\n".join(lines) + "\n",
                       text=True, check=True, timeout=30)
    else:
        subprocess.run(["mosquitto_pub", "-p", str(port), "-t", topic, "-m", payload], check=True, timeout=30)


def stats_after(sub, mark: int, daemon, predicate, what: str) -> dict:
    return sub.wait_for(lambda m: m.topic == f"{TOPIC}/stats" and predicate(m.json()["cameras"]), 30, what,
                        since=mark, watch=[daemon]).json()["cameras"]


def test_parse_command_accepts_only_the_documented_form():
    base = "focoos/box1"
    assert parse_command(f"{base}/a/detect/set", b"OFF", base) == ("a", False)
    assert parse_command(f"{base}/a/detect/set", b" ON\n", base) == ("a", True)
    for topic, payload in [(f"{base}/a/detect/set", b"on"), (f"{base}/a/detect/set", b"\xff\x00"),
                           (f"{base}/a/b/detect/set", b"ON"), (f"{base}//detect/set", b"ON"),
                           (f"{base}/a/detect/state", b"ON"), ("other/box1/a/detect/set", b"ON")]:
        assert parse_command(topic, payload, base) is None, (topic, payload)


def test_detect_off_pauses_one_camera_and_survives_a_restart(marker_clip, mosquitto, mqtt_sub, spawn, tmp_path):
    with httpfault.FaultServer() as server:
        info = httpfault.json(200, {"ref": "local-aruco", "name": "x", "task": "detection",
                                    "status": "TRAINING_COMPLETED", "classes": ["person"]})
        empty = httpfault.json(200, {"detections": [], "latency": {"inference": 0.01}})
        server.default = lambda h: (info if h.command == "GET" else empty)(h)
        sub = mqtt_sub(mosquitto.port, "focoos/#")
        cams = [{"name": n, "source": f"file://{marker_clip.path}", "sample_fps": 4, "max_side": 320}
                for n in ("a", "b")]
        config = daemon_config(tmp_path, api_url=server.url, mqtt_port=mosquitto.port, api_key=KEY,
                               mqtt={"control": True}, cameras=cams)
        daemon = spawn(daemon_command(config), name="daemon")
        sub.wait_for(lambda m: m.topic == f"{TOPIC}/a/detect/state" and m.payload == "ON", 30, "a ON",
                     watch=[daemon])

        pub(mosquitto.port, f"{TOPIC}/a/detect/set", "OFF")
        sub.wait_for(lambda m: m.topic == f"{TOPIC}/a/detect/state" and m.payload == "OFF", 10, "a OFF")
        # Garbage, an unknown camera and a flood of bad payloads: ignored, nothing else changes.
        pub(mosquitto.port, f"{TOPIC}/a/detect/set", "", *(["maybe", "{}", "on"] * 100))
        pub(mosquitto.port, f"{TOPIC}/nope/detect/set", "ON")
        mark = sub.count
        first = stats_after(sub, mark, daemon, lambda c: c["a"]["detect"] == "OFF", "stats with a OFF")
        later = stats_after(sub, sub.count, daemon,
                            lambda c: c["b"]["uploaded"] >= first["b"]["uploaded"] + 6, "b going on")
        assert later["a"]["uploaded"] == first["a"]["uploaded"], (first["a"], later["a"])
        assert later["a"]["skipped_paused"] > first["a"]["skipped_paused"]
        assert later["a"]["state"] == "streaming" and later["b"]["detect"] == "ON"

        stop_daemon(daemon, sub)
        mark = sub.count
        daemon = spawn(daemon_command(config), name="daemon-restarted")
        sub.wait_for(lambda m: m.topic == f"{TOPIC}/a/detect/state" and m.payload == "OFF", 30,
                     "a still OFF after a restart", since=mark, watch=[daemon])
        cams_now = stats_after(sub, mark, daemon, lambda c: c["b"]["uploaded"] >= 4, "b uploading after restart")
        assert cams_now["a"]["uploaded"] == 0 and cams_now["a"]["detect"] == "OFF"

        pub(mosquitto.port, f"{TOPIC}/a/detect/set", "ON")
        stats_after(sub, sub.count, daemon, lambda c: c["a"]["uploaded"] >= 2, "a uploading again")
        stop_daemon(daemon, sub)


def test_the_snapshot_reads_each_switch_as_state_does_and_creates_no_flag(tmp_path):
    """A camera known only from the spool (no worker, so no flag yet) is OFF when the persisted
    setting says so, as `state()` would report it; reading the figures must not create its flag."""
    from focoos_edge.delivery import Topics
    from focoos_edge.service.control import DetectControl

    (tmp_path / "detect.json").write_text('{"v": 1, "off": ["a", "z"]}')
    control = DetectControl(tmp_path, Topics("focoos", "box1"), None, enabled=True)  # type: ignore[arg-type]
    control.paused("a")
    control.paused("b").set()  # switched OFF while running
    control.paused("c")
    snapshot = control.snapshot()
    assert snapshot.off == {"a", "b", "z"}
    assert set(control._paused) == {"a", "b", "c"}, "the snapshot created a flag"
    assert [snapshot.detect(c) for c in "abcz"] == ["OFF", "OFF", "ON", "OFF"] == [control.state(c) for c in "abcz"]
