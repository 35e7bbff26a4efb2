"""Open events persisted in `state_dir/open_events.json`, so every `new` gets its `end` even after
a crash: the next start ends whatever the file still lists. The file is small (one entry per open
event) and replaced atomically (write a temporary file, fsync, rename)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from focoos_edge.common import write_json

log = logging.getLogger(__name__)

FILENAME = "open_events.json"


class OpenEventStore:
    """event_id -> the last payload published for it; thread-safe."""

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / FILENAME
        self._lock = threading.Lock()
        self._open: dict[str, dict] = {}

    def load(self) -> list[dict]:
        """The events a previous run left open (none when the file is missing or unreadable)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.error("events: cannot read %s (%s): open events of the last run cannot be ended", self.path, exc)
            return []
        events = data.get("open", []) if isinstance(data, dict) else []
        return [e for e in events if isinstance(e, dict) and isinstance(e.get("event_id"), str)]

    def record(self, payload: dict) -> None:
        """Remember an open event's latest payload, or forget it once `payload` is its end."""
        with self._lock:
            if payload["type"] == "end":
                if self._open.pop(payload["event_id"], None) is None:
                    return
            else:
                self._open[payload["event_id"]] = payload
            self._write()

    def forget_all(self) -> None:
        """Nothing open any more (after the previous run's events were ended)."""
        with self._lock:
            self._open.clear()
            self._write()

    def count(self) -> int:
        with self._lock:
            return len(self._open)

    def _write(self) -> None:
        try:
            write_json(self.path, {"v": 1, "open": list(self._open.values())})
        except OSError as exc:
            log.error("events: cannot write %s: %s", self.path, exc)
