"""Inference uplink: `max_in_flight` workers send sampled frames to the Focoos API.

Freshness first: the live queue keeps at most `per_camera` pending frames per camera and drops the
oldest (counted) when a newer one arrives, so a slow uplink never makes the daemon send stale frames.
A circuit breaker stops hammering an API that is down; an auth or unknown-model error pauses uploads
(one probe per interval) instead of retrying in a loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from focoos_edge.backoff import Backoff
from focoos_edge.encode import FrameJob
from focoos_edge.focoos import (
    AuthError,
    FocoosClient,
    FocoosError,
    InferenceResult,
    MalformedResponseError,
    ModelNotFoundError,
    RateLimitedError,
)

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


class CircuitBreaker:
    """Closed -> open after `threshold` failures in a row; while open, one probe per backoff delay."""

    def __init__(self, threshold: int = 3, backoff: Backoff | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self._backoff = backoff or Backoff(1.0, 60.0, jitter="full")
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probing = False
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._failures >= self.threshold

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


@dataclass
class UplinkCounters:
    """Per-camera counters; `dropped` by reason, `errors` by error reason."""

    uploaded: int = 0
    bytes_uploaded: int = 0
    results: int = 0
    dropped: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    round_trips_ms: deque = field(default_factory=lambda: deque(maxlen=256))


class InferenceHealth:
    """The state of the inference link, reported through `on_change(state, detail)` on every change."""

    def __init__(self, on_change: Callable[[str, str | None], None]):
        self.state = STARTING
        self.detail: str | None = None
        self.paused = threading.Event()  # set on auth / unknown-model errors
        self._on_change = on_change
        self._lock = threading.Lock()

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
    """Worker threads that turn FrameJobs into InferenceResults, handed to `on_result`."""

    def __init__(self, client: FocoosClient, model_ref: str, routes: dict[str, CameraRoute],
                 queue: LiveQueue, on_result: Callable[[FrameJob, InferenceResult, float], None],
                 health: InferenceHealth, stop: threading.Event, max_in_flight: int = 4,
                 max_attempts: int = 3, probe_interval_s: float = 60.0):
        self.client = client
        self.model_ref = model_ref
        self.routes = routes
        self.queue = queue
        self.health = health
        self.counters = {name: UplinkCounters() for name in routes}
        self.model_info = None
        self.busy = 0
        self.last_progress = time.monotonic()
        self._on_result = on_result
        self._stop = stop
        self._max_in_flight = max_in_flight
        self._max_attempts = max_attempts
        self._probe_interval_s = probe_interval_s
        self._breaker = CircuitBreaker()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._probe_loop, name="uplink-probe", daemon=True)]
        self._threads += [threading.Thread(target=self._worker, name=f"uplink-{i}", daemon=True)
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
        backoff = Backoff(1.0, self._probe_interval_s, jitter="equal")
        while not self._stop.is_set():
            if self.model_info is not None and not self.health.paused.is_set():
                self._stop.wait(1.0)
                continue
            try:
                self._check_model()
                backoff.reset()
            except FocoosError as exc:
                self._note_error(None, exc)
                if exc.retryable:
                    self._stop.wait(backoff.next_delay())
                else:
                    self._stop.wait(self._probe_interval_s)

    def _check_model(self) -> None:
        info = self.client.model_info(self.model_ref)
        self.model_info = info
        log.info("model %s: task=%s status=%s classes=%d", info.ref, info.task, info.status,
                 len(info.classes))
        if info.ready:
            self.health.set(OK)
        else:
            log.warning("model %s is not ready for inference (status %s); trying anyway",
                        self.model_ref, info.status)
            self.health.set(MODEL_NOT_READY, f"status {info.status}")

    # -- workers ------------------------------------------------------------------
    def _worker(self) -> None:
        while not self._stop.is_set():
            job = self.queue.get(timeout_s=0.5)
            self.last_progress = time.monotonic()
            if job is None:
                continue
            with self._lock:
                self.busy += 1
            try:
                self.process(job)
            finally:
                with self._lock:
                    self.busy -= 1
                self.last_progress = time.monotonic()

    def process(self, job: FrameJob) -> None:
        """Send one frame, retrying transient errors a few times; every outcome is counted."""
        counters = self.counters[job.camera]
        if self.health.paused.is_set():
            counters.dropped["uploads_paused"] += 1
            return
        backoff = Backoff(0.25, 2.0, jitter="full")
        last_reason = "retries_exhausted"
        for _ in range(self._max_attempts):
            if self._stop.is_set():
                counters.dropped["shutdown"] += 1
                return
            if not self._breaker.allow():
                counters.dropped["inference_unreachable"] += 1
                return
            try:
                result = self._send(job, counters)
            except (AuthError, ModelNotFoundError) as exc:
                self._note_error(job.camera, exc)
                counters.dropped["uploads_paused"] += 1
                return
            except FocoosError as exc:
                self._note_error(job.camera, exc)
                malformed = isinstance(exc, MalformedResponseError)
                last_reason = "malformed_response" if malformed else "retries_exhausted"
                if not exc.retryable and not malformed:
                    counters.dropped["rejected"] += 1
                    return
                retry_after = exc.retry_after_s if isinstance(exc, RateLimitedError) else None
                if not malformed:
                    self._breaker.failure(retry_after)
                self._stop.wait(backoff.next_delay())
                continue
            self._breaker.success()
            self.health.set(OK)
            counters.results += 1
            self._on_result(job, result, time.monotonic())
            return
        # A reply that stays malformed is dead-lettered (counted), never retried for ever.
        counters.dropped[last_reason] += 1

    def _send(self, job: FrameJob, counters: UplinkCounters) -> InferenceResult:
        counters.uploaded += 1
        counters.bytes_uploaded += len(job.jpeg)
        result = self.client.infer(self.model_ref, job.jpeg, self.routes[job.camera].threshold)
        counters.round_trips_ms.append(result.round_trip_s * 1000)
        return result

    def _note_error(self, camera: str | None, exc: FocoosError) -> None:
        if camera is not None:
            self.counters[camera].errors[exc.reason] += 1
        pause = isinstance(exc, (AuthError, ModelNotFoundError))
        if self.health.state != exc.reason:
            log.error("inference: %s%s", exc, "; uploads paused, re-checking periodically" if pause else "")
        self.health.set(exc.reason, str(exc), pause=pause)
