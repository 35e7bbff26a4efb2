"""The shared test infrastructure works: real Mosquitto, mosquitto_sub, the RTSP camera, media."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import media
import numpy as np
import pytest
from media import Marker
from procs import (
    InfraError,
    ProcessExited,
    ProcessRegistry,
    WaitTimeout,
    free_port,
    port_accepts,
    rtsp_describe_status,
    topic_matches,
    wait_for_port,
    wait_until,
)

CORNER_TOLERANCE_PX = 2.0
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def publish(port: int, topic: str, payload: str, *, retain: bool = False, qos: int = 1) -> None:
    """Publish with mosquitto_pub (another client than the subscriber and the daemon)."""
    cmd = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-m", payload]
    cmd += ["-q", str(qos)] + (["-r"] if retain else [])
    subprocess.run(cmd, check=True, timeout=10, capture_output=True)


def expected_corners(marker: Marker, dx: int = 0) -> np.ndarray:
    """Detected corners sit on the first and last pixel rows/columns of the marker."""
    x, y, last = marker.x + dx, marker.y, marker.size - 1
    return np.array([[x, y], [x + last, y], [x + last, y + last], [x, y + last]], float)


def assert_markers_at(frame: np.ndarray, markers: tuple[Marker, ...], dx: int = 0) -> None:
    found = media.detect_markers(frame)
    assert sorted(found) == sorted(m.id for m in markers)
    for marker in markers:
        error_px = np.abs(found[marker.id] - expected_corners(marker, dx)).max()
        assert error_px <= CORNER_TOLERANCE_PX, (marker, found[marker.id])


# --- waits and child processes -------------------------------------------------------------


def test_free_port_is_bindable_and_closed_port_wait_fails_fast() -> None:
    port = free_port()
    assert not port_accepts(port)
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=f"127.0.0.1:{port}"):
        wait_for_port(port, timeout_s=0.3)
    assert time.monotonic() - started < 2.0


def test_wait_until_returns_value_and_times_out_with_lazy_message() -> None:
    values = iter([0, 0, "done"])
    assert wait_until(lambda: next(values), timeout_s=2, interval_s=0.01) == "done"
    with pytest.raises(WaitTimeout, match="still nothing after 0.2"):
        wait_until(lambda: False, timeout_s=0.2, message=lambda: "still nothing after 0.2")


def test_child_process_captures_output_and_reports_signals(spawn) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))\n"
        "print('to stdout', flush=True); print('to stderr', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = spawn([sys.executable, "-c", code])
    wait_until(lambda: "to stderr" in proc.stderr_text(), timeout_s=10, message=proc.describe)
    assert proc.alive and proc.stdout_text() == "to stdout\n"
    assert proc.cpu_seconds() >= 0 and proc.rss_bytes() > 1_000_000
    with pytest.raises(WaitTimeout, match="to stderr"):  # the failure shows the stderr tail
        proc.wait(timeout_s=0.1)
    proc.signal(signal.SIGTERM)
    assert proc.wait(timeout_s=10) == 3
    with pytest.raises(InfraError, match="exited with status 3"):
        proc.signal(signal.SIGTERM)


def test_terminate_escalates_to_sigkill_and_kill_is_sigkill(spawn) -> None:
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    stubborn += "print('ready', flush=True)\ntime.sleep(60)\n"
    proc = spawn([sys.executable, "-c", stubborn], name="stubborn")
    wait_until(lambda: "ready" in proc.stdout_text(), timeout_s=10, message=proc.describe)
    assert proc.terminate(timeout_s=0.3) == -signal.SIGKILL
    other = spawn(SLEEPER, name="sleeper")
    assert other.kill() == -signal.SIGKILL
    assert other.stdout_path != proc.stdout_path


def test_waits_fail_fast_when_a_watched_process_exits(spawn, mosquitto, mqtt_sub) -> None:
    crash = "import sys; print('fatal: config is bad', file=sys.stderr); sys.exit(78)"
    daemon = spawn([sys.executable, "-c", crash], name="daemon")
    sub = mqtt_sub(mosquitto.port)
    started = time.monotonic()
    with pytest.raises(ProcessExited, match="(?s)daemon .*status 78.*config is bad"):
        sub.wait_for(lambda m: False, timeout_s=30, what="detections", watch=[daemon])
    with pytest.raises(ProcessExited, match="waiting for 1 messages on a/#"):
        sub.wait_count("a/#", 1, timeout_s=30, watch=[daemon])
    with pytest.raises(ProcessExited, match="waiting for never true"):
        wait_until(lambda: False, timeout_s=30, message="never true", watch=[daemon])
    assert time.monotonic() - started < 10


def test_registry_stops_everything_even_when_one_stop_fails(spawn) -> None:
    procs = [spawn(SLEEPER, name=f"p{i}") for i in range(2)]
    registry = ProcessRegistry()
    registry.add(procs[0], procs[0].terminate)
    registry.add("broken", lambda: 1 / 0)
    registry.add(procs[1], procs[1].terminate)
    errors = registry.stop_all()
    assert len(errors) == 1 and "division by zero" in errors[0]
    assert not procs[0].alive and not procs[1].alive
    sections = dict(registry.sections())
    assert sections["infra: p0"].startswith(f"p0 (pid {procs[0].pid}, exited with status -15)")


# --- MQTT ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("#", "a/b", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/+", "a/b/c", False),
        ("a/b", "a/b/c", False),
        ("+/+", "a/b", True),
        ("#", "$SYS/broker", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


def test_subscriber_sees_retained_flag_and_payloads_and_times_out_helpfully(
    mosquitto, mqtt_sub
) -> None:
    publish(mosquitto.port, "edge/cam1/state", '{"state": "online"}', retain=True)
    sub = mqtt_sub(mosquitto.port, topic="edge/#")
    retained = sub.wait_for(lambda m: m.topic == "edge/cam1/state", timeout_s=10, what="state")
    assert retained.retained and retained.json() == {"state": "online"}
    mark = sub.count
    publish(mosquitto.port, "edge/cam1/detections", "tab\there\nand a newline")
    publish(mosquitto.port, "other/topic", "not subscribed")
    live = sub.wait_count("edge/+/detections", 1, timeout_s=10, since=mark)[0]
    assert not live.retained and live.payload == "tab\there\nand a newline" and live.qos == 1
    assert [m.topic for m in sub.messages()] == ["edge/cam1/state", "edge/cam1/detections"]
    expected = r"(?s)after 0\.3 s waiting for never.*edge/cam1/detections"
    with pytest.raises(WaitTimeout, match=expected):
        sub.wait_for(lambda m: False, timeout_s=0.3, what="never")


def test_broker_kill_and_restart_on_same_port(mosquitto, mqtt_sub) -> None:
    sub = mqtt_sub(mosquitto.port, topic="t/#")
    port = mosquitto.port
    mosquitto.kill()
    assert mosquitto.proc.returncode == -signal.SIGKILL and not port_accepts(port)
    mosquitto.restart()
    assert mosquitto.port == port and port_accepts(port)
    sub.wait_ready(timeout_s=15)  # mosquitto_sub reconnects and resubscribes by itself
    publish(port, "t/after", "back")
    assert sub.wait_for(lambda m: m.topic == "t/after", timeout_s=10).payload == "back"


def test_persistent_broker_and_session_survive_sigkill(mosquitto_factory, mqtt_sub) -> None:
    broker = mosquitto_factory(persistence=True)
    sub = mqtt_sub(broker.port, topic="q/#", persistent_id="infra-test-session")
    sub.stop()
    publish(broker.port, "q/while-away", "queued", qos=1)
    publish(broker.port, "q/retained", "kept", retain=True)
    store = broker.work_dir / "store" / "mosquitto.db"
    # The broker saves every autosave_interval (1 s); wait for a save that includes both.
    first_save = wait_until(lambda: store.exists() and store.stat().st_mtime, timeout_s=10)
    wait_until(lambda: store.stat().st_mtime > first_save, timeout_s=10, message=broker.describe)
    broker.kill()
    broker.restart()
    again = mqtt_sub(broker.port, topic="q/#", persistent_id="infra-test-session")
    queued = again.wait_for(lambda m: m.topic == "q/while-away", timeout_s=10)
    assert queued.payload == "queued" and not queued.retained
    # Delivered twice: the copy queued for the offline session (not retained), and the
    # retained copy sent on resubscription, which is the one that proves the store survived.
    kept = again.wait_for(lambda m: m.topic == "q/retained" and m.retained, timeout_s=10)
    assert kept.payload == "kept"


# --- media and RTSP -------------------------------------------------------------------------


def test_marker_clip_markers_are_detected_where_drawn(marker_clip) -> None:
    frames = media.read_frames(marker_clip.path, 1)
    assert frames and frames[0].shape == (marker_clip.height, marker_clip.width, 3)
    assert_markers_at(frames[0], marker_clip.markers)


def test_moving_marker_clip_follows_the_sway(tmp_path: Path) -> None:
    marker = Marker(id=5, x=200, y=100, size=120)
    path = media.make_marker_clip(
        tmp_path / "sway.mp4", 640, 360, fps=10, seconds=4, markers=[marker], motion=True
    )
    frames = media.read_frames(path, 40)
    assert len(frames) == 40
    for index in (0, 10, 30):  # offsets 0, +40, -40 px
        dx = media.sway_offset_px(index, fps=10, motion_px=40, period_s=4)
        assert_markers_at(frames[index], (marker,), dx=dx)


def test_rtsp_pattern_server_is_read_by_cv2_and_survives_kill_restart(rtsp_server) -> None:
    server = rtsp_server(pattern="ball", width=640, height=360, fps=25)
    frames = media.read_frames(server.url, 5)
    assert len(frames) == 5 and frames[0].shape == (360, 640, 3)
    server.kill()
    assert not port_accepts(server.port)
    assert media.read_frames(server.url, 1, timeout_s=3) == []
    server.restart()
    frames = media.read_frames(server.url, 5)
    assert len(frames) == 5 and frames[-1].shape == (360, 640, 3)


def test_rtsp_clip_server_loops_the_clip_and_keeps_markers(
    rtsp_server, marker_clip, tmp_path
) -> None:
    server = rtsp_server(clip=marker_clip.path)
    frames = media.read_frames(server.url, 3)
    assert len(frames) == 3 and frames[0].shape == (marker_clip.height, marker_clip.width, 3)
    assert_markers_at(frames[-1], marker_clip.markers)
    # A 1 s clip read for 2.4 s: the server loops instead of ending the stream.
    short = media.make_test_clip(tmp_path / "short.mp4", 320, 240, fps=25, seconds=1)
    looping = rtsp_server(clip=short)
    assert len(media.read_frames(looping.url, 60, timeout_s=5)) == 60
    assert server.alive and looping.alive


def test_rtsp_basic_auth_rejects_wrong_password_and_accepts_right_one(rtsp_server) -> None:
    server = rtsp_server(pattern="smpte", width=320, height=240, user="cam", password="s3cr:t/@")
    assert "s3cr%3At%2F%40@" in server.url
    assert rtsp_describe_status(server.port, user="cam", password="wrong") == 401
    assert rtsp_describe_status(server.port) == 401
    assert rtsp_describe_status(server.port, user="cam", password="s3cr:t/@") == 200
    assert media.read_frames(server.url_with("cam", "wrong"), 1, timeout_s=5) == []
    assert media.read_frames(server.url_no_auth, 1, timeout_s=5) == []
    frames = media.read_frames(server.url, 2)
    assert len(frames) == 2 and frames[0].shape == (240, 320, 3)
    server.terminate()
    assert server.proc.returncode == 0  # SIGTERM is a clean exit


def test_rtsp_server_on_a_busy_port_fails_with_its_stderr(rtsp_server, tmp_path) -> None:
    first = rtsp_server(pattern="ball", width=320, height=240)
    with pytest.raises(InfraError, match="cannot listen on 127.0.0.1"):
        rtsp_server(pattern="ball", width=320, height=240, port=first.port)
