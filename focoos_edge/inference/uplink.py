"""Inference uplink: `max_in_flight` workers send sampled frames to the Focoos API.

Freshness first: the live queue keeps at most `per_camera` pending frames per camera; when a newer
one arrives the older one moves to the on-disk spool, so a slow uplink never makes the daemon send
stale frames live, and loses none. A circuit breaker stops hammering an API that is down; an auth or
unknown-model error pauses uploads (one probe per interval) instead of retrying in a loop. Frames
that cannot be sent now wait in the spool and are replayed, oldest first, with spare capacity.

Spool leases are taken, given back and dropped here only (`take_frame`, `release_frame`,
`drop_frame`; tests/test_layout.py checks it). The one other way a lease ends is the hand-over
itself: the results stage stores the detections message with `done_frame=` the frame's row, and
the spool deletes that row in the outbox insert's transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from focoos_edge.capture import FrameJob
from focoos_edge.common import Backoff, Loop
from focoos_edge.delivery import Spool, SpooledFrame, SpoolError
from focoos_edge.inference.breaker import CircuitBreaker
from focoos_edge.inference.client import FocoosClient
from focoos_edge.inference.errors import (
    AuthError,
    FocoosError,
    MalformedResponseError,
    ModelNotFoundError,
    RateLimitedError,
)
from focoos_edge.inference.live import (
    MODEL_NOT_READY,
    OK,
    CameraRoute,
    Delivery,
    InferenceHealth,
    LiveQueue,
    UplinkCounters,
    UplinkSnapshot,
)
from focoos_edge.inference.parse import InferenceResult, ModelInfo
from focoos_edge.inference.quota import QUOTA_EXHAUSTED, QuotaWatch

log = logging.getLogger(__name__)


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
                 retry_after_max_s: float = 300.0,
                 on_model: Callable[[ModelInfo], None] | None = None, quota: QuotaWatch | None = None,
                 on_queued: Callable[[FrameJob], None] | None = None,
                 on_spilled: Callable[[FrameJob], None] | None = None):
        self.client = client
        self.quota = quota
        self._on_model = on_model or (lambda info: None)
        self._on_queued = on_queued or (lambda job: None)  # the results stage waits for it (ordering)
        self._on_spilled = on_spilled or (lambda job: None)  # ... and no longer does
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
        self.retry_after_max_s = retry_after_max_s
        self._cap_noted = False  # the Retry-After cap was logged in this rate-limited spell
        self._breaker = CircuitBreaker()
        self._empty_generation = -1  # spool.frames_generation when take_frame() last found nothing
        self.loops: list[Loop] = []
        self._probe_backoff = Backoff(1.0, probe_interval_s, jitter="equal")
        self._not_ready_backoff = Backoff(2.0, probe_interval_s, jitter="equal")
        self._lock = threading.Lock()

    @property
    def busy(self) -> int:
        with self._lock:
            return sum(self.in_flight.values())

    def snapshot(self) -> UplinkSnapshot:
        """The inference figures: each camera's counters and the frames in flight read together under
        the lock they are written under, then the live queue's (under its own)."""
        with self._lock:
            cameras = {camera: c.snapshot() for camera, c in self.counters.items()}
            in_flight = {camera: n for camera, n in self.in_flight.items() if n}
        return UplinkSnapshot(state=self.health.state, queued=self.queue.counts(), in_flight=in_flight,
                              cameras=cameras, quota=self.quota.last if self.quota else None,
                              restarts=self.restarts())

    @contextmanager
    def _counting(self, camera: str) -> Iterator[UplinkCounters]:
        """The camera's counters, to update under the lock (several workers count for one camera)."""
        with self._lock:
            yield self.counters[camera]

    def alive(self) -> bool:
        """All threads running (before start and after stop: False)."""
        return bool(self.loops) and all(loop.alive() for loop in self.loops)

    def restarts(self) -> dict[str, int]:
        """Loop restarts after an unexpected error, by thread name."""
        return {loop.name: loop.restarts for loop in self.loops}

    def recheck_model(self) -> None:
        """Forget the model check and any pause (new credentials or model): the probe runs again."""
        self.model_info = None
        self._breaker.success()
        self.health.reset()

    def start(self) -> None:
        self.loops = [Loop("uplink-probe", self.probe_step, self._stop)]
        backlog_workers = max(1, self._max_in_flight - 1)
        self.loops += [Loop(f"uplink-{i}", self._worker_step(i < backlog_workers), self._stop,
                            on_beat=self._beat)
                       for i in range(self._max_in_flight)]
        for loop in self.loops:
            loop.start()

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for loop in self.loops:
            loop.join(max(0.0, deadline - time.monotonic()))

    def _beat(self, now: float) -> None:
        self.last_progress = now

    # -- model probe --------------------------------------------------------------
    def probe_step(self) -> float:
        """Fetch model info at start (retrying transient errors); re-probe while uploads are paused;
        re-read the account's quota when it is due. Returns the seconds until the next check."""
        if self.quota is not None:
            self.quota.turn(self.health)
        if self.health.state == QUOTA_EXHAUSTED or (
                self.model_info is not None and not self.health.paused.is_set()):
            return 1.0
        try:
            self._check_model()
        except FocoosError as exc:
            self._note_error(None, exc)
            return self._probe_backoff.next_delay() if exc.retryable else self.probe_interval_s
        self._probe_backoff.reset()
        if self.health.state == MODEL_NOT_READY:  # a model still training: sooner than probe_interval_s
            return self._not_ready_backoff.next_delay()
        self._not_ready_backoff.reset()
        # Still paused: check again later, not in a loop.
        return self.probe_interval_s if self.health.paused.is_set() else 0.0

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
    def _worker_step(self, may_drain_backlog: bool) -> Callable[[], float]:
        def step() -> float:
            try:
                self._step(may_drain_backlog)
            except SpoolError as exc:  # a full or failing disk: expected, logged without a traceback
                log.error("uplink: spool: %s", exc)
                return 1.0
            return 0.0

        return step

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
        except SpoolError:
            raise  # the frame is still in the spool (or counted as spool_error): the step logs it
        except Exception:
            # A bug, not a bad reply: account for the frame, then let the loop log it and restart.
            self._dead_letter(job, spooled, "worker_error")
            raise
        finally:
            with self._lock:
                self.in_flight[job.camera] -= 1
            self.last_progress = time.monotonic()

    def process(self, job: FrameJob, spooled: SpooledFrame | None = None) -> None:
        """Send one frame, retrying transient errors a few times; every outcome is accounted for:
        a result, back to the spool, or dead-lettered (counted)."""
        attempts = spooled.attempts if spooled else 0
        backoff = Backoff(0.25, 2.0, jitter="full")
        while True:
            if self._stop.is_set() or self.health.paused.is_set() or not self._breaker.allow():
                return self._defer(job, spooled, attempted=False)
            try:
                result = self._send(job)
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
                    self._breaker.failure(self._retry_after(exc))
                if spooled or attempts >= self._max_attempts:
                    return self._defer(job, spooled, attempted=True)
                self._stop.wait(backoff.next_delay())
                continue
            self._breaker.success()
            self.health.set(OK)
            self._cap_noted = False
            with self._counting(job.camera) as counters:
                counters.results += 1
            self._note_clamped(job.camera, result.clamped)
            return self._deliver(job, result, spooled)

    def _retry_after(self, exc: FocoosError) -> float | None:
        """A 429's Retry-After, at most `retry_after_max_s` (a server must not stop uploads for days)."""
        wait = exc.retry_after_s if isinstance(exc, RateLimitedError) else None
        if wait is not None and wait > self.retry_after_max_s:
            # Once per rate-limited spell: a server repeating it on every probe must not flood the log.
            log.log(logging.DEBUG if self._cap_noted else logging.WARNING,
                    "inference: Retry-After of %.0f s capped at %.0f s (inference.retry_after_max_s)",
                    wait, self.retry_after_max_s)
            self._cap_noted = True
            return self.retry_after_max_s
        return wait

    def _deliver(self, job: FrameJob, result: InferenceResult, spooled: SpooledFrame | None) -> None:
        """The result-processing boundary: whatever handling one result raises (encoding, topics,
        drawing...), the frame is accounted for and this worker goes on with the next one."""
        delivery = Delivery(replayed=spooled is not None, frame_row=spooled.row_id if spooled else None)
        try:
            self._on_result(job, result, delivery)
        except Exception as exc:
            self._result_failed(job, spooled, delivery, exc)
            return
        if spooled is not None and not delivery.stored.is_set():
            # Handled, not stored (the outbox refused it): the frame waits in the spool for a later
            # attempt. A replayed result is handled before on_result returns, so `stored` is final.
            self.spool.release_frame(spooled.row_id, attempted=False)

    def _result_failed(self, job: FrameJob, spooled: SpooledFrame | None, delivery: Delivery,
                       exc: Exception) -> None:
        """`on_result` raised: after the message was stored only an extra failed (counted); before,
        the frame is dead-lettered."""
        why = f"{type(exc).__name__}: {str(exc)[:200]}"  # a hostile label could make it huge
        if delivery.stored.is_set():  # the message is in the outbox: only an extra failed
            with self._counting(job.camera) as counters:
                counters.errors["result_error"] += 1
            log.error("camera %s: frame %s: handling its result failed after it was stored (%s)",
                      job.camera, job.frame_id, why, exc_info=exc if log.isEnabledFor(logging.DEBUG) else None)
            return
        log.error("camera %s: frame %s: its result could not be handled (%s)", job.camera, job.frame_id,
                  why, exc_info=exc if log.isEnabledFor(logging.DEBUG) else None)
        self._dead_letter(job, spooled, "result_error")

    def _note_clamped(self, camera: str, clamped: dict[str, int]) -> None:
        for reason, n in clamped.items():
            with self._counting(camera) as counters:
                first = not counters.clamped[reason]
                counters.clamped[reason] += n
            if first:  # once per camera and reason: a bad server repeats itself
                log.warning("camera %s: a reply exceeded a ceiling (%s, %d in this reply): fixed or dropped "
                            "before publishing; counted in clamped_by_reason", camera, reason, n)

    def submit(self, job: FrameJob) -> None:
        """A camera's new frame: queued for the next free worker. The camera's older frame still
        waiting, if any, moves to the spool (sent later with spare capacity, as `replayed`)."""
        self._on_queued(job)
        older = self.queue.put(job)
        if older is not None:
            self._on_spilled(older)
            self._defer(older, None, attempted=False)

    def spill(self) -> None:
        """At shutdown, once the workers stopped: frames still in the live queue go to the spool."""
        while (job := self.queue.get(0)) is not None:
            self._defer(job, None, attempted=False)

    def _defer(self, job: FrameJob, spooled: SpooledFrame | None, attempted: bool) -> None:
        """Keep the frame for later: back into the spool (or stay there)."""
        if spooled is not None:
            self.spool.release_frame(spooled.row_id, attempted)
            return
        try:
            self.spool.put_frame(job)
        except SpoolError as exc:
            with self._counting(job.camera) as counters:
                counters.dead_lettered["spool_error"] += 1
            log.error("camera %s: frame %s lost: %s", job.camera, job.frame_id, exc)
            return
        with self._counting(job.camera) as counters:
            counters.spooled += 1

    def _dead_letter(self, job: FrameJob, spooled: SpooledFrame | None, reason: str) -> None:
        with self._counting(job.camera) as counters:
            counters.dead_lettered[reason] += 1
        log.warning("camera %s: frame %s dead-lettered (%s)", job.camera, job.frame_id, reason)
        if spooled is not None:
            self.spool.drop_frame(spooled.row_id, f"dead_letter_{reason}")

    def _send(self, job: FrameJob) -> InferenceResult:
        with self._counting(job.camera) as counters:
            counters.uploaded += 1
            counters.bytes_uploaded += len(job.jpeg)
            counters.last_hour.add(len(job.jpeg))
        route = self.routes.get(job.camera, self.default_route)  # spooled before a config change
        result = self.client.infer(self.model_ref, job.jpeg, route.threshold)
        with self._counting(job.camera) as counters:
            counters.round_trips_ms.append(result.round_trip_s * 1000)
        return result

    def _note_error(self, camera: str | None, exc: FocoosError) -> None:
        if camera is not None:
            with self._counting(camera) as counters:
                counters.errors[exc.reason] += 1
        if self.quota is not None and self.quota.explains(exc):
            self.quota.report(self.health, exc)
            return
        pause = isinstance(exc, (AuthError, ModelNotFoundError))
        if self.health.state != exc.reason:
            log.error("inference: %s%s", exc, "; uploads paused, re-checking periodically" if pause else "")
        self.health.set(exc.reason, str(exc), pause=pause)
