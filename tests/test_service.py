"""Service behaviour of the real daemon: SIGHUP reload, sd_notify watchdog, log rate limiting."""

from __future__ import annotations

import itertools
import logging
import signal
import socket
import sqlite3
import time

import yaml
from daemon_infra import KEY, TOPIC, daemon_command, daemon_config, state_is, stop_daemon
from procs import wait_until

from focoos_edge.service.daemon import stalled
from focoos_edge.service.logs import RateLimitFilter
from focoos_edge.tools.localserver import LocalServer


def _camera(name, clip, **extra):
    return {"name": name, "source": f"file://{clip}", "sample_fps": 2, **extra}


def _rewrite(path, mutate):
    data = yaml.safe_load(path.read_text())
    mutate(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_sighup_adds_and_removes_cameras_without_touching_the_others(marker_clip, local_server, mosquitto,
                                                                    mqtt_sub, spawn, tmp_path):
    sub = mqtt_sub(mosquitto.port, "focoos/#")
    config = daemon_config(tmp_path, api_url=local_server.url, mqtt_port=mosquitto.port, api_key=KEY,
                           cameras=[_camera("a", marker_clip.path)])
    daemon = spawn(daemon_command(config), name="daemon")
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/a/detections", 30, "detections from a", watch=[daemon])

    _rewrite(config, lambda d: d["cameras"].append(_camera("b", marker_clip.path)))
    mark = sub.count
    daemon.signal(signal.SIGHUP)
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/b/detections", 30, "detections from b", since=mark, watch=[daemon])
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/a/detections", 10, "a still running", since=mark)
    assert not sub.messages(f"{TOPIC}/a/state", since=mark), "camera a was restarted by the reload"

    _rewrite(config, lambda d: d["cameras"][0].update(threshold=1.0))  # no confidence is above 1.0
    mark = sub.count
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: "reload 2 applied" in daemon.stderr_text(), 20, message="second reload")
    empty = sub.wait_for(lambda m: m.topic == f"{TOPIC}/a/detections" and not m.json()["detections"], 20,
                         "a's detections filtered by its new threshold", since=mark)
    assert empty.json()["frame_id"].startswith("a-")
    assert not sub.messages(f"{TOPIC}/a/state", since=mark), "a threshold change restarted camera a"

    config.write_text(config.read_text() + "\nbogus_key: 1\n")
    mark = sub.count
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: "keeping the running config" in daemon.stderr_text(), 20, message="invalid reload logged")
    assert "bogus_key (line" in daemon.stderr_text()
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/b/detections", 10, "b still running", since=mark)

    _rewrite(config, lambda d: (d.pop("bogus_key"), d.update(cameras=[c for c in d["cameras"] if c["name"] == "b"])))
    mark = sub.count
    daemon.signal(signal.SIGHUP)
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/a/state" and m.json()["state"] == "offline"
                 and m.json()["detail"] == "removed from the config", 20, "a offline, removed", since=mark)
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/b/detections", 10, "b still running", since=sub.count)
    assert not sub.messages(f"{TOPIC}/b/state", since=mark)
    final = stop_daemon(daemon, sub)
    assert set(final["cameras"]) == {"a", "b"}  # a's frames stay in the books after its removal


def test_sighup_with_a_fixed_api_key_resumes_uploads(marker_clip, local_server, mosquitto, mqtt_sub, spawn,
                                                     tmp_path):
    sub = mqtt_sub(mosquitto.port, "focoos/#")
    config = daemon_config(tmp_path, api_url=local_server.url, mqtt_port=mosquitto.port, api_key="wrong-key",
                           cameras=[_camera("a", marker_clip.path)])
    daemon = spawn(daemon_command(config), name="daemon")
    sub.wait_for(state_is(f"{TOPIC}/inference", "auth_failed"), 30, "auth_failed", watch=[daemon])
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/stats" and m.json()["spool"]["frames"]["count"] >= 4,
                 30, "frames kept while paused")
    _rewrite(config, lambda d: d["inference"].update(api_key=KEY))
    mark = sub.count
    daemon.signal(signal.SIGHUP)
    sub.wait_for(state_is(f"{TOPIC}/inference", "ok"), 30, "inference ok after reload", since=mark)
    replayed = sub.wait_for(lambda m: m.topic == f"{TOPIC}/a/detections" and m.json()["replayed"], 30,
                            "spooled frames replayed", since=mark).json()
    assert replayed["detections"], replayed
    stop_daemon(daemon, sub)


def test_watchdog_pings_while_the_pipeline_turns(marker_clip, local_server, mosquitto, spawn, tmp_path):
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(1.0)
    config = daemon_config(tmp_path, api_url=local_server.url, mqtt_port=mosquitto.port, api_key=KEY,
                           cameras=[_camera("a", marker_clip.path)])
    import os
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"}
    daemon = spawn(daemon_command(config), name="daemon", env=env)
    got: list[tuple[float, str]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and sum("WATCHDOG=1" in m for _, m in got) < 4:
        try:
            got.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            assert daemon.alive, daemon.describe()
    texts = [m for _, m in got]
    assert texts[0].startswith("READY=1") and "STATUS=" in texts[0], texts
    pings = [t for t, m in got if m == "WATCHDOG=1"]
    assert len(pings) >= 4, texts
    assert max(b - a for a, b in itertools.pairwise(pings)) < 2.0  # within WatchdogSec
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    rest = []
    try:
        while True:
            rest.append(sock.recv(4096).decode())
    except TimeoutError:
        pass
    assert any(m.startswith("STOPPING=1") for m in rest), rest
    sock.close()


def test_stalled_names_stuck_or_dead_loops():
    beats = {"camera a": (3.0, 50.0, True), "uplink": (40.0, 30.0, True), "mqtt outbox": (0.1, 15.0, False)}
    assert stalled(beats) == ["uplink", "mqtt outbox"]
    assert stalled({"camera a": (49.0, 50.0, True)}) == []


def test_rate_limit_filter_suppresses_repeats_and_reports_them():
    now = [0.0]
    filt = RateLimitFilter(interval_s=60, clock=lambda: now[0])

    def record(msg, *args):
        return logging.LogRecord("focoos_edge.capture.worker", logging.WARNING, __file__, 1, msg, args, None)

    assert filt.filter(record("camera %s down", "a"))
    assert filt.filter(record("camera %s down", "b"))  # a different line is never hidden
    for _ in range(5):
        now[0] += 1
        assert not filt.filter(record("camera %s down", "a"))
    now[0] += 60
    rec = record("camera %s down", "a")
    assert filt.filter(rec)
    assert rec.getMessage() == "camera a down (repeated 5 more times)"


def test_watchdog_keeps_being_fed_when_replies_trickle(marker_clip, mosquitto, spawn, tmp_path):
    """Headers trickled a byte at a time used to hang the uplink worker for ever (and the watchdog
    stopped, as it should for a hang). With the whole-request deadline (issue 12) the worker ends
    each request after timeout_s, spools the frame and goes on: the watchdog keeps being fed."""
    import os

    import httpfault

    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(0.5)
    with httpfault.FaultServer() as server:
        server.default = httpfault.trickle(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a", 0.3)
        config = daemon_config(tmp_path, api_url=server.url, mqtt_port=mosquitto.port, api_key=KEY,
                               inference={"timeout_s": 1, "max_in_flight": 1},
                               cameras=[_camera("a", marker_clip.path)])
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"}
        daemon = spawn(daemon_command(config), name="daemon", env=env)
        pings: list[float] = []
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            try:
                if sock.recv(4096) == b"WATCHDOG=1":
                    pings.append(time.monotonic())
            except TimeoutError:
                pass
        assert len(pings) > 10, pings
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert max(gaps) < 3.0, gaps  # fed throughout (WatchdogSec 2 s here)
        assert len(server.requests) >= 3  # the worker moved on from one trickled request to the next
        assert "watchdog: uplink stuck" not in daemon.stderr_text()
        daemon.kill()
    sock.close()


def test_stalled_names_dead_or_late_loops():
    from focoos_edge.service.daemon import stalled

    beats = {"camera a": (5.0, 60.0, True), "uplink": (50.0, 45.0, True), "mqtt outbox": (1.0, 15.0, False)}
    assert stalled(beats) == ["uplink", "mqtt outbox"]


def test_sigterm_during_an_outage_keeps_the_backlog(marker_clip, mosquitto, mqtt_sub, spawn, tmp_path):
    """SIGTERM with inference down: exit 0, every frame in the spool, all replayed by the next run."""
    from procs import free_port

    port = free_port()
    sub = mqtt_sub(mosquitto.port, "focoos/#")
    config = daemon_config(tmp_path, api_url=f"http://127.0.0.1:{port}/v0", mqtt_port=mosquitto.port,
                           api_key=KEY, cameras=[_camera("a", marker_clip.path, sample_fps=4)])
    daemon = spawn(daemon_command(config), name="daemon")
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/stats" and m.json()["spool"]["frames"]["count"] >= 8,
                 30, "a backlog in the spool", watch=[daemon])
    final = stop_daemon(daemon, sub)["cameras"]["a"]
    assert final["delivered"] == 0 and final["pending"] == final["produced"] > 0, final
    with sqlite3.connect(tmp_path / "state" / "spool.db") as db:
        spooled = {row[0] for row in db.execute("SELECT frame_id FROM frames")}
    assert len(spooled) == final["produced"]

    server = LocalServer(port=port, api_key=KEY)
    server.start()
    try:
        mark = sub.count
        daemon = spawn(daemon_command(config), name="daemon-2")
        seen: dict[str, bool] = {}

        def all_replayed(m):
            if m.topic == f"{TOPIC}/a/detections":
                seen[m.json()["frame_id"]] = m.json()["replayed"]
            return spooled <= set(seen)

        sub.wait_for(all_replayed, 60, "every spooled frame published", since=mark, watch=[daemon])
        assert all(seen[f] for f in spooled)
        stop_daemon(daemon, sub)
    finally:
        server.stop()


def test_secret_canaries_appear_nowhere(rtsp_server, local_server, mosquitto_factory, mqtt_sub, spawn, tmp_path):
    """Canaries in the RTSP URL, the MQTT password and the API key, through a bad camera, a 401 and
    a broker outage: none in logs, MQTT messages or the spool's files."""
    import subprocess

    canary = "CANARY-7f3a9c"
    passwd = tmp_path / "mqtt.passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "edge", f"{canary}-mqtt"], check=True)
    broker = mosquitto_factory(extra_config=[f"password_file {passwd}"])
    camera = rtsp_server(pattern="ball", width=320, height=240, fps=10, user="viewer", password=f"{canary}-rtsp")
    sub = mqtt_sub(broker.port, "focoos/#")
    (tmp_path / "api_key").write_text(f"{canary}-api\n")
    config = daemon_config(
        tmp_path, api_url=local_server.url, mqtt_port=broker.port, api_key=None, log_level="debug",
        inference={"api_key_file": str(tmp_path / "api_key")},
        mqtt={"username": "edge", "password": f"{canary}-mqtt"},
        cameras=[{"name": "good", "source": camera.url},
                 {"name": "bad", "source": camera.url_with("viewer", f"{canary}-wrong"), "open_timeout_s": 2}])
    cfg = yaml.safe_load(config.read_text())
    del cfg["inference"]["api_key"]
    config.write_text(yaml.safe_dump(cfg))
    daemon = spawn(daemon_command(config), name="daemon")
    sub.wait_for(state_is(f"{TOPIC}/inference", "auth_failed"), 30, "401 reported", watch=[daemon])
    sub.wait_for(state_is(f"{TOPIC}/bad/state", "reconnecting"), 30, "bad camera reported")
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/stats" and m.json()["spool"]["frames"]["count"] > 0, 30,
                 "frames spooled")
    broker.kill()
    wait_until(lambda: "MQTT: disconnected" in daemon.stderr_text(), 20, message="broker outage seen")
    broker.start()
    sub.wait_ready()
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/availability" and m.payload == "online", 60, "back online",
                 since=0)
    stop_daemon(daemon, sub)
    check_config = subprocess.run(daemon_command(config)[:3] + ["check-config", "-c", str(config)],
                                  capture_output=True, text=True)
    texts = {
        "daemon stderr": daemon.stderr_text(), "daemon stdout": daemon.stdout_text(),
        "check-config": check_config.stdout + check_config.stderr,
        "mqtt": "\n".join(m.payload for m in sub.messages()),
    }
    for path in (tmp_path / "state").iterdir():
        texts[path.name] = path.read_bytes().decode("latin-1")
    assert "camera bad" in texts["daemon stderr"] and "401" in texts["daemon stderr"]
    assert "spool.db" in texts
    leaks = [where for where, text in texts.items() if canary in text]
    assert leaks == [], leaks


def test_a_file_with_loop_false_plays_once(marker_clip, local_server, mosquitto, mqtt_sub, spawn, tmp_path):
    import media

    clip = media.make_test_clip(tmp_path / "short.mp4", 320, 240, 25, 2)
    sub = mqtt_sub(mosquitto.port, "focoos/#")
    config = daemon_config(tmp_path, api_url=local_server.url, mqtt_port=mosquitto.port, api_key=KEY,
                           cameras=[_camera("once", clip, loop=False, sample_fps=4)])
    daemon = spawn(daemon_command(config), name="daemon")
    done = sub.wait_for(state_is(f"{TOPIC}/once/state", "offline"), 30, "offline at the end of the file",
                        watch=[daemon]).json()
    assert done["detail"] == "end of file"
    time.sleep(3)  # a replay would start within the reconnect backoff (1-2 s)
    final = stop_daemon(daemon, sub)["cameras"]["once"]
    assert final["reconnects"] == 0 and 4 <= final["sampled"] <= 10, final
