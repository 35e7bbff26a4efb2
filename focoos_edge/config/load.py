"""Reading a config file: YAML with line numbers, ``${VAR}`` substitution, ``*_file`` secrets, and
pydantic errors translated into ``"<yaml.path> (line N): <message>"`` lines.

:mod:`focoos_edge.config.models` holds the models; this module knows nothing of them but the names of the
raw keys that hold secrets (to scrub them from error lines) and the validation context its field
validators read (``base_dir``, ``credentials_dir``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError, ValidationInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from focoos_edge.common import redact_text, url_secrets

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """The config cannot be used; ``errors`` holds one ``"<yaml.path> (line N): <message>"`` each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors)
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


# ---------------------------------------------------------------------------------------------
# Field validators. They read `base_dir` (the config file's folder) and `credentials_dir`
# (systemd's $CREDENTIALS_DIRECTORY) from the validation context that load_model passes.


def _context(info: ValidationInfo, key: str) -> Any:
    return (info.context or {}).get(key)


def resolve_path(path: Path, info: ValidationInfo) -> Path:
    """``path`` relative to the config file's folder (absolute paths unchanged)."""
    base = _context(info, "base_dir")
    return path if path.is_absolute() or base is None else Path(base) / path


def _credential_dirs(info: ValidationInfo) -> list[Path]:
    """Where a relative secret is looked up before the config's folder: systemd's
    $CREDENTIALS_DIRECTORY under the unit; elsewhere (``check-config`` run by hand) the folder the
    unit's LoadCredential= reads, ``credentials/`` beside the config (install.sh's layout)."""
    credentials, base = _context(info, "credentials_dir"), _context(info, "base_dir")
    if credentials:
        return [Path(credentials)]
    return [Path(base) / "credentials"] if base is not None else []


def _is_file(path: Path) -> bool:
    """``Path.is_file`` that says False, not PermissionError, inside a folder we may not enter (a
    non-root ``check-config`` and the root-only credentials folder)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _locate_file(path: Path, info: ValidationInfo) -> Path:
    if not path.is_absolute():
        for folder in _credential_dirs(info):
            if _is_file(folder / path):
                return folder / path
    return resolve_path(path, info)


def _unreadable_hint(path: Path, info: ValidationInfo) -> str:
    """Why a relative secret was not found in the install layout's credentials folder, and what to run."""
    folders = [] if path.is_absolute() or _context(info, "credentials_dir") else _credential_dirs(info)
    for folder in folders:
        if folder.is_dir() and not os.access(folder, os.R_OK | os.X_OK):
            return f"; {folder} is readable by root only, run check-config with sudo"
        if folder.is_dir():
            return f", nor {folder / path}; write it with: sudo install -m 0600 /dev/stdin {folder / path}"
    return ""


def existing_file(path: Path, info: ValidationInfo) -> Path:
    """``path`` located like a secret file; ``ValueError`` unless it is an existing file."""
    located = _locate_file(path, info)
    if not located.is_file():
        raise ValueError(f"file not found: {located}")
    return located


@dataclass(frozen=True)
class SecretFile:
    """A secret read from a file at load time: where it came from, and its stripped content."""

    path: Path
    value: str = field(repr=False)


def read_secret_file(value: Any, info: ValidationInfo) -> SecretFile:
    """Read a ``*_file`` secret (relative: ``$CREDENTIALS_DIRECTORY`` first, then the config's folder)."""
    if isinstance(value, SecretFile):
        return value
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise ValueError("expected a file path")
    path = _locate_file(Path(value), info)
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        # "(reason)", not ": reason": the redactor takes "...api_key: No" for a key: value pair.
        hint = _unreadable_hint(Path(value), info)
        raise ValueError(f"cannot read {path} ({exc.strerror or type(exc).__name__}){hint}") from None
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {path}: not UTF-8 text") from None
    if not secret:
        raise ValueError(f"{path} is empty")
    return SecretFile(path, secret)


def located_error(loc: tuple[str | int, ...], kind: str, message: str) -> PydanticCustomError:
    """An error for a field below the model that raises it; `_describe` appends ``ctx["loc"]``."""
    return PydanticCustomError(kind, message, {"loc": loc})


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


def load_model(path: str | os.PathLike[str], model: type[M], environ: Mapping[str, str] | None = None) -> M:
    """Read, substitute and validate a YAML file as ``model``; raise :class:`ConfigError` on any problem.

    ``environ`` (default ``os.environ``) feeds ``${VAR}`` substitution and ``CREDENTIALS_DIRECTORY``.
    Relative paths resolve against the file's folder.
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
        return model.model_validate(data, context=context)
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
