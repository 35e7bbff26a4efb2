"""Logging setup: one stderr handler, secrets redacted on every record."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable

from focoos_edge.redact import RedactingFilter

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup_logging(level: str = "info", secrets: Iterable[str] = ()) -> RedactingFilter:
    """Configure the root logger; returns the redacting filter so more secrets can be added."""
    redactor = RedactingFilter(secrets)
    handler = logging.StreamHandler(sys.stderr)
    # journald stamps every line itself; elsewhere a timestamp is needed.
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(redactor)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # urllib3 logs every connection at debug, paho every packet: keep them one level quieter.
    for noisy in ("urllib3", "focoos_edge.paho"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
    return redactor
