"""Service behaviour of the real daemon: SIGHUP reload, sd_notify watchdog, log rate limiting."""

from __future__ import annotations

import logging
import signal
import socket
import time

import pytest
import yaml

from daemon_infra import daemon_command, daemon_config
from focoos_edge.daemon import stalled
from focoos_edge.localserver import LocalServer
from focoos_edge.logs import RateLimitFilter
from procs import wait_until
from test_e2e import KEY, TOPIC, state_is, stop_daemon


@pytest.fixture
def local_server():
    server = LocalServer(port=0, api_key=KEY)
    server.start()
    yield server
    server.stop()


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
        except socket.timeout:
            assert daemon.alive, daemon.describe()
    texts = [m for _, m in got]
    assert texts[0].startswith("READY=1") and "STATUS=" in texts[0], texts
    pings = [t for t, m in got if m == "WATCHDOG=1"]
    assert len(pings) >= 4, texts
    assert max(b - a for a, b in zip(pings, pings[1:])) < 2.0  # within WatchdogSec
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    rest = []
    try:
        while True:
            rest.append(sock.recv(4096).decode())
    except socket.timeout:
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
        return logging.LogRecord("focoos_edge.capture", logging.WARNING, __file__, 1, msg, args, None)

    assert filt.filter(record("camera %s down", "a"))
    assert filt.filter(record("camera %s down", "b"))  # a different line is never hidden
    for _ in range(5):
        now[0] += 1
        assert not filt.filter(record("camera %s down", "a"))
    now[0] += 60
    rec = record("camera %s down", "a")
    assert filt.filter(rec)
    assert rec.getMessage() == "camera a down (repeated 5 more times)"


def _trickle_headers(h):
    """A server that never finishes its status line: each recv gets a byte, so no read timeout fires."""
    h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    h.wfile.flush()
    while not h.server.stopping.wait(0.3):
        try:
            h.wfile.write(b"a")
            h.wfile.flush()
        except OSError:
            return


def test_watchdog_stops_when_the_uplink_hangs(marker_clip, mosquitto, spawn, tmp_path):
    import os
    import httpfault

    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(0.5)
    with httpfault.FaultServer() as server:
        server.default = _trickle_headers
        config = daemon_config(tmp_path, api_url=server.url, mqtt_port=mosquitto.port, api_key=KEY,
                               inference={"timeout_s": 1, "max_in_flight": 1},
                               cameras=[_camera("a", marker_clip.path)])
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"}
        daemon = spawn(daemon_command(config), name="daemon", env=env)
        last_ping, silent_s = None, 0.0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if sock.recv(4096) == b"WATCHDOG=1":
                    last_ping = time.monotonic()
            except socket.timeout:
                pass
            if last_ping is not None:
                silent_s = time.monotonic() - last_ping
                if silent_s > 6:
                    break
        assert last_ping is not None, "no watchdog ping at all"
        assert silent_s > 6, "the watchdog kept being fed while the uplink hung"
        wait_until(lambda: "watchdog: uplink stuck" in daemon.stderr_text(), 10, message="stall logged")
        daemon.kill()
    sock.close()
