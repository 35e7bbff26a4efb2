"""Per-camera state of the results stage: reorder buffer, live and replay trackers, occupancy."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from focoos_edge.config import CameraConfig, Config
from focoos_edge.results.reorder import ReorderBuffer
from focoos_edge.results.track import NS, EventMessage, Tracker
from focoos_edge.results.zones import Occupancy

# How long a result may wait for an earlier frame of its camera still in flight before it is
# tracked without it. Short: held results are in memory only (see docs/architecture.md).
REORDER_WAIT_S = 2.0


@dataclass
class CameraResults:
    """What the stage keeps for one camera; every use holds `lock` (one camera's results are
    processed one at a time, in capture order, by whichever uplink thread releases them)."""

    name: str
    reorder: ReorderBuffer = field(default_factory=lambda: ReorderBuffer(REORDER_WAIT_S))
    live: Tracker | None = None
    replay: Tracker | None = None
    replay_seen_s: float = 0.0  # monotonic time of the last replayed result
    occupancy: Occupancy | None = None
    best: dict[str, float] = field(default_factory=dict)  # open live event -> score of its snapshot
    lock: threading.RLock = field(default_factory=threading.RLock)

    def configure(self, config: Config, cam: CameraConfig, base: str) -> list[tuple[str, int]]:
        """Apply the camera's (new) settings; returns occupancy changes to publish (zones removed)."""
        settings = config.events_for(cam)
        changes: list[tuple[str, int]] = []
        if settings.enabled:
            self.live = self.live or Tracker(cam.name, settings)
            self.replay = self.replay or Tracker(cam.name, settings, id_tag="r")
            self.live.settings = self.replay.settings = settings
        zones_now = dict(cam.zones)
        if self.occupancy is None or self.occupancy.zones != zones_now:
            changes = self.occupancy.clear() if self.occupancy else []
            self.occupancy = Occupancy(base, cam.name, zones_now) if zones_now else None
        return changes

    def tracker(self, replayed: bool) -> Tracker | None:
        return self.replay if replayed else self.live

    def end_all(self, now_ns: int) -> list[tuple[bool, EventMessage]]:
        """End every open event, live and replayed: (replayed, message) pairs."""
        out: list[tuple[bool, EventMessage]] = []
        for replayed, tracker in ((False, self.live), (True, self.replay)):
            if tracker is not None:
                out += [(replayed, m) for m in tracker.end_all(now_ns)]
        return out

    def expire(self, now_ns: int, now_s: float) -> list[tuple[bool, EventMessage]]:
        """Clock tick with no frame: ends events whose camera sends nothing any more (camera down,
        inference paused). Live: against the wall clock, less the reorder wait (a frame still in
        flight may yet show the object); replayed: once no replayed result came for end_after_s."""
        out: list[tuple[bool, EventMessage]] = []
        if self.live is not None:
            out += [(False, m) for m in self.live.expire(now_ns - int(REORDER_WAIT_S * NS))]
        rep = self.replay
        if rep is not None and rep.tracks and now_s - self.replay_seen_s >= rep.settings.end_after_s:
            out += [(True, m) for m in rep.end_all(rep.latest_ns + int(rep.settings.end_after_s * NS))]
        return out
