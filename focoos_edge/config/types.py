"""Field types and validators shared by the config models (secrets, sizes, topic prefixes, normalized
coordinates), and the strict base model."""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    StringConstraints,
    WithJsonSchema,
)

from focoos_edge.common import MASK
from focoos_edge.config.load import (
    SecretFile,
    existing_file,
    read_secret_file,
    resolve_path,
)

MIB = 1024 * 1024


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
    PlainValidator(read_secret_file),
    PlainSerializer(lambda secret: str(secret.path), return_type=str),
    WithJsonSchema({"type": "string", "format": "path"}),
]
SpoolBytes = Annotated[ByteSize, AfterValidator(_at_least_1mib)]
ConfigPath = Annotated[Path, AfterValidator(resolve_path)]
ExistingFile = Annotated[Path, AfterValidator(existing_file)]
NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
def _max_side(value: Any) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and 64 <= value <= 4096:
        return value
    raise ValueError("must be 'auto' or a whole number of pixels from 64 to 4096")


MaxSide = Annotated[int | str, PlainValidator(_max_side), WithJsonSchema(
    {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 64, "maximum": 4096}]})]
Unit = Annotated[float, Field(ge=0, le=1)]
PrivacyPolygon = Annotated[tuple[tuple[Unit, Unit], ...], Field(min_length=3)]
TOPIC_PREFIX_PATTERN = r"^[^/+#\x00]+(/[^/+#\x00]+)*$"


def _default_device_id() -> str:
    return re.sub(r"[^a-z0-9_.-]", "-", socket.gethostname().lower()) or "edge"


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def topic_levels(prefix: str) -> str:
    """Validate an MQTT topic prefix (the message says what is wrong, in words)."""
    if not re.fullmatch(TOPIC_PREFIX_PATTERN, prefix):
        raise ValueError(
            "must be one or more topic levels separated by '/', without '+', '#', "
            "empty levels or a leading/trailing '/'"
        )
    return prefix


TopicPrefix = Annotated[str, AfterValidator(topic_levels)]


class _Model(BaseModel):
    # Frozen: threads share one Config. Forbid: a misspelt key is an error, not a silent default.
    model_config = ConfigDict(extra="forbid", frozen=True)


