"""Keep secrets (API keys, MQTT passwords, camera URL passwords) out of logs and messages.

- :func:`redact_url` masks the credentials of one URL (for display);
- :func:`redact_text` masks known secret values and anything that looks like a credential in
  free text (log lines, tracebacks);
- :class:`RedactingFilter` applies :func:`redact_text` to every record that reaches a logging
  handler, including records of third-party libraries (urllib3 logs URLs, OpenCV/FFmpeg errors
  may repeat the camera URL).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"

# Shorter literals would mask innocent words and digits everywhere in the logs.
MIN_SECRET_LEN = 4

SECRET_QUERY_KEYS = frozenset(
    {"password", "passwd", "pwd", "pass", "token", "key", "api_key", "apikey", "secret", "auth"}
)

# `scheme://userinfo@`: userinfo runs to the last '@' before the end of the authority, so user
# names or passwords that contain '@', '.', '%' or ':' are masked whole.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#]*@")
# Header values run to the end of the line (an Authorization value is "Bearer <token>").
_HEADER = re.compile(
    r"(?im)(?<![a-z0-9-])(x-api-key|(?:proxy-)?authorization)(['\"]?\s*[:=]\s*)"
    r"(\"[^\"]*\"|'[^']*'|[^\r\n'\",}]+)"
)
# `password=...`, `api_key: ...`, `'token': '...'`; `mqtt_password=` matches too ('_' is no letter).
_PAIR = re.compile(
    r"(?i)(?<![a-z0-9])(password|passwd|pwd|pass|token|api[_-]?key|apikey|secret|auth|key)"
    r"(['\"]?\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s&,;'\")}\]]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")


def _mask_value(match: re.Match[str]) -> str:
    value = match.group(3)
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group(1)}{match.group(2)}{quote}{MASK}{quote}"


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with secrets replaced by ``***``.

    Literal ``secrets`` (non-empty strings of at least :data:`MIN_SECRET_LEN` characters, longest
    first) go first; then patterns: URL user info, ``X-API-Key``/``Authorization`` header values,
    ``password=...``-style pairs and bearer tokens.
    """
    text = str(text)
    for secret in sorted({s for s in secrets if isinstance(s, str)}, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_LEN:
            text = text.replace(secret, MASK)
    text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
    text = _HEADER.sub(_mask_value, text)
    text = _PAIR.sub(_mask_value, text)
    return _BEARER.sub(rf"\1{MASK}", text)


def _redact_query(query: str) -> str:
    pairs = []
    for pair in query.split("&"):
        name, sep, _value = pair.partition("=")
        if sep and unquote(name).lower() in SECRET_QUERY_KEYS:
            pair = f"{name}={MASK}"
        pairs.append(pair)
    return "&".join(pairs)


def redact_url(url: str) -> str:
    """Return ``url`` with its whole user info replaced by ``***@`` and secret query values masked.

    Never raises: input that ``urllib.parse`` cannot split goes through :func:`redact_text`.
    """
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return redact_text(text)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = _redact_query(parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return text  # urlunsplit does not round-trip every input byte for byte
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def url_secrets(url: object) -> list[str]:
    """The password embedded in ``url``, as written and percent-decoded; ``[]`` if none or not a URL."""
    try:
        password = urlsplit(url).password if isinstance(url, str) else None
    except ValueError:
        return []
    return list(dict.fromkeys((password, unquote(password)))) if password else []


class SecretRegistry:
    """A thread-safe set of secret values, shared by every :class:`RedactingFilter` that uses it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Register one more secret; ``None``, blank and too-short values are ignored."""
        if not secret or len(secret) < MIN_SECRET_LEN:
            return
        with self._lock:
            if secret not in self._secrets:
                self._secrets = (*self._secrets, secret)

    def snapshot(self) -> tuple[str, ...]:
        """The secrets registered so far (an immutable copy: readers need no lock)."""
        return self._secrets

    def redact(self, text: str) -> str:
        """:func:`redact_text` with the registered secrets."""
        return redact_text(text, self._secrets)


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record's message, exception text and stack info.

    Attach it to handlers (``handler.addFilter(...)``), not to loggers: handler filters see the
    records of every logger, third-party ones included. The record is rewritten in place (its
    message rendered, ``args`` cleared, ``exc_text`` pre-formatted and redacted), so every
    handler behind this one, and the standard :class:`logging.Formatter`, print only the
    redacted text. It never drops a record.
    """

    def __init__(self, secrets: Iterable[str] | SecretRegistry = ()) -> None:
        super().__init__()
        self._formatter = logging.Formatter()  # the standard traceback rendering
        self.registry = secrets if isinstance(secrets, SecretRegistry) else SecretRegistry(secrets)

    def add(self, secret: str | None) -> None:
        """Register one more secret (thread-safe)."""
        self.registry.add(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; always keep it."""
        secrets = self.registry.snapshot()
        record.msg = redact_text(_render(record), secrets)
        record.args = None
        if record.exc_info and not record.exc_text:
            # The Formatter reuses exc_text when set, so the raw traceback is never rendered.
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info, secrets)
        return True


def _render(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception as exc:
        return f"{record.msg} {record.args!r} (message could not be formatted: {exc})"
