"""Inference uplink: `max_in_flight` workers send sampled frames to the Focoos API.

Freshness first: the live queue keeps at most `per_camera` pending frames per camera; when a newer
one arrives the older one moves to the on-disk spool, so a slow uplink never makes the daemon send
stale frames live, and loses none. A circuit breaker stops hammering an API that is down; an auth or
unknown-model error pauses uploads (one probe per interval) instead of retrying in a loop. Frames
that cannot be sent now wait in the spool and are replayed, oldest first, with spare capacity.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from focoos_edge.capture.encode import FrameJob
from focoos_edge.common.backoff import Backoff
from focoos_edge.delivery.spool import Spool, SpooledFrame, SpoolError
from focoos_edge.inference.client import (
    AuthError,
    FocoosClient,
    FocoosError,
    InferenceResult,
    MalformedResponseError,
    ModelInfo,
    ModelNotFoundError,
    RateLimitedError,
)
from focoos_edge.inference.quota import QUOTA_EXHAUSTED, QuotaWatch
from focoos_edge.service.stats import HourlyRate

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


class CircuitBreaker:
    """Closed -> open after `threshold` failures in a row; while open, one probe per backoff delay."""

    def __init__(self, threshold: int = 3, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        # Capped at 30 s: after a long outage the first probe comes soon, before the spool fills.
        self._backoff = backoff or Backoff(1.0, 30.0, jitter="full")
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self._lock = threading.Lock()

    def ready(self) -> bool:
        """Would `allow()` let a request through now? Unlike `allow()`, does not take the probe."""
        with self._lock:
            return self._failures < self.threshold or (not self._probing and self._clock() >= self._open_until)

    def allow(self) -> bool:
        """May a request be sent now? While open, lets exactly one probe through per delay."""
        with self._lock:
            if self._failures < self.threshold:
                return True
            if self._probing or self._clock() < self._open_until:
                return False
            self._probing = True
            return True

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._probing = False
            self._backoff.reset()

    def failure(self, retry_after_s: float | None = None) -> None:
        """Record a failure; a Retry-After opens the breaker at once for at least that long."""
        with self._lock:
            self._probing = False
            self._failures = self.threshold if retry_after_s else self._failures + 1
            if self._failures >= self.threshold:
                delay = max(retry_after_s or 0.0, self._backoff.next_delay())
                self._open_until = self._clock() + delay


@dataclass(frozen=True)
class CameraRoute:
    """Per-camera inference settings."""

    threshold: float


@dataclass(frozen=True)
class Delivery:
    """How a result's frame travelled: `replayed` when it waited in the spool (row `frame_row`)."""

    replayed: bool
    frame_row: int | None


@dataclass
class UplinkCounters:
    """Per-camera counters; `dead_lettered` and `errors` by reason."""

    uploaded: int = 0
    bytes_uploaded: int = 0
    results: int = 0
    spooled: int = 0  # live frames that went to the spool (uplink busy, unreachable or paused)
    dead_lettered: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    last_hour: HourlyRate = field(default_factory=HourlyRate)  # uploads and their bytes
    round_trips_ms: deque = field(default_factory=lambda: deque(maxlen=256))


class InferenceHealth:
    """The state of the inference link, reported through `on_change(state, detail)` on every change."""

    def __init__(self, on_change: Callable[[str, str | None], None]):
        self.state = STARTING
        self.detail: str | None = None
        self.paused = threading.Event()  # set on auth / unknown-model errors
        self._on_change = on_change
        self._lock = threading.Lock()

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
            self.state, self.detail = state, detail
        self._on_change(state, detail)


class Uplink:
    """Worker threads that turn frames into InferenceResults, handed to `on_result`.

    Live frames come first; workers with nothing live to do drain the spool's backlog (at most
    `max_in_flight - 1` of them, so one is always free for live frames). A frame that cannot be
    sent now (API unreachable, rate-limited, uploads paused) goes to the spool, never away.
    """

    def __init__(self, client: FocoosClient, model_ref: str, routes: dict[str, CameraRoute],
                 queue: LiveQueue, spool: Spool, on_result: Callable[[FrameJob, InferenceResult, Delivery], None],
                 health: InferenceHealth, stop: threading.Event, default_route: CameraRoute,
                 max_in_flight: int = 4, max_attempts: int = 3, probe_interval_s: float = 60.0,
                 on_model: Callable[[ModelInfo], None] | None = None, quota: QuotaWatch | None = None):
        self.client = client
        self.quota = quota
        self._on_model = on_model or (lambda info: None)
        self.default_route = default_route
        self.model_ref = model_ref
        self.routes = routes
        self.queue = queue
        self.spool = spool
        self.health = health
        self.counters: defaultdict[str, UplinkCounters] = defaultdict(UplinkCounters)
        self.in_flight: Counter = Counter()  # camera -> frames being processed now
        self.model_info: ModelInfo | None = None
        self.last_progress = time.monotonic()
        self._on_result = on_result
        self._stop = stop
        self._max_in_flight = max_in_flight
        self._max_attempts = max_attempts
        self.probe_interval_s = probe_interval_s
        self._breaker = CircuitBreaker()
        self._empty_generation = -1  # spool.frames_generation when take_frame() last found nothing
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def busy(self) -> int:
        with self._lock:
            return sum(self.in_flight.values())

    def in_flight_snapshot(self) -> dict[str, int]:
        """Frames being processed now, per camera."""
        with self._lock:
            return dict(self.in_flight)

    def alive(self) -> bool:
        """All threads running (before start and after stop: False)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def recheck_model(self) -> None:
        """Forget the model check and any pause (new credentials or model): the probe runs again."""
        self.model_info = None
        self._breaker.success()
        self.health.reset()

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._probe_loop, name="uplink-probe", daemon=True)]
        backlog_workers = max(1, self._max_in_flight - 1)
        self._threads += [threading.Thread(target=self._worker, args=(i < backlog_workers,),
                                           name=f"uplink-{i}", daemon=True)
                          for i in range(self._max_in_flight)]
        for t in self._threads:
            t.start()

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- model probe --------------------------------------------------------------
    def _probe_loop(self) -> None:
        """Fetch model info at start (retrying transient errors); re-probe while uploads are paused."""
        backoff = Backoff(1.0, self.probe_interval_s, jitter="equal")
        not_ready = Backoff(2.0, self.probe_interval_s, jitter="equal")  # a model still training
        while not self._stop.is_set():
            if self.quota is not None:
                self.quota.turn(self.health)
            if self.health.state == QUOTA_EXHAUSTED or (
                    self.model_info is not None and not self.health.paused.is_set()):
                self._stop.wait(1.0)
                continue
            try:
                self._check_model()
                backoff.reset()
                if self.health.state == MODEL_NOT_READY:
                    self._stop.wait(not_ready.next_delay())
                    continue
                not_ready.reset()
                if self.health.paused.is_set():  # still paused: not in a loop
                    self._stop.wait(self.probe_interval_s)
            except FocoosError as exc:
                self._note_error(None, exc)
                self._stop.wait(backoff.next_delay() if exc.retryable else self.probe_interval_s)

    def _check_model(self) -> None:
        info = self.client.model_info(self.model_ref)
        self.model_info = info
        log.info("model %s: task=%s status=%s classes=%d im_size=%s", info.ref, info.task, info.status,
                 len(info.classes), info.im_size)
        self._on_model(info)
        if info.ready:
            self.health.set(OK)
        else:
            # Frames wait in the spool (not sent, not dropped) until the model is ready.
            if self.health.state != MODEL_NOT_READY:
                log.warning("model %s is not ready for inference (status %s); frames are spooled and "
                            "the model re-checked with backoff", self.model_ref, info.status)
            self.health.set(MODEL_NOT_READY, f"status {info.status}", pause=True)

    # -- workers ------------------------------------------------------------------
    def _worker(self, may_drain_backlog: bool) -> None:
        while not self._stop.is_set():
            self.last_progress = time.monotonic()
            try:
                self._step(may_drain_backlog)
            except SpoolError as exc:  # a full or failing disk must not end the worker
                log.error("uplink: spool: %s", exc)
                self._stop.wait(1.0)

    def _step(self, may_drain_backlog: bool) -> None:
        """One turn of a worker: a live frame if there is one, else (maybe) one from the backlog.
        A live frame wakes the worker at once; with an empty spool it does not poll SQLite."""
        backlog_known_empty = self.spool.frames_generation == self._empty_generation
        wait_s = 0.1 if may_drain_backlog and not backlog_known_empty else 0.5
        job = self.queue.get(timeout_s=wait_s)
        if job is not None:
            self._run(job, None)
        elif may_drain_backlog and self._backlog_allowed() and not backlog_known_empty:
            generation = self.spool.frames_generation
            spooled = self.spool.take_frame()
            if spooled is None:
                self._empty_generation = generation
            else:
                self._run(spooled.job, spooled)

    def _backlog_allowed(self) -> bool:
        # A backlog frame may be the breaker's probe: with no live frame (camera down, or a restart
        # with a full spool) nothing else would ever find out that the API is back.
        return not self.health.paused.is_set() and self._breaker.ready()

    def _run(self, job: FrameJob, spooled: SpooledFrame | None) -> None:
        with self._lock:
            self.in_flight[job.camera] += 1
        try:
            self.process(job, spooled)
        finally:
            with self._lock:
                self.in_flight[job.camera] -= 1
            self.last_progress = time.monotonic()

    def process(self, job: FrameJob, spooled: SpooledFrame | None = None) -> None:
        """Send one frame, retrying transient errors a few times; every outcome is accounted for:
        a result, back to the spool, or dead-lettered (counted)."""
        counters = self.counters[job.camera]
        attempts = spooled.attempts if spooled else 0
        backoff = Backoff(0.25, 2.0, jitter="full")
        while True:
            if self._stop.is_set() or self.health.paused.is_set() or not self._breaker.allow():
                return self._defer(job, spooled, attempted=False)
            try:
                result = self._send(job, counters)
            except (AuthError, ModelNotFoundError) as exc:
                self._breaker.success()  # the API answered: it is reachable (a probe must not hang open)
                self._note_error(job.camera, exc)
                return self._defer(job, spooled, attempted=False)
            except FocoosError as exc:
                self._note_error(job.camera, exc)
                attempts += 1
                malformed = isinstance(exc, MalformedResponseError)
                if malformed or not exc.retryable:
                    self._breaker.success()  # an answer, if not a useful one: the link is up
                if (not exc.retryable and not malformed) or (malformed and attempts >= self._max_attempts):
                    # A reply that stays malformed, or a request the API rejects (400/422), would
                    # fail for ever: dead-letter the frame instead of looping.
                    return self._dead_letter(job, spooled, exc.reason)
                if not malformed:
                    self._breaker.failure(exc.retry_after_s if isinstance(exc, RateLimitedError) else None)
                if spooled or attempts >= self._max_attempts:
                    return self._defer(job, spooled, attempted=True)
                self._stop.wait(backoff.next_delay())
                continue
            self._breaker.success()
            self.health.set(OK)
            counters.results += 1
            delivery = Delivery(replayed=spooled is not None, frame_row=spooled.row_id if spooled else None)
            self._on_result(job, result, delivery)
            return None

    def _defer(self, job: FrameJob, spooled: SpooledFrame | None, attempted: bool) -> None:
        """Keep the frame for later: back into the spool (or stay there)."""
        counters = self.counters[job.camera]
        if spooled is not None:
            self.spool.release_frame(spooled.row_id, attempted)
            return
        try:
            self.spool.put_frame(job)
            counters.spooled += 1
        except SpoolError as exc:
            counters.dead_lettered["spool_error"] += 1
            log.error("camera %s: frame %s lost: %s", job.camera, job.frame_id, exc)

    def _dead_letter(self, job: FrameJob, spooled: SpooledFrame | None, reason: str) -> None:
        self.counters[job.camera].dead_lettered[reason] += 1
        log.warning("camera %s: frame %s dead-lettered (%s)", job.camera, job.frame_id, reason)
        if spooled is not None:
            self.spool.drop_frame(spooled.row_id, f"dead_letter_{reason}")

    def _send(self, job: FrameJob, counters: UplinkCounters) -> InferenceResult:
        counters.uploaded += 1
        counters.bytes_uploaded += len(job.jpeg)
        counters.last_hour.add(len(job.jpeg))
        route = self.routes.get(job.camera, self.default_route)  # spooled before a config change
        result = self.client.infer(self.model_ref, job.jpeg, route.threshold)
        counters.round_trips_ms.append(result.round_trip_s * 1000)
        return result

    def _note_error(self, camera: str | None, exc: FocoosError) -> None:
        if camera is not None:
            self.counters[camera].errors[exc.reason] += 1
        if self.quota is not None and self.quota.explains(exc):
            self.quota.report(self.health, exc)
            return
        pause = isinstance(exc, (AuthError, ModelNotFoundError))
        if self.health.state != exc.reason:
            log.error("inference: %s%s", exc, "; uploads paused, re-checking periodically" if pause else "")
        self.health.set(exc.reason, str(exc), pause=pause)
