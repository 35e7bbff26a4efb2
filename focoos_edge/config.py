"""Typed configuration: pydantic models, YAML loading, ``${ENV}`` substitution and ``*_file`` secrets.

:func:`load_config` turns a YAML file into an immutable :class:`Config`, or raises
:class:`ConfigError` whose lines name the YAML path and line of every problem
(``cameras[1].sample_fps (line 14): ...``). Secret values never appear in those lines, in
``repr()`` of the models, or in :meth:`Config.redacted`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ByteSize, ConfigDict, Field, PlainSerializer
from pydantic import PlainValidator, SecretStr, StringConstraints, ValidationError, ValidationInfo
from pydantic import WithJsonSchema, field_serializer, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from focoos_edge.redact import MASK, redact_text, redact_url, url_secrets
from focoos_edge.sources import Source, parse_source

MIB = 1024 * 1024


class ConfigError(Exception):
    """The config cannot be used; ``errors`` holds one ``"<yaml.path> (line N): <message>"`` each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors)
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


# ---------------------------------------------------------------------------------------------
# Field types. Validators read `base_dir` (the config file's folder) and `credentials_dir`
# (systemd's $CREDENTIALS_DIRECTORY) from the validation context that load_config passes.


def _context(info: ValidationInfo, key: str) -> Any:
    return (info.context or {}).get(key)


def _resolve(path: Path, info: ValidationInfo) -> Path:
    base = _context(info, "base_dir")
    return path if path.is_absolute() or base is None else Path(base) / path


def _locate_file(path: Path, info: ValidationInfo) -> Path:
    credentials = _context(info, "credentials_dir")
    if credentials and not path.is_absolute() and (Path(credentials) / path).is_file():
        return Path(credentials) / path
    return _resolve(path, info)


def _existing_file(path: Path, info: ValidationInfo) -> Path:
    located = _locate_file(path, info)
    if not located.is_file():
        raise ValueError(f"file not found: {located}")
    return located


@dataclass(frozen=True)
class SecretFile:
    """A secret read from a file at load time: where it came from, and its stripped content."""

    path: Path
    value: str = field(repr=False)


def _read_secret_file(value: Any, info: ValidationInfo) -> SecretFile:
    if isinstance(value, SecretFile):
        return value
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ValueError("expected a file path")
    path = _locate_file(Path(value), info)
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {path}: not UTF-8 text") from None
    if not secret:
        raise ValueError(f"{path} is empty")
    return SecretFile(path, secret)


def _at_least_1mib(size: ByteSize) -> ByteSize:
    # Not Field(ge=...): pydantic cannot express that in ByteSize's JSON schema.
    if size < MIB:
        raise ValueError(f"must be at least 1MiB ({MIB} bytes)")
    return size


def _not_blank(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be blank")
    return value


def _strip_secret(value: SecretStr) -> SecretStr:
    return SecretStr(_not_blank(value).get_secret_value().strip())


_MASKED = PlainSerializer(lambda _value: MASK, return_type=str, when_used="json")
ApiKey = Annotated[SecretStr, AfterValidator(_strip_secret), _MASKED]
Password = Annotated[SecretStr, AfterValidator(_not_blank), _MASKED]
SecretFilePath = Annotated[
    SecretFile,
    PlainValidator(_read_secret_file),
    PlainSerializer(lambda secret: str(secret.path), return_type=str),
    WithJsonSchema({"type": "string", "format": "path"}),
]
SpoolBytes = Annotated[ByteSize, AfterValidator(_at_least_1mib)]
ConfigPath = Annotated[Path, AfterValidator(_resolve)]
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
TOPIC_PREFIX_PATTERN = r"^[^/+#\x00]+(/[^/+#\x00]+)*$"


def _located(loc: tuple[str | int, ...], kind: str, message: str) -> PydanticCustomError:
    """An error for a field below the model that raises it; `_describe` appends ``ctx["loc"]``."""
    return PydanticCustomError(kind, message, {"loc": loc})


def _default_device_id() -> str:
    return re.sub(r"[^a-z0-9_.-]", "-", socket.gethostname().lower()) or "edge"


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Model(BaseModel):
    # Frozen: threads share one Config. Forbid: a misspelt key is an error, not a silent default.
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Models


class InferenceConfig(_Model):
    """The Focoos HUB endpoint, credentials and model."""

    api_url: str = Field(
        "https://api.focoos.ai/v0",
        description="Base URL of the Focoos API; plain http:// only to a loopback host.",
    )
    api_key: ApiKey | None = Field(None, description="Focoos API key (or use api_key_file).")
    api_key_file: SecretFilePath | None = Field(
        None, description="File holding the API key (relative: $CREDENTIALS_DIRECTORY first)."
    )
    model_ref: NonEmpty = Field(description="Reference of the Focoos model, e.g. fai-detr-l-obj365.")
    threshold: float = Field(0.5, ge=0, le=1, description="Minimum detection confidence.")
    timeout_s: float = Field(10, gt=0, description="HTTP timeout of one inference request.")
    max_in_flight: int = Field(4, ge=1, le=32, description="Concurrent inference requests.")
    recheck_interval_s: float = Field(
        60, ge=1, le=3600, description="While uploads are paused by a rejected key or an unknown model, "
                                       "the model is checked again this often.")

    @field_validator("api_url")
    @classmethod
    def _check_api_url(cls, url: str) -> str:
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError:
            raise ValueError("not a valid URL") from None
        if parts.scheme not in ("http", "https") or not host:
            raise ValueError("must be an http(s) URL with a host, e.g. https://api.focoos.ai/v0")
        if "@" in parts.netloc:
            raise ValueError("must not contain credentials (use api_key or api_key_file)")
        if parts.scheme == "http" and not _is_loopback(host):
            raise ValueError(
                f"plain http:// to {host} would send the API key in clear text: use https:// "
                "(http:// is only allowed to localhost/127.0.0.1/::1)"
            )
        return url.rstrip("/")

    @model_validator(mode="after")
    def _exactly_one_key(self) -> InferenceConfig:
        if self.api_key is not None and self.api_key_file is not None:
            raise _located(("api_key_file",), "key_conflict", "set api_key or api_key_file, not both")
        if self.api_key is None and self.api_key_file is None:
            raise _located(("api_key",), "key_missing", "an API key is required (api_key or api_key_file)")
        return self

    @property
    def api_key_value(self) -> str:
        """The API key, whichever key it came from."""
        if self.api_key_file is not None:
            return self.api_key_file.value
        return self.api_key.get_secret_value() if self.api_key is not None else ""


class TlsConfig(_Model):
    """MQTT over TLS; with no ca_file the system CA store is used."""

    ca_file: ExistingFile | None = Field(None, description="CA bundle that signs the broker certificate.")
    cert_file: ExistingFile | None = Field(None, description="Client certificate (with key_file).")
    key_file: ExistingFile | None = Field(None, description="Client private key (with cert_file).")

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise _located((missing,), "tls_pair", "cert_file and key_file go together")
        return self


class MqttConfig(_Model):
    """The MQTT broker that receives detections, states and stats."""

    host: NonEmpty = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (default 8883 with tls).")
    username: NonEmpty | None = Field(None, description="User name, if the broker wants one.")
    password: Password | None = Field(None, description="Password (or use password_file).")
    password_file: SecretFilePath | None = Field(None, description="File holding the password.")
    tls: TlsConfig | None = Field(None, description="TLS settings; null for plain TCP.")
    topic_prefix: str = Field(
        "focoos",
        json_schema_extra={"pattern": TOPIC_PREFIX_PATTERN},  # checked by _check_prefix, in words
        description="First topic level(s), '/'-separated; no '+', '#' or empty level.",
    )
    qos: int = Field(1, ge=0, le=2, description="QoS of detection messages.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive interval.")
    client_id: NonEmpty | None = Field(None, description="MQTT client id (default: derived from device_id).")

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, prefix: str) -> str:
        if not re.fullmatch(TOPIC_PREFIX_PATTERN, prefix):
            raise ValueError(
                "must be one or more topic levels separated by '/', without '+', '#', "
                "empty levels or a leading/trailing '/'"
            )
        return prefix

    @model_validator(mode="before")
    @classmethod
    def _tls_default_port(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("tls") is not None and "port" not in data:
            return {**data, "port": 8883}
        return data

    @model_validator(mode="after")
    def _credentials(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise _located(("password_file",), "password_conflict", "set password or password_file, not both")
        if self.password_value is not None and self.username is None:
            raise _located(("username",), "password_without_username", "a password needs a username")
        return self

    @property
    def password_value(self) -> str | None:
        """The password, whichever key it came from, or None."""
        if self.password_file is not None:
            return self.password_file.value
        return self.password.get_secret_value() if self.password is not None else None


class SpoolConfig(_Model):
    """On-disk queues used while inference or the broker is unreachable."""

    max_bytes: SpoolBytes = Field(
        ByteSize(256 * MIB), description="Disk budget, e.g. 256MiB or 1GB (minimum 1 MiB)."
    )
    max_age_s: float = Field(86400, gt=0, description="Spooled items older than this are dropped.")
    outbox_max_bytes: SpoolBytes | None = Field(
        None, description="Share of max_bytes reserved for MQTT messages waiting for the broker "
                          "(default: a quarter); frames are evicted before messages.")


class SnapshotConfig(_Model):
    """Annotated snapshots of a camera, published retained as JPEG on .../<camera>/snapshot."""

    labels: tuple[NonEmpty, ...] | None = Field(
        None, min_length=1, description="Labels that trigger a snapshot (default: any detection).")
    height: int | None = Field(None, ge=64, le=2160, description="Height of the snapshot (default: the uploaded frame's).")
    quality: int = Field(70, ge=1, le=100, description="JPEG quality of the snapshot.")
    min_interval_s: float = Field(2.0, ge=0, description="At most one snapshot per this many seconds.")


class HomeAssistantConfig(_Model):
    """Home Assistant MQTT discovery."""

    discovery_prefix: str = Field(
        "homeassistant", description="Home Assistant's discovery prefix.",
        json_schema_extra={"pattern": TOPIC_PREFIX_PATTERN})
    labels: tuple[NonEmpty, ...] = Field(
        (), description="Count sensors for cameras without a labels filter.")
    birth_jitter_s: float = Field(
        5.0, ge=0, le=60, description="Random delay before re-publishing discovery when Home Assistant "
                                       "restarts, so a fleet does not answer at once.")

    @field_validator("discovery_prefix")
    @classmethod
    def _check_discovery_prefix(cls, prefix: str) -> str:
        if not re.fullmatch(TOPIC_PREFIX_PATTERN, prefix):
            raise ValueError("must be topic levels separated by '/', without '+', '#' or empty levels")
        return prefix


class MetricsConfig(_Model):
    """An optional Prometheus text endpoint (GET /metrics)."""

    enabled: bool = Field(False, description="Serve /metrics.")
    host: NonEmpty = Field("127.0.0.1", description="Address to listen on (loopback by default).")
    port: int = Field(9808, ge=0, le=65535, description="Port to listen on.")


class CameraConfig(_Model):
    """One camera."""

    name: str = Field(pattern=r"^[a-z0-9_-]+$", description="Unique name; an MQTT topic level.")
    source: str = Field(
        repr=False, description="rtsp(s)://..., http(s)://..., usb:N, /dev/videoN, file:///path or a path."
    )
    sample_fps: float = Field(2, gt=0, le=30, description="Frames sent to inference per second.")
    max_side: int = Field(640, ge=64, le=4096, description="Longest side of the uploaded JPEG.")
    jpeg_quality: int = Field(80, ge=1, le=100, description="JPEG quality of uploads.")
    threshold: float | None = Field(None, ge=0, le=1, description="Overrides inference.threshold.")
    labels: tuple[NonEmpty, ...] | None = Field(None, min_length=1, description="Publish only these labels.")
    thresholds: dict[NonEmpty, Annotated[float, Field(ge=0, le=1)]] | None = Field(
        None, description="Per-label confidence thresholds, e.g. {person: 0.6, car: 0.4}; the request "
                          "asks for the lowest, each label is filtered on the box.")
    snapshot: SnapshotConfig | None = Field(None, description="Annotated snapshots (off by default).")
    counts: bool = Field(True, description="Publish retained per-label counts on .../<camera>/<label>.")
    loop: bool = Field(True, description="File sources restart at the end.")
    open_timeout_s: float = Field(10, gt=0, description="Timeout to open the source.")
    read_timeout_s: float = Field(10, gt=0, description="A source silent this long is reopened.")

    @field_validator("source")
    @classmethod
    def _parse_source(cls, value: str, info: ValidationInfo) -> str:
        source = parse_source(value)
        if source.kind == "file" and not os.path.isabs(source.uri):
            return str(_resolve(Path(source.uri), info))
        return value.strip()

    @field_serializer("source", when_used="json")
    def _redact_source(self, value: str) -> str:
        return redact_url(value)

    @property
    def parsed_source(self) -> Source:
        """The parsed :class:`~focoos_edge.sources.Source` (kind, uri, device)."""
        return parse_source(self.source)


class Config(_Model):
    """The whole config file."""

    device_id: str = Field(
        default_factory=_default_device_id,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Device name, an MQTT topic level (default: the host name).",
    )
    state_dir: ConfigPath = Field(Path("/var/lib/focoos-edge"), description="Where the spool lives.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    stats_interval_s: float = Field(30, gt=0, description="Period of the stats message.")
    inference: InferenceConfig = Field(description="Focoos inference endpoint and model.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT broker.")
    spool: SpoolConfig = Field(default_factory=SpoolConfig, description="On-disk spool.")
    homeassistant: HomeAssistantConfig | None = Field(
        None, description="Home Assistant MQTT discovery (off by default).")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus endpoint (off by default).")
    cameras: tuple[CameraConfig, ...] = Field(min_length=1, description="The cameras (at least one).")

    @field_validator("cameras")
    @classmethod
    def _unique_names(cls, cameras: tuple[CameraConfig, ...]) -> tuple[CameraConfig, ...]:
        first: dict[str, int] = {}
        for index, camera in enumerate(cameras):
            if camera.name in first:
                raise PydanticCustomError(
                    "duplicate_camera_name",
                    "duplicate camera name '{name}' (already used by cameras[{first}])",
                    {"name": camera.name, "first": first[camera.name], "loc": (index, "name")},
                )
            first[camera.name] = index
        return cameras

    def threshold_for(self, camera: CameraConfig) -> float:
        """The confidence threshold of ``camera``: its own, or the inference default."""
        return self.inference.threshold if camera.threshold is None else camera.threshold

    def request_threshold(self, camera: CameraConfig) -> float:
        """What the inference request asks for: the lowest threshold any label of ``camera`` uses."""
        return min([self.threshold_for(camera), *(camera.thresholds or {}).values()])

    def count_labels(self, camera: CameraConfig) -> tuple[str, ...]:
        """Labels with a count topic announced up front (others appear when first seen)."""
        return camera.labels or (self.homeassistant.labels if self.homeassistant else ())

    def redacted(self) -> dict[str, Any]:
        """The resolved config as JSON-able data, secrets as ``***``, URL credentials masked."""
        return self.model_dump(mode="json")

    def secrets(self) -> list[str]:
        """Every secret value (API key, MQTT password, camera URL passwords), for log redaction."""
        values = [self.inference.api_key_value, self.mqtt.password_value]
        for camera in self.cameras:
            values += url_secrets(camera.source)
        return [value for value in dict.fromkeys(values) if value]


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of the config file, before ``${VAR}`` substitution."""
    schema = Config.model_json_schema(mode="validation")
    schema.pop("title", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "focoos-edge configuration",
        **schema,
    }


# ---------------------------------------------------------------------------------------------
# Loading

Loc = tuple[Any, ...]
# `$$`, a well-formed `${NAME}` / `${NAME:-default}`, or a malformed `${` (reported as an error).
_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")
# Pydantic's wording for these names Python types ("tuple", "MqttConfig"): say it in YAML terms.
_YAML_MESSAGES = {
    "model_type": "expected a mapping",
    "dict_type": "expected a mapping",
    "tuple_type": "expected a list",
    "too_short": "must have at least {min_length} item(s)",
    "path_type": "expected a path",
    "missing": "required key is missing",
}


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate a YAML config file; raise :class:`ConfigError` on any problem.

    ``environ`` (default ``os.environ``) feeds ``${VAR}`` substitution and ``CREDENTIALS_DIRECTORY``.
    Relative paths resolve against the config file's folder.
    """
    environ = os.environ if environ is None else environ
    path = Path(path)
    root, data = _parse_yaml(_read_text(path))
    if not isinstance(data, dict):
        raise ConfigError([_line(root, (), "the top level must be a mapping of keys")])
    problems: list[tuple[Loc, str]] = []
    data = _substitute(data, environ, (), problems)
    if problems:
        raise ConfigError([_line(root, loc, message) for loc, message in problems])
    context = {
        "base_dir": Path(os.path.abspath(path)).parent,
        "credentials_dir": environ.get("CREDENTIALS_DIRECTORY"),
    }
    try:
        return Config.model_validate(data, context=context)
    except ValidationError as exc:
        # `from None`: the ValidationError's own text quotes input values, secrets included.
        secrets = _raw_secrets(data)
        raise ConfigError(
            [redact_text(_line(root, *_describe(err)), secrets) for err in _relevant(exc.errors())]
        ) from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: config file is not UTF-8 text"]) from None


def _parse_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """Compose (keeping line numbers), check keys, then construct safely."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        problems = _check_nodes(root, (), set()) if root is not None else []
        if problems:
            raise ConfigError([_line(root, loc, message) for loc, message in problems])
        return root, loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        # Built from the parts, not str(exc): that quotes the offending line, maybe a secret.
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        what = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError([f"YAML syntax ({where}): {what}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"YAML syntax: {type(exc).__name__}"]) from None
    finally:
        loader.dispose()


def _check_nodes(node: yaml.Node, loc: Loc, ancestors: set[int]) -> list[tuple[Loc, str]]:
    """Duplicate keys (PyYAML keeps the last silently) and alias cycles (they never end)."""
    if id(node) in ancestors:
        return [(loc, "recursive YAML alias")]
    if isinstance(node, yaml.MappingNode):
        children, problems, seen = [], [], set()
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name is not None and name != "<<" and name in seen:
                problems.append(((*loc, name), f"duplicate key {name!r}"))
            seen.add(name)
            children.append(((*loc, name), value))
    elif isinstance(node, yaml.SequenceNode):
        children, problems = [((*loc, i), item) for i, item in enumerate(node.value)], []
    else:
        return []
    for child_loc, child in children:
        problems += _check_nodes(child, child_loc, ancestors | {id(node)})
    return problems


def _substitute(data: Any, environ: Mapping[str, str], loc: Loc, problems: list[tuple[Loc, str]]) -> Any:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$$`` in every string value (not in keys)."""
    if isinstance(data, dict):
        return {key: _substitute(value, environ, (*loc, key), problems) for key, value in data.items()}
    if isinstance(data, list):
        return [_substitute(value, environ, (*loc, i), problems) for i, value in enumerate(data)]
    if not isinstance(data, str):
        return data

    def expand(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if match.group(0) == "$$":
            return "$"
        if name is None:
            problems.append((loc, "malformed ${...} reference (write $$ for a literal $)"))
            return ""
        value = environ.get(name)
        if value:  # like the shell's ${VAR:-default}: an empty value takes the default too
            return value
        if default is not None:
            return default
        if value is None:
            problems.append((loc, f"environment variable {name} is not set"))
        return ""

    return _REFERENCE.sub(expand, data)


def _describe(err: ErrorDetails) -> tuple[Loc, str]:
    """The YAML location and a message for one pydantic error, never quoting the input."""
    loc = (*err["loc"], *err.get("ctx", {}).get("loc", ()))
    if err["type"] == "extra_forbidden":
        return loc, f"unknown key {loc[-1]!r}"
    if err["type"] in _YAML_MESSAGES:
        return loc, _YAML_MESSAGES[err["type"]].format(**err.get("ctx", {}))
    return loc, err["msg"].removeprefix("Value error, ")


def _relevant(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """Drop "too short" for a tuple with failed items: pydantic counts only the items that passed."""
    failed = [err["loc"] for err in errors if err["type"] != "too_short"]
    return [
        err for err in errors
        if err["type"] != "too_short" or not any(loc[: len(err["loc"])] == err["loc"] for loc in failed)
    ]


def _line(root: yaml.Node | None, loc: Loc, message: str) -> str:
    """``"<yaml.path> (line N): message"``, N of the deepest node of ``loc`` that exists."""
    node, line = root, (root.start_mark.line + 1 if root is not None else 1)
    for part in loc:
        found = _child(node, part)
        if found is None:
            break
        node, line = found[1], found[0].start_mark.line + 1
    return f"{_format_loc(loc)} (line {line}): {message}"


def _child(node: yaml.Node | None, part: Any) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        # Last match: the key PyYAML kept (merged `<<` keys come first, own keys override them).
        for key, value in reversed(node.value):
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part], node.value[part]
    return None


def _format_loc(loc: Loc) -> str:
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return text.removeprefix(".") or "config"


def _raw_secrets(data: dict[str, Any]) -> list[str]:
    """Secret values of not-yet-validated data: error lines are scrubbed of them."""
    inference, mqtt, cameras = (data.get(key) for key in ("inference", "mqtt", "cameras"))
    found = [inference.get("api_key") if isinstance(inference, dict) else None]
    found.append(mqtt.get("password") if isinstance(mqtt, dict) else None)
    for camera in cameras if isinstance(cameras, list) else []:
        found += url_secrets(camera.get("source")) if isinstance(camera, dict) else []
    return [value for value in found if isinstance(value, str) and value]
