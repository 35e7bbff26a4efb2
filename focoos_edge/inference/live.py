"""What the uplink hands over and keeps per camera: the live queue (freshest frames first), each
camera's route and counters (and the snapshot of its figures), the `Delivery` of a result, and the
inference link's health."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from focoos_edge.capture import FrameJob
from focoos_edge.common import HourlyRate
from focoos_edge.inference.quota import AccountQuota

log = logging.getLogger(__name__)

OK = "ok"
STARTING = "starting"
MODEL_NOT_READY = "model_not_ready"


class LiveQueue:
    """Pending frames, at most `per_camera` per camera; the oldest frame of a camera is superseded."""

    def __init__(self, per_camera: int = 1):
        self.per_camera = per_camera
        self._jobs: deque[FrameJob] = deque()
        self._cond = threading.Condition()

    def put(self, job: FrameJob) -> FrameJob | None:
        """Add `job`; returns the job it superseded, if any (never blocks)."""
        with self._cond:
            dropped = None
            same = [j for j in self._jobs if j.camera == job.camera]
            if len(same) >= self.per_camera:
                dropped = same[0]
                self._jobs.remove(dropped)
            self._jobs.append(job)
            self._cond.notify()
            return dropped

    def get(self, timeout_s: float) -> FrameJob | None:
        """The oldest pending frame, or None after `timeout_s`."""
        with self._cond:
            if not self._jobs:
                self._cond.wait(timeout_s)
            return self._jobs.popleft() if self._jobs else None

    def __len__(self) -> int:
        with self._cond:
            return len(self._jobs)

    def count(self, camera: str) -> int:
        """Pending frames of one camera."""
        with self._cond:
            return sum(j.camera == camera for j in self._jobs)

    def counts(self) -> dict[str, int]:
        """Pending frames per camera, read at once (cameras with none are left out)."""
        with self._cond:
            return dict(Counter(j.camera for j in self._jobs))


@dataclass(frozen=True)
class CameraRoute:
    """Per-camera inference settings."""

    threshold: float


@dataclass(frozen=True)
class Delivery:
    """How a result's frame travelled: `replayed` when it waited in the spool (row `frame_row`).

    The result handler sets `stored` once the detections message is committed to the outbox (with
    the frame row deleted in that transaction): from then on the frame is accounted for there, so an
    error after it (counts, snapshot) must not dead-letter it as well. A replayed result is handled
    before the handler returns; if `stored` is still unset then, the uplink gives the frame back to
    the spool (only live results, which have no row, may be handled later by another thread)."""

    replayed: bool
    frame_row: int | None
    stored: threading.Event = field(default_factory=threading.Event, compare=False)


@dataclass(frozen=True)
class UplinkCameraSnapshot:
    """One camera's inference figures at one moment; `dead_lettered`, `errors` and `clamped` by reason,
    `round_trips_ms` the last 256 requests' (oldest first)."""

    uploaded: int = 0
    bytes_uploaded: int = 0
    results: int = 0
    spooled: int = 0
    inferences_last_hour: int = 0
    bytes_uploaded_last_hour: int = 0
    dead_lettered: Mapping[str, int] = field(default_factory=dict)
    errors: Mapping[str, int] = field(default_factory=dict)
    clamped: Mapping[str, int] = field(default_factory=dict)
    round_trips_ms: tuple[float, ...] = ()


@dataclass(frozen=True)
class UplinkSnapshot:
    """The inference stage's figures at one moment (`Uplink.snapshot`): the link's state, the live
    queue and the requests in flight per camera, each camera's counters, the account's quota."""

    state: str
    queued: Mapping[str, int]  # frames in the live queue, per camera
    in_flight: Mapping[str, int]  # frames being processed now, per camera
    cameras: Mapping[str, UplinkCameraSnapshot]
    quota: AccountQuota | None = None  # the last quota the account endpoint gave, if any
    restarts: Mapping[str, int] = field(default_factory=dict)  # the uplink's loops, by thread name

    @property
    def queue_depth(self) -> int:
        return sum(self.queued.values())

    @property
    def busy(self) -> int:
        return sum(self.in_flight.values())


@dataclass
class UplinkCounters:
    """Per-camera counters; `dead_lettered` and `errors` by reason. Written and read under the
    uplink's lock (several workers count for one camera)."""

    uploaded: int = 0
    bytes_uploaded: int = 0
    results: int = 0
    spooled: int = 0  # live frames that went to the spool (uplink busy, unreachable or paused)
    dead_lettered: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    clamped: Counter = field(default_factory=Counter)  # what parsing fixed or dropped in replies (ceilings)
    last_hour: HourlyRate = field(default_factory=HourlyRate)  # uploads and their bytes
    round_trips_ms: deque = field(default_factory=lambda: deque(maxlen=256))

    def snapshot(self) -> UplinkCameraSnapshot:
        """A copy of the figures (call it under the lock the counters are written under)."""
        hour = self.last_hour.last_hour()
        return UplinkCameraSnapshot(
            uploaded=self.uploaded, bytes_uploaded=self.bytes_uploaded, results=self.results,
            spooled=self.spooled, inferences_last_hour=hour[0], bytes_uploaded_last_hour=hour[1],
            dead_lettered=dict(self.dead_lettered), errors=dict(self.errors), clamped=dict(self.clamped),
            round_trips_ms=tuple(self.round_trips_ms))


class InferenceHealth:
    """The state of the inference link, reported through `on_change(state, detail)` on every change."""

    def __init__(self, on_change: Callable[[str, str | None], None]):
        self.state = STARTING
        self.detail: str | None = None
        self.paused = threading.Event()  # set on auth / unknown-model errors
        self._on_change = on_change
        self._lock = threading.Lock()
        self._down_since: float | None = None  # monotonic time it left `ok`, while not ok

    def reset(self) -> None:
        """Back to `starting`, uploads no longer paused."""
        self.paused.clear()
        self.set(STARTING)

    def set(self, state: str, detail: str | None = None, pause: bool = False) -> None:
        if pause:
            self.paused.set()
        elif state == OK:
            self.paused.clear()
        with self._lock:
            if state == self.state:
                return
            was_ok, self.state, self.detail = self.state == OK, state, detail
            down_since = self._down_since
            self._down_since = time.monotonic() if was_ok else (None if state == OK else down_since)
        if state == OK and down_since is not None:
            log.warning("inference: the API answers again after an outage of %.1f s",
                        time.monotonic() - down_since)
        self._on_change(state, detail)
