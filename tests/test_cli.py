"""The real `focoos-edge` console script as a subprocess: help and version, schema, check-config,
the `run` lifecycle (signals, sd_notify, availability), `local-server`, `probe` and `demo`.

Everything runs against real parts on 127.0.0.1: Mosquitto, an in-process LocalServer (or a
scripted HTTP server where a hung API is needed), GStreamer RTSP cameras and generated clips.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpfault
import jsonschema
import media
import numpy as np
import pytest
import requests
import yaml
from daemon_infra import daemon_config
from httpfault import FaultServer, closed_port
from media import Marker
from procs import wait_until

from focoos_edge import __version__
from focoos_edge.capture.encode import JpegEncoder
from focoos_edge.tools.localserver import LocalServer

CLI = [str(Path(sys.executable).with_name("focoos-edge"))]
CANARY = "CANARY-7f3a9c"
API_KEY = f"{CANARY}-api"  # the local server's key: a canary, so any leak is caught
DEVICE = "box1"
TOPIC = f"focoos/{DEVICE}"
EX_CONFIG = 78
STOP_DEADLINE_S = 10.0  # SIGTERM to exit with a healthy API: cameras, uplink and MQTT stop in order
# Inherited variables that would change what the CLI does.
_SCRUBBED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "JOURNAL_STREAM", "FOCOOS_API_KEY", "FOCOOS_LOCAL_API_KEY",
                 "CREDENTIALS_DIRECTORY")


def cli_env(**extra: str) -> dict[str, str]:
    """The test process's environment without systemd/credential variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    """Run the console script to completion, capturing text output."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout_s,
                          env=env or cli_env(), stdin=subprocess.DEVNULL)


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def assert_no_canary(*texts: str) -> None:
    for text in texts:
        assert CANARY not in text, f"a secret leaked:\n{text}"


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    server = LocalServer(port=0, api_key=API_KEY)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def small_marker_clip(ffmpeg_tool: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 640x360, 25 fps, 4 s H.264 clip with ArUco marker 3 (a cheap file:// camera)."""
    path = tmp_path_factory.mktemp("cli-media") / "markers-360p.mp4"
    return media.make_marker_clip(path, 640, 360, 25, 4, markers=[Marker(id=3, x=80, y=60, size=150)])


class NotifyListener:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.received: list[bytes] = []

    def drain(self) -> list[bytes]:
        """Every datagram received so far (the kernel queues them until read)."""
        self.sock.setblocking(False)
        try:
            while True:
                self.received.append(self.sock.recv(65536))
        except BlockingIOError:
            pass
        return self.received

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        yield listener
    finally:
        listener.close()


# --------------------------------------------------------------------------------------------
# --version, --help, schema


def test_version_from_the_console_script_and_python_m() -> None:
    done = run_cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"focoos-edge {__version__}"
    module = subprocess.run([sys.executable, "-m", "focoos_edge", "--version"], capture_output=True, text=True,
                            timeout=30, env=cli_env())
    assert (module.returncode, module.stdout) == (0, done.stdout)


def test_top_level_help_lists_every_command_and_the_exit_codes() -> None:
    done = run_cli("--help")
    assert done.returncode == 0, done.stderr
    for command in ("run", "check-config", "probe", "local-server", "demo", "schema"):
        assert command in done.stdout
    assert "78" in done.stdout


@pytest.mark.parametrize("command, options", [
    ("run", ["--config", "--log-level"]),
    ("check-config", ["--config"]),
    ("probe", ["--config", "--camera", "--out"]),
    ("local-server", ["--host", "--port", "--api-key", "--latency-ms"]),
    ("demo", ["--seconds", "--workdir", "--mqtt-port"]),
    ("schema", []),
])
def test_subcommand_help_mentions_its_options(command: str, options: list[str]) -> None:
    done = run_cli(command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: focoos-edge {command}")
    for option in options:
        assert option in done.stdout, option


def test_no_command_is_a_usage_error() -> None:
    done = run_cli()
    assert done.returncode == 2
    assert "usage: focoos-edge" in done.stderr


def test_schema_is_a_valid_json_schema_of_the_config(tmp_path: Path) -> None:
    done = run_cli("schema")
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    config = yaml.safe_load(valid_config_text())
    assert list(validator.iter_errors(config)) == []
    config["cameras"][0]["fps"] = 5
    errors = list(validator.iter_errors(config))
    assert errors and "fps" in errors[0].message


# --------------------------------------------------------------------------------------------
# check-config


def valid_config_text() -> str:
    """A config with a secret of each kind: API key from ${ENV}, MQTT password, camera URL password."""
    return f"""\
device_id: {DEVICE}
state_dir: state
stats_interval_s: 1
inference:
  api_url: http://127.0.0.1:8501/v0
  api_key: ${{TEST_FOCOOS_KEY}}
  model_ref: ${{TEST_MODEL:-local-aruco}}
mqtt:
  host: 127.0.0.1
  port: 1883
  username: edge
  password: {CANARY}-mqtt
cameras:
  - name: front_door
    source: rtsp://viewer:{CANARY}-cam@127.0.0.1:8554/cam
    labels: [aruco_3]
"""


@pytest.fixture
def valid_config(tmp_path: Path) -> Path:
    path = tmp_path / "conf" / "config.yaml"
    path.parent.mkdir()
    path.write_text(valid_config_text())
    return path


def test_check_config_prints_the_resolved_config_redacted(valid_config: Path) -> None:
    done = run_cli("check-config", "-c", str(valid_config), env=cli_env(TEST_FOCOOS_KEY=f"{CANARY}-api"))
    assert done.returncode == 0, done.stderr
    assert_no_canary(done.stdout, done.stderr)
    printed = yaml.safe_load(done.stdout)
    assert printed["device_id"] == DEVICE
    assert printed["inference"]["api_key"] == "***"
    assert printed["inference"]["model_ref"] == "local-aruco", "the ${VAR:-default} was resolved"
    assert printed["mqtt"]["password"] == "***"
    assert printed["cameras"][0]["source"] == "rtsp://***@127.0.0.1:8554/cam"
    assert printed["cameras"][0]["labels"] == ["aruco_3"]
    assert printed["state_dir"] == str(valid_config.parent / "state"), "relative to the config's folder"


def _broken(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


INVALID_CONFIGS = {
    "unknown_key": (lambda t: t + "    fps: 5\n", ["cameras[0].fps", "unknown key"]),
    "duplicate_camera": (lambda t: t + "  - name: front_door\n    source: usb:0\n",
                         ["cameras[1].name", "duplicate camera name"]),
    "missing_secret_file": (lambda t: _broken(t, "api_key: ${TEST_FOCOOS_KEY}", "api_key_file: no-such-key.txt"),
                            ["inference.api_key_file", "no-such-key.txt"]),
    "undefined_env_var": (lambda t: _broken(t, "${TEST_FOCOOS_KEY}", "${TEST_UNDEFINED_VAR}"),
                          ["inference.api_key", "TEST_UNDEFINED_VAR"]),
    "bad_yaml": (lambda t: t + "  - name: [unclosed\n", ["YAML syntax", "line 18"]),
}


@pytest.mark.parametrize("case", INVALID_CONFIGS, ids=list(INVALID_CONFIGS))
def test_check_config_rejects_invalid_configs_with_exit_78(tmp_path: Path, case: str) -> None:
    edit, expected = INVALID_CONFIGS[case]
    path = tmp_path / "config.yaml"
    path.write_text(edit(valid_config_text()))
    done = run_cli("check-config", "-c", str(path), env=cli_env(TEST_FOCOOS_KEY=f"{CANARY}-api"))
    assert done.returncode == EX_CONFIG, (done.stdout, done.stderr)
    assert done.stdout == ""
    for text in expected:
        assert text in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert_no_canary(done.stdout, done.stderr)


def test_check_config_of_a_missing_file_is_exit_78(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    done = run_cli("check-config", "-c", str(missing))
    assert done.returncode == EX_CONFIG
    assert str(missing) in done.stderr and "not found" in done.stderr


def test_run_with_an_invalid_config_exits_78_at_once(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(valid_config_text() + "    sample_fps: -1\n")
    started = time.monotonic()
    done = run_cli("run", "-c", str(path), env=cli_env(TEST_FOCOOS_KEY=f"{CANARY}-api"), timeout_s=30)
    assert done.returncode == EX_CONFIG, done.stderr
    assert "cameras[0].sample_fps" in done.stderr
    assert time.monotonic() - started < 15
    assert_no_canary(done.stdout, done.stderr)


# --------------------------------------------------------------------------------------------
# run: lifecycle, signals, sd_notify


def file_camera(clip: Path) -> list[dict[str, Any]]:
    return [{"name": "cam", "source": f"file://{clip}", "sample_fps": 2, "max_side": 640}]


def start_run(spawn, tmp_path: Path, api_url: str, mqtt_port: int, clip: Path, *, env: dict[str, str] | None = None,
              args: tuple[str, ...] = (), **config: Any):
    path = daemon_config(tmp_path, api_url=api_url, mqtt_port=mqtt_port, cameras=file_camera(clip),
                         api_key=API_KEY, device_id=DEVICE, **config)
    return spawn([*CLI, "run", "-c", str(path), *args], name="daemon", env=env or cli_env())


def is_availability(payload: str):
    return lambda m: m.topic == f"{TOPIC}/availability" and m.payload == payload


def retained(mqtt_sub, port: int, topic: str):
    """The retained message on `topic`, as a fresh subscriber sees it."""
    sub = mqtt_sub(port, topic=topic)
    message = sub.wait_for(lambda m: m.topic == topic, 5, f"retained message on {topic}")
    assert message.retained, message
    return message


def test_run_sigterm_stops_cleanly_with_sd_notify(spawn, tmp_path, local_server, mosquitto, mqtt_sub,
                                                  small_marker_clip, notify) -> None:
    sub = mqtt_sub(mosquitto.port, topic=f"{TOPIC}/#")
    daemon = start_run(spawn, tmp_path, local_server.url, mosquitto.port, small_marker_clip,
                       env=cli_env(NOTIFY_SOCKET=notify.path))
    sub.wait_for(is_availability("online"), 20, "availability online")
    assert retained(mqtt_sub, mosquitto.port, f"{TOPIC}/availability").payload == "online"
    detection = sub.wait_for(lambda m: m.topic == f"{TOPIC}/cam/detections", 15, "a detections message").json()
    assert [d["label"] for d in detection["detections"]] == ["aruco_3"]
    stats = sub.wait_for(lambda m: m.topic == f"{TOPIC}/stats", 5, "a stats message").json()
    assert stats["device_id"] == DEVICE and "cam" in stats["cameras"]
    assert notify.drain() and notify.received[0].startswith(b"READY=1\n"), notify.received

    mark = sub.count
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(STOP_DEADLINE_S) == 0, daemon.describe()
    assert time.monotonic() - started < STOP_DEADLINE_S
    sub.wait_for(is_availability("offline"), 5, "availability offline", since=mark)
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/cam/state" and m.json()["state"] == "offline", 5,
                 "camera state offline", since=mark)
    assert retained(mqtt_sub, mosquitto.port, f"{TOPIC}/availability").payload == "offline"
    assert retained(mqtt_sub, mosquitto.port, f"{TOPIC}/cam/state").json()["state"] == "offline"

    datagrams = notify.drain()
    stopping = [i for i, d in enumerate(datagrams) if d.startswith(b"STOPPING=1")]
    assert stopping and stopping[0] > 0, datagrams
    assert all(b"READY=1" not in d for d in datagrams[1:]), "READY=1 is sent once"
    stderr = daemon.stderr_text()
    assert "Traceback" not in stderr
    assert_no_canary(stderr, daemon.stdout_text())


def test_run_single_sigint_is_a_clean_stop(spawn, tmp_path, local_server, mosquitto, mqtt_sub,
                                           small_marker_clip) -> None:
    sub = mqtt_sub(mosquitto.port, topic=f"{TOPIC}/#")
    # Debug logging too: the most verbose level must not print the API key either.
    daemon = start_run(spawn, tmp_path, local_server.url, mosquitto.port, small_marker_clip,
                       args=("--log-level", "debug"))
    sub.wait_for(is_availability("online"), 20, "availability online")
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/cam/detections", 15, "a detections message")
    mark = sub.count
    daemon.signal(signal.SIGINT)
    assert daemon.wait(STOP_DEADLINE_S) == 0, daemon.describe()
    sub.wait_for(is_availability("offline"), 5, "availability offline", since=mark)
    stderr = daemon.stderr_text()
    assert "Traceback" not in stderr
    assert " DEBUG " in stderr, "--log-level debug was applied"
    assert_no_canary(stderr, daemon.stdout_text())


def test_run_with_an_unusable_state_dir_exits_1_naming_it(tmp_path, mosquitto, small_marker_clip) -> None:
    """A state_dir that cannot be created (the default /var/lib/focoos-edge for a non-root user, or
    a path under a file) is a fatal start-up error: exit 1, and the message names the folder."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    path = daemon_config(tmp_path, api_url="http://127.0.0.1:9/v0", mqtt_port=mosquitto.port,
                         cameras=file_camera(small_marker_clip), api_key=API_KEY, device_id=DEVICE,
                         state_dir=str(blocker / "state"))
    done = run_cli("run", "-c", str(path), timeout_s=30)
    assert done.returncode == 1, done.stderr
    assert str(blocker / "state") in done.stderr
    assert_no_canary(done.stdout, done.stderr)


def test_run_with_unloadable_tls_files_exits_1_naming_the_key(tmp_path, mosquitto, small_marker_clip) -> None:
    """A CA file that exists but is not a certificate: exit 1 with one line naming mqtt.tls."""
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    path = daemon_config(tmp_path, api_url="http://127.0.0.1:9/v0", mqtt_port=mosquitto.port,
                         cameras=file_camera(small_marker_clip), api_key=API_KEY, device_id=DEVICE,
                         mqtt={"tls": {"ca_file": str(bad_ca)}})
    done = run_cli("run", "-c", str(path), timeout_s=30)
    assert done.returncode == 1, done.stderr
    assert "mqtt.tls: cannot load the certificates" in done.stderr
    assert "Traceback" not in done.stderr
    assert_no_canary(done.stdout, done.stderr)


def test_run_second_sigint_forces_exit_during_a_slow_shutdown(spawn, tmp_path, mosquitto, mqtt_sub,
                                                              small_marker_clip) -> None:
    model = {"ref": "local-aruco", "name": "local-aruco", "task": "detection", "status": "TRAINING_COMPLETED",
             "classes": ["aruco_3"], "im_size": 640}

    def model_ok_inference_hangs(h) -> None:
        if h.command == "GET":
            httpfault.json(200, model)(h)
        else:
            httpfault.hang(60)(h)

    with FaultServer() as api:
        api.default = model_ok_inference_hangs
        sub = mqtt_sub(mosquitto.port, topic=f"{TOPIC}/#")
        # An in-flight request may take up to timeout_s to finish: a clean stop would wait for it.
        daemon = start_run(spawn, tmp_path, api.url, mosquitto.port, small_marker_clip,
                           inference={"timeout_s": 30})
        sub.wait_for(is_availability("online"), 20, "availability online")
        wait_until(lambda: any(r.method == "POST" for r in api.requests), 15, message="no inference request")
        daemon.signal(signal.SIGINT)
        time.sleep(1.0)  # let the first interrupt start the (slow) clean shutdown
        assert daemon.alive, f"precondition: the clean stop waits for the hung request\n{daemon.describe()}"
        mark = sub.count
        started = time.monotonic()
        daemon.signal(signal.SIGINT)
        code = daemon.wait(5.0)
        assert time.monotonic() - started < 3.0
        assert code == 1, daemon.describe()
        assert "second interrupt" in daemon.stderr_text()
        # The broker noticed the dropped connection: the last will says offline.
        sub.wait_for(is_availability("offline"), 10, "last will offline", since=mark)


# --------------------------------------------------------------------------------------------
# local-server


def test_local_server_subcommand_serves_and_stops_on_sigterm(spawn) -> None:
    key = f"{CANARY}-local"
    server = spawn([*CLI, "local-server", "--port", "0", "--log-level", "info"], name="local-server",
                   env=cli_env(FOCOOS_LOCAL_API_KEY=key))

    def listening() -> re.Match | None:
        if not server.alive:
            raise AssertionError(server.describe())
        return re.search(r"listening on (http://127\.0\.0\.1:\d+/v0)", server.stderr_text())

    url = wait_until(listening, 20, message=server.describe).group(1)
    info = requests.get(f"{url}/models/local-aruco", headers={"X-API-Key": key}, timeout=5)
    assert info.status_code == 200
    assert info.json()["ref"] == "local-aruco" and info.json()["task"] == "detection"
    assert requests.get(f"{url}/models/local-aruco", headers={"X-API-Key": "wrong-key"}, timeout=5).status_code == 401

    frame = media.draw_marker_frame(640, 360, [Marker(id=7, x=100, y=80, size=120)])
    jpeg = JpegEncoder().encode(frame, 85)
    reply = requests.post(f"{url}/models/local-aruco/inference", params={"confidence_threshold": "0.5"},
                          files={"file": ("image", jpeg, "image/jpeg")}, headers={"X-API-Key": key}, timeout=10)
    assert reply.status_code == 200
    assert [d["label"] for d in reply.json()["detections"]] == ["aruco_7"]

    server.signal(signal.SIGTERM)
    assert server.wait(10) == 0, server.describe()
    assert_no_canary(server.stderr_text(), server.stdout_text())


# --------------------------------------------------------------------------------------------
# probe


def probe_config(tmp_path: Path, api_url: str, api_key: str, mqtt_port: int, cameras: list[dict[str, Any]]) -> Path:
    return write_yaml(tmp_path / "probe.yaml", {
        "device_id": DEVICE, "state_dir": str(tmp_path / "state"),
        "inference": {"api_url": api_url, "api_key": api_key, "model_ref": "local-aruco", "timeout_s": 5},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port}, "cameras": cameras,
    })


def lines_by_prefix(stdout: str):
    """`line(prefix)`: the first output line starting with `prefix`, or "" when there is none."""
    lines = stdout.splitlines()
    return lambda prefix: next((text for text in lines if text.startswith(prefix)), "")


def test_probe_reports_camera_inference_and_broker(tmp_path, rtsp_server, local_server, mosquitto) -> None:
    camera = rtsp_server(pattern="ball", width=640, height=360, fps=15, user="viewer", password=f"{CANARY}-rtsp")
    config = probe_config(tmp_path, local_server.url, API_KEY, mosquitto.port,
                          [{"name": "gate", "source": camera.url, "open_timeout_s": 10}])
    out = tmp_path / "snapshots"
    done = run_cli("probe", "-c", str(config), "--out", str(out))
    assert done.returncode == 0, (done.stdout, done.stderr)
    line = lines_by_prefix(done.stdout)
    assert line("camera gate: ok, rtsp://***@127.0.0.1:"), done.stdout
    assert "640x360" in line("camera gate:") and "h264" in line("camera gate:").lower()
    assert "ready" in line(f"inference {local_server.url}: model local-aruco")
    # max_side: auto, shown with the model's im_size.
    assert "im_size 640" in line("inference") and "uploads: gate 640 px (auto)" in line("inference"), done.stdout
    assert line(f"mqtt 127.0.0.1:{mosquitto.port}: ok")
    assert done.stdout.splitlines()[-1] == "probe: all checks passed"
    assert "FAILED" not in done.stdout
    snapshot = cv2.imread(str(out / "gate.jpg"))
    assert snapshot is not None and snapshot.shape == (360, 640, 3)
    assert_no_canary(done.stdout, done.stderr)


def test_probe_names_each_failure_and_exits_1(tmp_path, rtsp_server, local_server) -> None:
    camera = rtsp_server(pattern="ball", width=320, height=240, fps=10, user="viewer", password=f"{CANARY}-good")
    dead_port, dead_broker = closed_port(), closed_port()
    cameras = [
        {"name": "dead", "source": f"rtsp://viewer:{CANARY}-dead@127.0.0.1:{dead_port}/cam", "open_timeout_s": 3},
        {"name": "badauth", "source": camera.url_with("viewer", f"{CANARY}-wrong"), "open_timeout_s": 5},
    ]
    config = probe_config(tmp_path, local_server.url, f"{CANARY}-wrong-key", dead_broker, cameras)
    out = tmp_path / "snapshots"
    done = run_cli("probe", "-c", str(config), "--out", str(out))
    assert done.returncode == 1, (done.stdout, done.stderr)
    line = lines_by_prefix(done.stdout)
    assert f":{dead_port}/cam" in line("camera dead: FAILED"), done.stdout
    assert line("camera badauth: FAILED"), done.stdout
    assert "API key" in line(f"inference {local_server.url}: FAILED"), done.stdout
    assert line(f"mqtt 127.0.0.1:{dead_broker}: FAILED"), done.stdout
    assert done.stdout.splitlines()[-1] == "probe: 4 check(s) failed"
    assert not list(out.glob("*.jpg"))
    assert_no_canary(done.stdout, done.stderr)


def test_probe_of_an_unknown_camera_exits_1(tmp_path, local_server) -> None:
    config = probe_config(tmp_path, local_server.url, API_KEY, closed_port(),
                          [{"name": "gate", "source": "usb:0"}])
    done = run_cli("probe", "-c", str(config), "--camera", "nope", "--out", str(tmp_path))
    assert done.returncode == 1
    assert "no camera named 'nope'" in done.stdout and "gate" in done.stdout


# --------------------------------------------------------------------------------------------
# demo


def test_demo_runs_the_whole_pipeline(mqtt_tools, tmp_path) -> None:
    workdir = tmp_path / "demo"
    done = run_cli("demo", "--seconds", "12", "--workdir", str(workdir), timeout_s=90)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    summaries = re.findall(r"demo: (\d+) detection messages", done.stdout)
    assert summaries and int(summaries[-1]) > 0, done.stdout[-3000:]
    assert re.search(r"labels seen: .*aruco_\d+ x\d+", done.stdout)
    # The walking marker's event, as sentences; every event ends (the last ones at the clean stop).
    assert "aruco_7 appeared (event demo_cam-" in done.stdout and "aruco_7 entered zone door" in done.stdout, \
        done.stdout[-3000:]
    appeared = re.findall(r"appeared \(event (\S+)\)", done.stdout)
    left = re.findall(r"left after [\d.]+ s \(event (\S+),", done.stdout)
    assert appeared and sorted(appeared) == sorted(left), done.stdout[-3000:]
    assert (workdir / "demo.yaml").is_file() and (workdir / "demo.mp4").is_file()
    # The demo's daemon stopped cleanly and its broker is gone: nothing listens on its port any more.
    port = int(re.search(r"MQTT broker 127\.0\.0\.1:(\d+)", done.stdout).group(1))
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_help_does_not_load_opencv_numpy_or_paho():
    """`--help` of every subcommand builds the parser only: the heavy stacks stay unloaded."""
    code = ("import sys, contextlib, io\nfrom focoos_edge.cli import build_parser\n"
            "for cmd in ([], ['run'], ['local-server'], ['probe'], ['demo']):\n"
            "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "        build_parser().parse_args(cmd + ['--help'])\n"
            "print(sorted(m for m in ('cv2', 'numpy', 'paho', 'requests') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_reload_loads_nothing_of_the_daemon_and_answers_from_the_file(tmp_path):
    """`focoos-edge reload` (the unit's ExecReload) imports the standard library only: in the systemd
    VM under emulation the daemon's imports took long enough for systemd to kill the reload job.
    Here it signals a real process and reads the answer that process writes."""
    answer = tmp_path / "reload"
    waiter = subprocess.Popen([sys.executable, "-c",
                               "import signal, sys, pathlib\n"
                               "signal.signal(signal.SIGHUP, lambda *a: (pathlib.Path(sys.argv[1]).write_text("
                               "'1 refused\\n'), sys.exit(0)))\nprint('ready', flush=True)\nsignal.pause()",
                               str(answer)], stdout=subprocess.PIPE, text=True)
    try:
        assert waiter.stdout is not None and waiter.stdout.readline().strip() == "ready"
        code = ("import sys\nfrom focoos_edge.cli import main\nrc = main(['reload', '--pid', sys.argv[1], "
                "'--timeout', '30'])\nprint(rc, sorted(m for m in ('cv2', 'numpy', 'paho', 'requests', 'pydantic', "
                "'yaml', 'focoos_edge.service') if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code, str(waiter.pid)], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "RUNTIME_DIRECTORY": str(tmp_path)})
    finally:
        waiter.kill()
        waiter.wait(10)
    assert out.stdout.strip() == "1 []", (out.stdout, out.stderr)
    assert "refused" in out.stderr


def test_the_probe_pictures_are_masked_and_cropped() -> None:
    """The probe's saved JPEG and its test upload carry the camera's privacy masks (and crop)."""
    from focoos_edge.capture.encode import JpegEncoder
    from focoos_edge.config.models import CameraConfig
    from focoos_edge.tools.probe import probe_images

    cam = CameraConfig(name="gate", source="rtsp://127.0.0.1/x", max_side=320, crop=[0.0, 0.0, 0.5, 1.0],
                       privacy_masks=[[[0.0, 0.0], [0.25, 0.0], [0.25, 0.5], [0.0, 0.5]]])
    frame = np.full((720, 1280, 3), 150, np.uint8)
    saved, upload = (cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)
                     for j in probe_images(cam, frame, JpegEncoder()))
    assert saved.shape == (720, 1280, 3) and saved[:350, :310].max() <= 16 and saved[380:, :].min() >= 130
    assert upload.shape == (320, 284, 3)  # the left half (640 x 720) at 320 px on its long side
    assert upload[:150, :130].max() <= 16 and upload[170:, :].min() >= 130 and upload[:, 150:].min() >= 130
