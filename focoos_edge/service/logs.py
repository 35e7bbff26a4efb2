"""Logging setup: journald with structured fields when available, plain stderr otherwise;
secrets redacted and repeated lines rate-limited on every handler."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable

from focoos_edge.common import RedactingFilter

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Record attributes passed to journald as fields (`log.info(..., extra={"camera": name})`).
JOURNAL_FIELDS = ("camera", "frame_id")


class RateLimitFilter(logging.Filter):
    """Lets the same line (logger, level, rendered message) through once per `interval_s`; the next
    copy that passes says how many were suppressed. A camera that is down for days writes a line
    per interval at most, not one per retry; distinct lines are never hidden."""

    def __init__(self, interval_s: float = 60.0, clock=time.monotonic):
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._seen: dict[tuple, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        now = self._clock()
        with self._lock:
            last, suppressed = self._seen.get(key, (None, 0))
            if last is not None and now - last < self.interval_s:
                self._seen[key] = (last, suppressed + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > 4096:  # bounded memory: forget the oldest keys
                for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:2048]:
                    del self._seen[old]
        if suppressed:
            record.msg = f"{record.getMessage()} (repeated {suppressed} more times)"
            record.args = None
        return True


def _journal_handler() -> logging.Handler | None:
    """A journald handler when stderr goes to the journal and systemd-python is installed."""
    if not stderr_is_journal():
        return None
    try:
        # By name: the repo's systemd/ folder (the unit file) would shadow the module for type checkers.
        journal = importlib.import_module("systemd.journal")
    except ImportError:
        return None

    class SafeJournalHandler(logging.Handler):
        # systemd.journal.JournalHandler sends every record attribute, including raw exc_info and
        # args: send only the redacted message and known fields.
        def emit(self, record: logging.LogRecord) -> None:
            try:
                fields = {k.upper(): str(getattr(record, k)) for k in JOURNAL_FIELDS if hasattr(record, k)}
                journal.send(self.format(record), PRIORITY=str(_priority(record.levelno)),
                             LOGGER=record.name, THREAD_NAME=record.threadName,
                             SYSLOG_IDENTIFIER="focoos-edge", **fields)
            except Exception:
                self.handleError(record)

    return SafeJournalHandler()


def _priority(levelno: int) -> int:
    """syslog priority of a logging level."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def stderr_is_journal(environ=None, stderr=None) -> bool:
    """True when stderr is the journald stream systemd connected (JOURNAL_STREAM is its
    "device:inode"): a child whose stderr was redirected elsewhere inherits the variable, not the stream."""
    stream = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        info = os.fstat((sys.stderr if stderr is None else stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return stream == f"{info.st_dev}:{info.st_ino}"


class JournalPrefixFormatter(logging.Formatter):
    """Prefixes every line with the syslog priority ("<4>" for a warning), which journald strips and
    stores as PRIORITY, so `journalctl -p warning` works without python3-systemd. A traceback's
    later lines carry the same prefix: journald reads the prefix per line."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def setup_logging(level: str = "info", secrets: Iterable[str] = (), rate_limit_s: float = 60.0) -> RedactingFilter:
    """Configure the root logger; returns the redacting filter so more secrets can be added."""
    redactor = RedactingFilter(secrets)
    handler = _journal_handler()
    if handler is not None:
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        # journald stamps every line itself and reads its priority from a "<N>" prefix (sd-daemon(3));
        # elsewhere a timestamp is needed and a prefix would be noise.
        if stderr_is_journal():
            handler.setFormatter(JournalPrefixFormatter("%(levelname)s %(name)s: %(message)s"))
        else:
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RateLimitFilter(rate_limit_s))
    handler.addFilter(redactor)  # last: it sees the final message, suppression notes included
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # urllib3 logs every connection at debug, paho every packet: keep them one level quieter.
    for noisy in ("urllib3", "focoos_edge.paho"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    return redactor


def set_level(level: str) -> None:
    """Change the root level (config reload)."""
    logging.getLogger().setLevel(_LEVELS.get(level, logging.INFO))
