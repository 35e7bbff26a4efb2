"""Per-camera object tracker and events (pure; the clock is each frame's capture time).

Matching is greedy IoU with the label as a gate: each box goes to the unmatched track of the same
label it overlaps most, if at least `min_iou`. Why not SORT/ByteTrack: at 1-2 sampled frames a
second a Kalman filter's motion model has little to predict from, those packages pull in scipy or
lap (no small aarch64 wheels for the latter) and filterpy is unmaintained; the greedy pass is a
few lines, O(tracks x boxes) on a handful of boxes, and measured in scripts/bench.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import count

from focoos_edge.common import Box, iou
from focoos_edge.config import EventsConfig

NS = 1_000_000_000
UPDATE_EVERY_NS = NS  # at most one `update` a second per event
STILL_IOU = 0.8  # a box overlapping its anchor this much has not moved


@dataclass(frozen=True)
class Seen:
    """One detection of a frame as the tracker sees it."""

    label: str
    score: float
    box: Box
    zones: tuple[str, ...] = ()


@dataclass
class Track:
    """One object followed from frame to frame; an event once matched in `min_frames` frames."""

    number: int
    label: str
    box: Box
    score: float
    zones: tuple[str, ...]
    first_ns: int
    last_ns: int
    frames: int = 1
    event_id: str | None = None
    entered: list[str] = field(default_factory=list)
    anchor: Box | None = None
    anchor_ns: int = 0
    stationary: bool = False
    dirty: bool = False  # something an `update` reports changed since the last message
    sent_ns: int = 0


@dataclass(frozen=True)
class EventMessage:
    """What the stage publishes: `track`'s state as an event of `kind` at `at_ns`."""

    kind: str  # new / update / end
    event_id: str
    label: str
    score: float
    box: Box
    zones: tuple[str, ...]
    entered_zones: tuple[str, ...]
    stationary: bool
    frames: int
    start_ns: int
    last_seen_ns: int
    end_ns: int | None


class Tracker:
    """Tracks of one camera (live, or replayed: each has its own). Not thread-safe."""

    def __init__(self, camera: str, settings: EventsConfig, id_tag: str = ""):
        self.camera = camera
        self.settings = settings
        self.tracks: list[Track] = []
        self._numbers = count(1)
        self._tag = id_tag  # keeps replayed event ids apart from live ones
        self.latest_ns = 0

    def step(self, seen: Sequence[Seen], t_ns: int) -> tuple[list[str | None], list[EventMessage]]:
        """Feed one frame: returns the event id of each of `seen` (None while not yet an event) and
        the messages due (ends of objects gone, news, updates)."""
        self.latest_ns = max(self.latest_ns, t_ns)
        matches = self._match(seen, t_ns)
        out = self.expire(t_ns, matched={t.number for t in matches.values()})
        ids: list[str | None] = []
        for i, det in enumerate(seen):
            track = matches.get(i)
            track = self._follow(track, det, t_ns) if track else self._start(det, t_ns)
            out += self._due(track, t_ns)
            ids.append(track.event_id)
        return ids, out

    def expire(self, t_ns: int, matched: set[int] | None = None) -> list[EventMessage]:
        """End the events of objects unseen for `end_after_s`, drop tentative tracks that missed a
        frame; `matched`: numbers of tracks seen in the frame at `t_ns` (None: no frame, a clock tick)."""
        keep, out = [], []
        end_ns = int(self.settings.end_after_s * NS)
        for track in self.tracks:
            seen_now = matched is not None and track.number in matched
            if track.event_id is None and not seen_now and matched is not None:
                continue  # not an event yet: it must be seen in consecutive frames
            if not seen_now and t_ns - track.last_ns >= end_ns:
                if track.event_id is not None:
                    out.append(self._message("end", track, t_ns))
                continue
            keep.append(track)
        self.tracks = keep
        return out

    def end_all(self, t_ns: int) -> list[EventMessage]:
        """End every open event (the camera stops or leaves the config, or the daemon stops)."""
        out = [self._message("end", t, t_ns) for t in self.tracks if t.event_id is not None]
        self.tracks = []
        return out

    def open_events(self) -> list[EventMessage]:
        """The current state of every open event (what is persisted)."""
        return [self._message("update", t, t.last_ns) for t in self.tracks if t.event_id is not None]

    def _match(self, seen: Sequence[Seen], t_ns: int) -> dict[int, Track]:
        # A track unseen for end_after_s is over even if its object is back (after an outage, say).
        live = [t for t in self.tracks if t_ns - t.last_ns < self.settings.end_after_s * NS]
        pairs = sorted(((iou(t.box, d.box), i, t.number) for i, d in enumerate(seen) for t in live
                        if t.label == d.label), reverse=True)
        by_number = {t.number: t for t in self.tracks}
        matches: dict[int, Track] = {}
        used: set[int] = set()
        for overlap, i, number in pairs:
            if overlap < self.settings.min_iou:
                break
            if i not in matches and number not in used:
                matches[i] = by_number[number]
                used.add(number)
        return matches

    def _start(self, det: Seen, t_ns: int) -> Track:
        track = Track(next(self._numbers), det.label, det.box, det.score, det.zones, t_ns, t_ns,
                      anchor=det.box, anchor_ns=t_ns)
        self.tracks.append(track)
        return track

    def _follow(self, track: Track, det: Seen, t_ns: int) -> Track:
        track.frames += 1
        track.last_ns = t_ns
        track.box = det.box
        if det.score > track.score:
            track.score, track.dirty = det.score, True
        if det.zones != track.zones:
            track.zones, track.dirty = det.zones, True
        if track.anchor is None or iou(track.anchor, det.box) < STILL_IOU:
            track.anchor, track.anchor_ns = det.box, t_ns
        still = t_ns - track.anchor_ns >= self.settings.stationary_after_s * NS
        if still != track.stationary:
            track.stationary, track.dirty = still, True
        return track

    def _due(self, track: Track, t_ns: int) -> list[EventMessage]:
        track.entered += [z for z in track.zones if z not in track.entered]
        if track.event_id is None:
            if track.frames < self.settings.min_frames:
                return []
            track.event_id = f"{self.camera}-{track.first_ns // 1_000_000}-{self._tag}{track.number}"
            track.dirty, track.sent_ns = False, t_ns
            return [self._message("new", track, t_ns)]
        if track.dirty and t_ns - track.sent_ns >= UPDATE_EVERY_NS:
            track.dirty, track.sent_ns = False, t_ns
            return [self._message("update", track, t_ns)]
        return []

    @staticmethod
    def _message(kind: str, t: Track, t_ns: int) -> EventMessage:
        assert t.event_id is not None
        return EventMessage(kind, t.event_id, t.label, t.score, t.box, t.zones, tuple(t.entered),
                            t.stationary, t.frames, t.first_ns, t.last_ns, t_ns if kind == "end" else None)
