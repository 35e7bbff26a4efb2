"""`systemctl reload` that waits for the daemon's answer (systemd 252 has no Type=notify-reload).

ExecReload runs ``focoos-edge reload --pid $MAINPID``: it sends SIGHUP and waits until the daemon
writes its answer to ``$RUNTIME_DIRECTORY/reload`` (``"<count> applied|refused"``). A refused config
makes the command, and so the reload job, fail, while the daemon keeps its running config.

Both halves live here, in the standard library only: ``focoos-edge reload`` imports this and nothing
of the daemon (OpenCV, numpy, pydantic...), which took a second on the build machine and, in the
systemd VM under emulation, long enough for systemd to kill the reload job on a slow host.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

ANSWER_FILE = "reload"
EX_REFUSED = 1


def answer_path(environ: Mapping[str, str] | None = None) -> Path | None:
    """Where the answer goes: the unit's RuntimeDirectory, or None outside systemd."""
    runtime = (os.environ if environ is None else environ).get("RUNTIME_DIRECTORY", "")
    return Path(runtime.split(":")[0]) / ANSWER_FILE if runtime else None


class ReloadAnswers:
    """Daemon side: numbers each answered reload request and writes it atomically."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        self.path = answer_path(environ)
        self.count = 0

    def answer(self, applied: bool) -> None:
        self.count += 1
        if self.path is None:
            return
        partial = self.path.with_suffix(".partial")
        try:
            partial.write_text(f"{self.count} {'applied' if applied else 'refused'}\n")
            partial.replace(self.path)
        except OSError as exc:
            log.warning("reload: cannot write the answer to %s: %s", self.path, exc.strerror)


def _read(path: Path) -> tuple[int, str]:
    try:
        count, verdict = path.read_text().split()
        return int(count), verdict
    except (OSError, ValueError):
        return 0, ""


def request_reload(pid: int, timeout_s: float = 75.0, environ: Mapping[str, str] | None = None) -> int:
    """SIGHUP ``pid`` and wait for its answer: 0 applied, 1 refused or no answer (stderr says which)."""
    path = answer_path(environ)
    before, _ = _read(path) if path else (0, "")
    os.kill(pid, signal.SIGHUP)
    if path is None:
        print("focoos-edge: sent SIGHUP; no RUNTIME_DIRECTORY, so no answer to wait for", file=sys.stderr)
        return 0
    deadline, tick = time.monotonic() + timeout_s, threading.Event()
    while time.monotonic() < deadline:
        count, verdict = _read(path)
        if count > before:
            if verdict == "applied":
                print(f"focoos-edge: reload {count} applied")
                return 0
            print("focoos-edge: the new config was refused; the old one keeps running "
                  "(journalctl -u focoos-edge -p err shows why)", file=sys.stderr)
            return EX_REFUSED
        tick.wait(0.1)  # nothing else to wake on: the daemon answers through a file
    print(f"focoos-edge: no answer from pid {pid} within {timeout_s:.0f} s", file=sys.stderr)
    return EX_REFUSED
