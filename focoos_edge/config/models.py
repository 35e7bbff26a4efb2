"""Typed configuration: the pydantic models of the config file and its JSON Schema.

:func:`load_config` turns a YAML file into an immutable :class:`Config`, or raises
:class:`ConfigError` whose lines name the YAML path and line of every problem
(``cameras[1].sample_fps (line 14): ...``). Secret values never appear in those lines, in
``repr()`` of the models, or in :meth:`Config.redacted`. Reading the file (YAML, ``${ENV}``
substitution, ``*_file`` secrets, error lines) is :mod:`focoos_edge.config.load`'s job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    ByteSize,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from focoos_edge.common import url_secrets
from focoos_edge.config.camera import CameraConfig
from focoos_edge.config.load import (
    load_model,
    located_error,
)
from focoos_edge.config.results import EventsConfig
from focoos_edge.config.types import (
    MIB,
    TOPIC_PREFIX_PATTERN,
    ApiKey,
    ConfigPath,
    ExistingFile,
    NonEmpty,
    Password,
    SecretFilePath,
    SpoolBytes,
    TopicPrefix,
    _default_device_id,
    _is_loopback,
    _Model,
)

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
    timeout_s: float = Field(10, gt=0, le=300, description="Deadline of one inference request, from connect "
                                                          "to the last byte of the reply.")
    retry_after_max_s: float = Field(
        300, ge=1, le=86400, description="Ceiling on a server's Retry-After (HTTP 429): a larger value, or a "
                                         "date far ahead, pauses uploads this long at most.")
    max_in_flight: int = Field(4, ge=1, le=32, description="Concurrent inference requests.")
    recheck_interval_s: float = Field(
        60, ge=1, le=3600, description="While uploads are paused by a rejected key or an unknown model, "
                                       "the model is checked again this often.")
    quota_check_interval_s: float = Field(
        600, ge=1, le=86400, description="The account's inference quota (GET user/) is read at start and "
                                         "then at most this often (default: every 10 minutes).")

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
            raise located_error(("api_key_file",), "key_conflict", "set api_key or api_key_file, not both")
        if self.api_key is None and self.api_key_file is None:
            raise located_error(("api_key",), "key_missing", "an API key is required (api_key or api_key_file)")
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
            raise located_error((missing,), "tls_pair", "cert_file and key_file go together")
        return self


class MqttConfig(_Model):
    """The MQTT broker that receives detections, states and stats."""

    host: NonEmpty = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (default 8883 with tls).")
    username: NonEmpty | None = Field(None, description="User name, if the broker wants one.")
    password: Password | None = Field(None, description="Password (or use password_file).")
    password_file: SecretFilePath | None = Field(None, description="File holding the password.")
    tls: TlsConfig | None = Field(None, description="TLS settings; null for plain TCP.")
    topic_prefix: TopicPrefix = Field(
        "focoos",
        json_schema_extra={"pattern": TOPIC_PREFIX_PATTERN},  # checked by topic_levels, in words
        description="First topic level(s), '/'-separated; no '+', '#' or empty level.",
    )
    qos: int = Field(1, ge=0, le=2, description="QoS of detection messages.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive interval.")
    client_id: NonEmpty | None = Field(None, description="MQTT client id (default: derived from device_id).")
    control: bool = Field(False, description="Accept .../<camera>/detect/set (ON/OFF) to pause a camera's inference.")


    @model_validator(mode="before")
    @classmethod
    def _tls_default_port(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("tls") is not None and "port" not in data:
            return {**data, "port": 8883}
        return data

    @model_validator(mode="after")
    def _credentials(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise located_error(("password_file",), "password_conflict", "set password or password_file, not both")
        if self.password_value is not None and self.username is None:
            raise located_error(("username",), "password_without_username", "a password needs a username")
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
    max_age_s: float = Field(86400, gt=0, le=31536000, description="Spooled items older than this are dropped.")
    outbox_max_bytes: SpoolBytes | None = Field(
        None, description="Share of max_bytes reserved for MQTT messages waiting for the broker "
                          "(default: a quarter); frames are evicted before messages.")


class HomeAssistantConfig(_Model):
    """Home Assistant MQTT discovery."""

    discovery_prefix: TopicPrefix = Field(
        "homeassistant", description="Home Assistant's discovery prefix.",
        json_schema_extra={"pattern": TOPIC_PREFIX_PATTERN})
    labels: tuple[NonEmpty, ...] = Field(
        (), description="Count sensors for cameras without a labels filter.")
    birth_jitter_s: float = Field(
        5.0, ge=0, le=60, description="Random delay before re-publishing discovery when Home Assistant "
                                       "restarts, so a fleet does not answer at once.")



class MetricsConfig(_Model):
    """An optional Prometheus text endpoint (GET /metrics)."""

    enabled: bool = Field(False, description="Serve /metrics.")
    host: NonEmpty = Field("127.0.0.1", description="Address to listen on (loopback by default).")
    port: int = Field(9808, ge=0, le=65535, description="Port to listen on.")


class Config(_Model):
    """The whole config file."""

    device_id: str = Field(
        default_factory=_default_device_id,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Device name, an MQTT topic level (default: the host name).",
    )
    state_dir: ConfigPath = Field(Path("/var/lib/focoos-edge"), description="Where the spool lives.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    stats_interval_s: float = Field(30, gt=0, le=86400, description="Period of the stats message.")
    inference: InferenceConfig = Field(description="Focoos inference endpoint and model.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT broker.")
    spool: SpoolConfig = Field(default_factory=SpoolConfig, description="On-disk spool.")
    homeassistant: HomeAssistantConfig | None = Field(
        None, description="Home Assistant MQTT discovery (off by default).")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus endpoint (off by default).")
    events: EventsConfig = Field(default_factory=EventsConfig,
                                 description="Events from the tracker (per camera: cameras[].events).")
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

    def events_for(self, camera: CameraConfig) -> EventsConfig:
        """The events settings of ``camera``: the top-level ones with its overrides."""
        return camera.events.over(self.events) if camera.events else self.events

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


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate a YAML config file; raise :class:`ConfigError` on any problem.

    ``environ`` (default ``os.environ``) feeds ``${VAR}`` substitution and ``CREDENTIALS_DIRECTORY``.
    Relative paths resolve against the config file's folder.
    """
    return load_model(path, Config, environ)
