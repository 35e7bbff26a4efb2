"""Config loading: error lines (YAML path + line), defaults, ${ENV}, secrets, paths, schema; sources."""

from __future__ import annotations

import json
import re
import socket
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from focoos_edge.config.load import ConfigError
from focoos_edge.config.models import Config, config_json_schema, load_config
from focoos_edge.config.sources import Source, parse_source

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"
CANARY = "CANARY-7f3a9c"

MINIMAL = """\
inference:
  api_key: k-123456
  model_ref: m
cameras:
  - name: cam
    source: rtsp://127.0.0.1:8554/cam
"""


def write(folder: Path, text: str, name: str = "config.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(folder: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write(folder, text), environ=environ or {})


def errors_of(folder: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(folder, text, environ)
    return caught.value


TOPIC_ERROR = "mqtt.topic_prefix (line 8): must be one or more topic levels separated by '/'"


def assert_nothing_chained(error: BaseException) -> None:
    """A traceback of ``error`` shows no underlying exception (a ValidationError quotes inputs)."""
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


# (yaml text, environment, expected substring). Line numbers count from 1 in the text.
BAD = {
    "yaml_syntax": (
        "inference: [1, 2\ncameras: []\n", {},
        "YAML syntax (line 2, column 8): while parsing a flow sequence, expected ',' or ']'",
    ),
    "top_level_list": ("- a\n- b\n", {}, "config (line 1): the top level must be a mapping"),
    "empty_file": ("", {}, "config (line 1): the top level must be a mapping"),
    "duplicate_yaml_key": (MINIMAL + "cameras: []\n", {}, "cameras (line 7): duplicate key 'cameras'"),
    "unknown_top_key": (MINIMAL + "devcie_id: x\n", {}, "devcie_id (line 7): unknown key 'devcie_id'"),
    "unknown_nested_key": (
        MINIMAL + "mqtt:\n  host: h\n  hots: x\n", {}, "mqtt.hots (line 9): unknown key 'hots'"
    ),
    "unknown_camera_key": (MINIMAL + "    fps: 3\n", {}, "cameras[0].fps (line 7): unknown key 'fps'"),
    "wrong_type_number": (
        MINIMAL + "stats_interval_s: soon\n", {}, "stats_interval_s (line 7): Input should be a valid number"
    ),
    "wrong_type_mapping": (MINIMAL + "mqtt: 5\n", {}, "mqtt (line 7): expected a mapping"),
    "wrong_type_list": (
        "inference: {api_key: k-123456, model_ref: m}\ncameras: cam\n", {}, "cameras (line 2): expected a list"
    ),
    "out_of_range_fps": (
        MINIMAL + "    sample_fps: 31\n", {},
        "cameras[0].sample_fps (line 7): Input should be less than or equal to 30",
    ),
    "out_of_range_threshold": (
        MINIMAL.replace("model_ref: m", "model_ref: m\n  threshold: 1.5"), {},
        "inference.threshold (line 4): Input should be less than or equal to 1",
    ),
    "out_of_range_port": (MINIMAL + "mqtt:\n  port: 70000\n", {}, "mqtt.port (line 8): Input should be less"),
    "out_of_range_qos": (MINIMAL + "mqtt:\n  qos: 3\n", {}, "mqtt.qos (line 8): Input should be less"),
    "out_of_range_jpeg": (
        MINIMAL + "    jpeg_quality: 0\n", {}, "cameras[0].jpeg_quality (line 7): Input should be greater"
    ),
    "bad_log_level": (
        MINIMAL + "log_level: verbose\n", {}, "log_level (line 7): Input should be 'debug', 'info'"
    ),
    "bad_device_id": ("device_id: edge/01\n" + MINIMAL, {}, "device_id (line 1): String should match pattern"),
    "bad_camera_name": (
        MINIMAL.replace("name: cam", "name: Front Door"), {},
        "cameras[0].name (line 5): String should match pattern",
    ),
    "bad_api_url": (
        MINIMAL.replace("model_ref: m", "model_ref: m\n  api_url: ftp://api.focoos.ai"), {},
        "inference.api_url (line 4): must be an http(s) URL with a host",
    ),
    "http_api_url_not_loopback": (
        MINIMAL.replace("model_ref: m", "model_ref: m\n  api_url: http://api.example.com/v0"), {},
        "inference.api_url (line 4): plain http:// to api.example.com would send the API key in clear text",
    ),
    "unknown_camera_scheme": (
        MINIMAL.replace("rtsp://127.0.0.1:8554/cam", "ftp://127.0.0.1/cam"), {},
        "cameras[0].source (line 6): unknown camera source scheme 'ftp' (expected rtsp://, rtsps://",
    ),
    "rtsp_without_host": (
        MINIMAL.replace("rtsp://127.0.0.1:8554/cam", "rtsp:///cam"), {},
        "cameras[0].source (line 6): rtsp:// URL has no host",
    ),
    "file_url_relative": (
        MINIMAL.replace("rtsp://127.0.0.1:8554/cam", "file://clip.mp4"), {},
        "cameras[0].source (line 6): file:// URLs take an absolute path",
    ),
    "duplicate_camera_name": (
        MINIMAL + "  - name: other\n    source: usb:0\n  - name: cam\n    source: usb:1\n", {},
        "cameras[2].name (line 9): duplicate camera name 'cam' (already used by cameras[0])",
    ),
    "empty_labels": (
        MINIMAL + "    labels: []\n", {}, "cameras[0].labels (line 7): must have at least 1 item(s)"
    ),
    "blank_label": (
        MINIMAL + "    labels: [person, ' ']\n", {},
        "cameras[0].labels[1] (line 7): String should have at least 1 character",
    ),
    "missing_secret_file": (
        MINIMAL.replace("api_key: k-123456", "api_key_file: missing.txt"), {},
        "inference.api_key_file (line 2): cannot read ",
    ),
    "undefined_env_var": (
        MINIMAL.replace("k-123456", "${FOCOOS_TEST_NOPE}"), {},
        "inference.api_key (line 2): environment variable FOCOOS_TEST_NOPE is not set",
    ),
    "malformed_env_reference": (
        MINIMAL.replace("model_ref: m", "model_ref: ${1BAD}"), {},
        "inference.model_ref (line 3): malformed ${...} reference",
    ),
    "api_key_and_api_key_file": (
        MINIMAL.replace("api_key: k-123456", "api_key: k-123456\n  api_key_file: key.txt"), {},
        "inference.api_key_file (line 3): set api_key or api_key_file, not both",
    ),
    "no_api_key": (
        MINIMAL.replace("  api_key: k-123456\n", ""), {},
        "inference.api_key (line 1): an API key is required (api_key or api_key_file)",
    ),
    "blank_api_key": (
        MINIMAL.replace("k-123456", "${EMPTY}"), {"EMPTY": ""}, "inference.api_key (line 2): must not be blank"
    ),
    "password_without_username": (
        MINIMAL + "mqtt:\n  password: pw-123456\n", {}, "mqtt.username (line 7): a password needs a username"
    ),
    "password_and_password_file": (
        MINIMAL + "mqtt:\n  username: u\n  password: pw-123456\n  password_file: key.txt\n", {},
        "mqtt.password_file (line 10): set password or password_file, not both",
    ),
    "empty_cameras": (
        MINIMAL.split("cameras:")[0] + "cameras: []\n", {}, "cameras (line 4): must have at least 1 item(s)"
    ),
    "missing_cameras": (MINIMAL.split("cameras:")[0], {}, "cameras (line 1): required key is missing"),
    "missing_model_ref": (
        MINIMAL.replace("  model_ref: m\n", ""), {}, "inference.model_ref (line 1): required key is missing"
    ),
    "topic_prefix_empty_level": (
        MINIMAL + "mqtt:\n  topic_prefix: a//b\n", {}, TOPIC_ERROR
    ),
    "topic_prefix_wildcard": (
        MINIMAL + "mqtt:\n  topic_prefix: site/+\n", {}, TOPIC_ERROR
    ),
    "topic_prefix_leading_slash": (
        MINIMAL + "mqtt:\n  topic_prefix: /focoos\n", {}, TOPIC_ERROR
    ),
    "tls_missing_ca_file": (
        MINIMAL + "mqtt:\n  tls:\n    ca_file: nope.pem\n", {}, "mqtt.tls.ca_file (line 9): file not found: "
    ),
    "tls_cert_without_key": (
        MINIMAL + "mqtt:\n  tls:\n    cert_file: key.txt\n", {},
        "mqtt.tls.key_file (line 8): cert_file and key_file go together",
    ),
    "bytesize_unparsable": (
        MINIMAL + "spool:\n  max_bytes: lots\n", {}, "spool.max_bytes (line 8): could not parse value and unit"
    ),
    "bytesize_too_small": (
        MINIMAL + "spool:\n  max_bytes: 512KiB\n", {}, "spool.max_bytes (line 8): must be at least 1MiB"
    ),
}


@pytest.mark.parametrize(("text", "environ", "expected"), list(BAD.values()), ids=list(BAD))
def test_bad_config_names_path_and_line(tmp_path: Path, text: str, environ: dict, expected: str) -> None:
    (tmp_path / "key.txt").write_text("k-from-file\n")
    error = errors_of(tmp_path, text, environ)
    assert expected in str(error), str(error)
    assert all(re.match(r"^.+ \(line \d+(, column \d+)?\): ", line) for line in error.errors), error.errors


def test_all_errors_are_collected(tmp_path: Path) -> None:
    error = errors_of(tmp_path, MINIMAL + "    sample_fps: 0\nlog_level: loud\nmqtt:\n  hots: x\n")
    assert len(error.errors) == 3
    assert str(error).splitlines() == error.errors
    assert [line.split(" (")[0] for line in error.errors] == ["log_level", "mqtt.hots", "cameras[0].sample_fps"]


def test_missing_file_and_empty_secret_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", environ={})
    (tmp_path / "empty.txt").write_text("\n  \n")
    error = errors_of(tmp_path, MINIMAL.replace("api_key: k-123456", "api_key_file: empty.txt"))
    assert f"inference.api_key_file (line 2): {tmp_path / 'empty.txt'} is empty" in str(error)


def test_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL)
    assert re.fullmatch(r"[a-z0-9_.-]+", config.device_id)
    if re.fullmatch(r"[a-z0-9_.-]+", socket.gethostname()):
        assert config.device_id == socket.gethostname()
    assert config.state_dir == Path("/var/lib/focoos-edge")
    assert (config.log_level, config.stats_interval_s) == ("info", 30)
    inference = config.inference
    assert inference.api_url == "https://api.focoos.ai/v0" and inference.api_key_value == "k-123456"
    assert (inference.threshold, inference.timeout_s, inference.max_in_flight) == (0.5, 10, 4)
    mqtt = config.mqtt
    assert (mqtt.host, mqtt.port, mqtt.tls) == ("127.0.0.1", 1883, None)
    assert (mqtt.username, mqtt.password, mqtt.password_file, mqtt.password_value) == (None, None, None, None)
    assert (mqtt.topic_prefix, mqtt.qos, mqtt.keepalive_s, mqtt.client_id) == ("focoos", 1, 30, None)
    assert (config.spool.max_bytes, config.spool.max_age_s) == (256 * 1024 * 1024, 86400)
    (camera,) = config.cameras
    assert (camera.sample_fps, camera.max_side, camera.jpeg_quality) == (2, "auto", 80)  # the model's im_size
    assert (camera.privacy_masks, camera.crop, camera.masks, camera.fixed_max_side) == ((), None, "polygons", None)
    assert (camera.threshold, camera.labels, camera.loop) == (None, None, True)
    assert (camera.open_timeout_s, camera.read_timeout_s) == (10, 10)
    assert camera.parsed_source == Source("rtsp", "rtsp://127.0.0.1:8554/cam")
    assert config.threshold_for(camera) == 0.5


def test_tls_changes_default_port_only(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL + "mqtt:\n  tls: {}\n").mqtt.port == 8883
    assert load(tmp_path, MINIMAL + "mqtt:\n  tls: {}\n  port: 18883\n").mqtt.port == 18883
    assert load(tmp_path, MINIMAL + "mqtt:\n  tls: null\n").mqtt.port == 1883


def test_http_api_url_allowed_to_loopback(tmp_path: Path) -> None:
    for url, expected in [
        ("http://127.0.0.1:8501/v0", "http://127.0.0.1:8501/v0"),
        ("http://localhost:8501/v0/", "http://localhost:8501/v0"),
        ("http://[::1]:8501/v0", "http://[::1]:8501/v0"),
        ("http://127.8.9.10/v0", "http://127.8.9.10/v0"),
    ]:
        config = load(tmp_path, MINIMAL.replace("model_ref: m", f"model_ref: m\n  api_url: '{url}'"))
        assert config.inference.api_url == expected


def test_env_substitution(tmp_path: Path) -> None:
    text = """\
    device_id: ${DEVICE:-edge-01}
    inference:
      api_key: ${KEY}
      model_ref: ${MODEL:-fai-detr-l-obj365}
      threshold: ${THRESHOLD:-0.7}
    mqtt:
      username: ${USER_EMPTY:-bob}
      password: pa$$word-$${NOT_A_VAR}-a$b
      port: ${PORT}
    cameras:
      - name: cam
        source: rtsp://u:${CAM_PW}@127.0.0.1/x
        sample_fps: ${FPS}
    """
    environ = {"KEY": "k-123456", "USER_EMPTY": "", "PORT": "11883", "CAM_PW": "p%40ss", "FPS": "0.5",
               "DEVICE": "box-7"}
    config = load(tmp_path, text, environ)
    assert config.device_id == "box-7"
    assert config.inference.api_key_value == "k-123456"
    assert config.inference.model_ref == "fai-detr-l-obj365"
    assert config.inference.threshold == 0.7  # a substituted string validates as a float
    assert config.mqtt.username == "bob"  # like the shell: an empty variable takes the default
    assert config.mqtt.password_value == "pa$word-${NOT_A_VAR}-a$b"
    assert config.mqtt.port == 11883 and config.cameras[0].sample_fps == 0.5
    assert config.cameras[0].source == "rtsp://u:p%40ss@127.0.0.1/x"


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOCOOS_TEST_KEY", "k-from-os-environ")
    path = write(tmp_path, MINIMAL.replace("k-123456", "${FOCOOS_TEST_KEY}"))
    assert load_config(path).inference.api_key_value == "k-from-os-environ"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("256MiB", 256 * 2**20),
        ("1GB", 10**9),
        ("1.5MiB", int(1.5 * 2**20)),
        (2097152, 2097152),
        ("'4 MiB'", 4 * 2**20),
    ],
)
def test_byte_sizes(tmp_path: Path, value: object, expected: int) -> None:
    assert load(tmp_path, MINIMAL + f"spool:\n  max_bytes: {value}\n").spool.max_bytes == expected


def test_relative_paths_resolve_against_config_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "etc"
    write(folder, "k-from-file\n", "secrets/api_key")
    write(folder, "mqtt-pw\n", "secrets/mqtt")
    for name in ("ca.pem", "client.crt", "client.key"):
        write(folder, "x", f"tls/{name}")
    text = """\
    state_dir: state
    inference:
      api_key_file: secrets/api_key
      model_ref: m
    mqtt:
      username: u
      password_file: secrets/mqtt
      tls: {ca_file: tls/ca.pem, cert_file: tls/client.crt, key_file: tls/client.key}
    cameras:
      - {name: a, source: clips/a.mp4}
      - {name: b, source: file:///srv/b%20c.mp4}
      - {name: c, source: usb:1}
      - {name: d, source: /dev/video2}
    """
    config_path = write(folder, text)
    monkeypatch.chdir(tmp_path)  # load through a relative path from another working directory
    config = load_config(config_path.relative_to(tmp_path), environ={})
    assert config.state_dir == folder / "state"
    assert config.inference.api_key_value == "k-from-file"
    assert config.inference.api_key_file.path == folder / "secrets/api_key"
    assert config.mqtt.password_value == "mqtt-pw"
    tls = config.mqtt.tls
    expected = tuple(folder / "tls" / name for name in ("ca.pem", "client.crt", "client.key"))
    assert (tls.ca_file, tls.cert_file, tls.key_file) == expected
    assert [c.parsed_source for c in config.cameras] == [
        Source("file", str(folder / "clips/a.mp4")),
        Source("file", "/srv/b c.mp4"),
        Source("usb", "/dev/video1", 1),
        Source("usb", "/dev/video2", 2),
    ]
    assert config.redacted()["mqtt"]["password_file"] == str(folder / "secrets/mqtt")


def test_systemd_credentials_directory_is_searched_first(tmp_path: Path) -> None:
    write(tmp_path, "k-beside-config\n", "api_key")
    write(tmp_path, "k-from-credentials\n", "creds/api_key")
    text = MINIMAL.replace("api_key: k-123456", "api_key_file: api_key")
    creds = str(tmp_path / "creds")
    with_creds = {"CREDENTIALS_DIRECTORY": creds}
    assert load(tmp_path, text, with_creds).inference.api_key_value == "k-from-credentials"
    assert load(tmp_path, text, {}).inference.api_key_value == "k-beside-config"
    absolute = MINIMAL.replace("api_key: k-123456", f"api_key_file: {tmp_path / 'api_key'}")
    assert load(tmp_path, absolute, with_creds).inference.api_key_value == "k-beside-config"


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    text = MINIMAL + (
        "    <<: &common {sample_fps: 5, max_side: 320}\n"
        "  - name: two\n"
        "    source: usb:0\n"
        "    <<: *common\n"
        "    max_side: 480\n"
    )
    cameras = load(tmp_path, text).cameras
    assert [(c.sample_fps, c.max_side) for c in cameras] == [(5, 320), (5, 480)]
    error = errors_of(tmp_path, "a: &x [*x]\n")
    assert "a[0] (line 1): recursive YAML alias" in str(error)


SECRET_CONFIG = f"""\
inference:
  api_key: {CANARY}-api
  model_ref: m
mqtt:
  username: u
  password: {CANARY}-mqtt
cameras:
  - name: cam
    source: rtsp://viewer:{CANARY}-cam@127.0.0.1:8554/cam
"""


@pytest.mark.parametrize(
    "breakage",
    [
        "    sample_fps: -1\n",  # an ordinary error next to the secrets
        "    bogus: 1\n",
        "    source: ftp://u:{CANARY}@127.0.0.1/x\n",  # (duplicate key) error on a secret-bearing field
    ],
)
def test_secrets_never_in_errors(tmp_path: Path, breakage: str) -> None:
    error = errors_of(tmp_path, SECRET_CONFIG + breakage.format(CANARY=CANARY))
    assert error.errors and CANARY not in str(error) and CANARY not in repr(error.errors)
    assert_nothing_chained(error)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (f"rtsp://viewer:{CANARY}-cam@", f"ftp://viewer:{CANARY}-cam@"),  # unknown scheme
        (f"rtsp://viewer:{CANARY}-cam@", f"rtsp://viewer:{CANARY}#cam@"),  # '#' in password: bad port
        (f"rtsp://viewer:{CANARY}-cam@", "rtsp://viewer:12/CANARY-7f3a9c@"),  # '/' in password
        (f"api_key: {CANARY}-api", "api_key: [" + CANARY + "]"),  # wrong type for a secret
        (f"password: {CANARY}-mqtt", f'password: "{CANARY}'),  # YAML error on the secret's line
        ("username: u", "username: ''"),  # a password without a username
    ],
)
def test_secrets_never_in_errors_of_secret_fields(tmp_path: Path, old: str, new: str) -> None:
    assert old in SECRET_CONFIG
    error = errors_of(tmp_path, SECRET_CONFIG.replace(old, new))
    assert error.errors and CANARY not in str(error)
    assert_nothing_chained(error)


def test_secrets_never_in_redacted_or_repr(tmp_path: Path) -> None:
    config = load(tmp_path, SECRET_CONFIG)
    redacted = config.redacted()
    dumped = json.dumps(redacted)
    assert CANARY not in dumped and CANARY not in repr(config)
    assert CANARY not in repr(config.cameras[0].parsed_source)
    assert redacted["inference"]["api_key"] == "***" and redacted["mqtt"]["password"] == "***"
    assert redacted["cameras"][0]["source"] == "rtsp://***@127.0.0.1:8554/cam"
    assert redacted["state_dir"] == "/var/lib/focoos-edge" and redacted["spool"]["max_bytes"] == 256 * 2**20
    assert set(config.secrets()) == {f"{CANARY}-api", f"{CANARY}-mqtt", f"{CANARY}-cam"}


def test_secrets_include_decoded_url_password(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL.replace("rtsp://127.0.0.1", "rtsp://ad.min%40x:p%40ss-w0rd@127.0.0.1"))
    assert config.secrets() == ["k-123456", "p%40ss-w0rd", "p@ss-w0rd"]


def test_models_are_frozen(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL)
    with pytest.raises(ValidationError, match="frozen"):
        config.cameras[0].sample_fps = 10  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        config.mqtt.port = 1  # type: ignore[misc]
    assert isinstance(config.cameras, tuple)  # no shared mutable lists either
    assert load(tmp_path, MINIMAL + "    labels: [person, car]\n").cameras[0].labels == ("person", "car")


def test_schema_is_valid_and_accepts_the_example() -> None:
    schema = config_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema" and schema["title"]
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    data = yaml.safe_load(EXAMPLE.read_text())
    assert list(validator.iter_errors(data)) == []
    assert list(validator.iter_errors({**data, "hots": 1}))  # additionalProperties: false
    assert list(validator.iter_errors({**data, "mqtt": {"topic_prefix": "site/+"}}))
    for name, model in [("Config", schema), *schema["$defs"].items()]:
        for key, prop in model["properties"].items():
            assert prop.get("description"), f"{name}.{key} has no description"


def test_example_validates_with_only_the_api_key_set() -> None:
    config = load_config(EXAMPLE, environ={"FOCOOS_API_KEY": "k-example"})
    assert config.inference.api_key_value == "k-example"
    assert [c.name for c in config.cameras] == ["front_door"]
    example_keys = set(yaml.safe_load(EXAMPLE.read_text())) | {"inference", "mqtt", "spool", "cameras"}
    assert example_keys == set(Config.model_fields)
    with pytest.raises(ConfigError, match="environment variable FOCOOS_API_KEY is not set"):
        load_config(EXAMPLE, environ={})


# --- parse_source -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rtsp://u:p@10.0.0.1:554/s", Source("rtsp", "rtsp://u:p@10.0.0.1:554/s")),
        ("  rtsps://cam.local/s  ", Source("rtsp", "rtsps://cam.local/s")),
        ("RTSP://cam/s", Source("rtsp", "RTSP://cam/s")),
        ("http://127.0.0.1:8080/video.mjpg", Source("http", "http://127.0.0.1:8080/video.mjpg")),
        ("https://cdn.example/live.m3u8", Source("http", "https://cdn.example/live.m3u8")),
        ("usb:0", Source("usb", "/dev/video0", 0)),
        ("USB:12", Source("usb", "/dev/video12", 12)),
        ("/dev/video3", Source("usb", "/dev/video3", 3)),
        ("file:///tmp/a%20b.mp4", Source("file", "/tmp/a b.mp4")),
        ("/tmp/clip.mp4", Source("file", "/tmp/clip.mp4")),
        ("clip.mp4", Source("file", "clip.mp4")),
        ("./odd:name.mp4", Source("file", "./odd:name.mp4")),
        ("/dev/videox", Source("file", "/dev/videox")),
    ],
)
def test_parse_source(text: str, expected: Source) -> None:
    assert parse_source(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://u:SECRET-PW@h/x", "unknown camera source scheme 'ftp' (expected rtsp://, rtsps://, http(s)://, "
         "usb:N, /dev/videoN or file:///path)"),
        ("rtmp://h/live", "unknown camera source scheme 'rtmp'"),
        ("file://clip.mp4", "file:// URLs take an absolute path"),
        ("file:clip.mp4", "a file URL must look like file:///absolute/path.mp4"),
        ("file:///", "a file URL must look like file:///absolute/path.mp4"),
        ("usb:", "usb:N"),
        ("usb:abc", "usb:N"),
        ("rtsp://", "rtsp:// URL has no host"),
        ("rtsp:/h/x", "a rtsp source must look like rtsp://host[:port]/path"),
        ("rtsp://u:SECRET-PW@h:99999/", "invalid host or port"),
        ("rtsp://u:SECRET#PW@h/", "invalid host or port"),
        ("rtsp://u:12/SECRET-PW@h/", "'@' after the host"),
        ("http://u:SECRET-PW@[::1/", "invalid host or port"),
        ("rtsp://h/a SECRET-PW", "whitespace"),
        ("", "camera source is empty"),
        ("   ", "camera source is empty"),
        (5, "camera source must be a string"),
    ],
)
def test_parse_source_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_source(text)
    assert message in str(caught.value)
    assert "SECRET" not in str(caught.value) and "PW" not in str(caught.value)
    assert_nothing_chained(caught.value)


def test_source_display_and_repr_hide_credentials() -> None:
    source = parse_source(f"rtsp://viewer:{CANARY}@127.0.0.1:8554/cam")
    assert source.display == "rtsp://***@127.0.0.1:8554/cam"
    assert CANARY not in repr(source) and "rtsp://***@127.0.0.1:8554/cam" in repr(source)
    assert parse_source("usb:0").display == "/dev/video0"
