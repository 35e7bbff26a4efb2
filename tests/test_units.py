"""Fast in-process tests of the daemon's building blocks: backoff, sampling, resize + JPEG, the live
queue, the circuit breaker, the uplink against real HTTP servers on 127.0.0.1, MQTT payloads,
sd_notify over a real unix socket and log redaction on the real stderr."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import httpfault
import media
import numpy as np
import pytest
from httpfault import FaultServer
from hypothesis import given
from hypothesis import strategies as st
from media import Marker
from procs import wait_until

from focoos_edge.capture.encode import FrameJob, JpegEncoder, fit_size, resize_to_max_side
from focoos_edge.capture.turbo import EncoderUnavailableError
from focoos_edge.capture.worker import Sampler
from focoos_edge.common.backoff import Backoff
from focoos_edge.delivery.messages import (
    Topics,
    detection_dict,
    detections_payload,
    dumps,
    iso_utc,
    iso_utc_ns,
    keeps,
)
from focoos_edge.delivery.spool import Spool
from focoos_edge.inference.breaker import CircuitBreaker
from focoos_edge.inference.client import FocoosClient
from focoos_edge.inference.live import CameraRoute, Delivery, InferenceHealth, LiveQueue
from focoos_edge.inference.parse import InferenceResult
from focoos_edge.inference.uplink import Uplink
from focoos_edge.service.logs import setup_logging
from focoos_edge.service.systemd import Notifier, watchdog_interval_s
from focoos_edge.tools.localserver import LocalServer

CANARY = "CANARY-7f3a9c"
LOCAL_KEY = "local-key-5678"
MODEL = "local-aruco"


# --------------------------------------------------------------------------------------------
# backoff.Backoff


def test_backoff_ceilings_grow_by_the_multiplier_and_cap() -> None:
    backoff = Backoff(0.5, 8.0, multiplier=2.0, jitter="none")
    delays = [backoff.next_delay() for _ in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.attempts == 7


@pytest.mark.parametrize("jitter, low_fraction", [("full", 0.0), ("equal", 0.5)])
def test_backoff_jitter_stays_within_its_range_and_spreads(jitter: str, low_fraction: float) -> None:
    backoff = Backoff(1.0, 16.0, jitter=jitter, rng=random.Random(1234))
    for attempt in range(7):
        draws = []
        for _ in range(300):  # many draws for one ceiling: rewind to the same attempt each time
            backoff.attempts = attempt
            ceiling = backoff.ceiling()
            draws.append(backoff.next_delay())
        assert ceiling == min(16.0, 2.0 ** attempt)
        assert all(low_fraction * ceiling <= d <= ceiling for d in draws), (jitter, ceiling)
        # Jitter must actually spread the retries over the range, not sit on one value.
        assert max(draws) - min(draws) > 0.6 * (1 - low_fraction) * ceiling


def test_backoff_is_reproducible_with_a_seeded_rng_and_reset_restarts() -> None:
    a = Backoff(1.0, 30.0, rng=random.Random(7))
    b = Backoff(1.0, 30.0, rng=random.Random(7))
    seq_a = [a.next_delay() for _ in range(8)]
    assert seq_a == [b.next_delay() for _ in range(8)]
    assert a.ceiling() == 30.0
    a.reset()
    assert a.attempts == 0 and a.ceiling() == 1.0
    assert a.next_delay() <= 1.0


def test_backoff_rejects_an_unknown_jitter() -> None:
    with pytest.raises(ValueError, match="jitter"):
        Backoff(1.0, 2.0, jitter="half")


# --------------------------------------------------------------------------------------------
# capture.Sampler


def _sampled(sampler: Sampler, stamps: list[float]) -> list[float]:
    return [t for t in stamps if sampler.due(t)]


def test_sampler_at_2fps_over_a_25fps_stream_samples_20_frames_evenly() -> None:
    start = 5000.0  # a monotonic clock that is far from zero
    stamps = [start + i / 25 for i in range(250)]  # 10 s of frames
    picked = _sampled(Sampler(2.0), stamps)
    assert 19 <= len(picked) <= 21
    gaps = np.diff(picked)
    # Each gap is the sample interval give or take one source frame (40 ms).
    assert gaps.min() >= 0.5 - 0.041 and gaps.max() <= 0.5 + 0.041, gaps
    assert picked[0] == start


def test_sampler_does_not_burst_after_a_stall() -> None:
    sampler = Sampler(2.0)
    before = [100.0 + i / 25 for i in range(50)]  # 2 s
    after = [107.0 + i / 25 for i in range(50)]  # the source stalled 5 s, then 2 s more
    picked_before = _sampled(sampler, before)
    picked_after = _sampled(sampler, after)
    assert 3 <= len(picked_before) <= 5
    # Catching up on the 10 missed ticks would sample every frame right after the stall.
    assert 3 <= len(picked_after) <= 5, picked_after
    assert picked_after[0] == 107.0
    assert np.diff(picked_after).min() >= 0.5 - 0.041


def test_sampler_faster_than_the_source_takes_every_frame() -> None:
    stamps = [i / 25 for i in range(1, 101)]
    assert len(_sampled(Sampler(30.0), stamps)) == 100


# --------------------------------------------------------------------------------------------
# encode: fit_size, resize_to_max_side, JpegEncoder


@pytest.mark.parametrize(
    "size, max_side, expected",
    [
        ((1920, 1080), 640, (640, 360)),
        ((1080, 1920), 640, (360, 640)),  # portrait
        ((640, 480), 640, (640, 480)),  # already fits: untouched
        ((320, 240), 640, (320, 240)),  # never upscaled
        ((3840, 2160), 1280, (1280, 720)),
    ],
)
def test_fit_size_examples(size: tuple[int, int], max_side: int, expected: tuple[int, int]) -> None:
    w, h, scale = fit_size(*size, max_side)
    assert (w, h) == expected
    assert scale == pytest.approx(expected[0] / size[0], rel=1e-3)


@given(st.integers(1, 8000), st.integers(1, 8000), st.integers(64, 4096))
def test_fit_size_never_upscales_hits_max_side_and_keeps_aspect(width: int, height: int, max_side: int) -> None:
    w, h, scale = fit_size(width, height, max_side)
    assert w <= width and h <= height and 0 < scale <= 1.0
    if max(width, height) <= max_side:
        assert (w, h, scale) == (width, height, 1.0)
        return
    assert max(w, h) == max_side
    # Each side is the original times the one scale, rounded (at least 1 px).
    assert abs(w - max(1, width * scale)) <= 0.5 + 1e-9
    assert abs(h - max(1, height * scale)) <= 0.5 + 1e-9


@pytest.mark.parametrize("shape, max_side, out_shape", [
    ((1080, 1920, 3), 640, (360, 640, 3)),
    ((1920, 1080, 3), 640, (640, 360, 3)),
    ((720, 1280, 3), 640, (360, 640, 3)),
])
def test_resize_to_max_side_scales_down_with_the_reported_scale(
    shape: tuple[int, int, int], max_side: int, out_shape: tuple[int, int, int]
) -> None:
    img = np.zeros(shape, np.uint8)
    img[:, : shape[1] // 2] = (10, 200, 30)  # left half coloured: the resize must keep the layout
    small, scale = resize_to_max_side(img, max_side)
    assert small.shape == out_shape
    assert scale == pytest.approx(out_shape[1] / shape[1])
    left, right = small[:, : out_shape[1] // 2 - 2], small[:, out_shape[1] // 2 + 2 :]
    assert np.abs(left.astype(int) - (10, 200, 30)).max() <= 1
    assert right.max() <= 1


def test_resize_to_max_side_returns_small_images_unchanged() -> None:
    img = np.full((200, 300, 3), 7, np.uint8)
    small, scale = resize_to_max_side(img, 640)
    assert small is img and scale == 1.0


@pytest.mark.parametrize("bgr", [(30, 90, 220), (220, 40, 10), (0, 255, 0)])
def test_jpeg_round_trip_keeps_size_and_colour_order(bgr: tuple[int, int, int]) -> None:
    encoder = JpegEncoder()
    img = np.empty((48, 64, 3), np.uint8)
    img[:] = bgr
    jpeg = encoder.encode(img, 95)
    assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
    # An independent decoder (OpenCV's libjpeg, BGR order) catches an RGB/BGR swap.
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (48, 64, 3)
    assert np.abs(decoded.reshape(-1, 3).mean(axis=0) - bgr).max() < 6, decoded[0, 0]


def test_jpeg_encoder_accepts_non_contiguous_views() -> None:
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, ::2] = (200, 100, 50)
    view = frame[:, ::2]  # every other column: a strided view, as a crop or slice would give
    decoded = cv2.imdecode(np.frombuffer(JpegEncoder().encode(view, 90), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (100, 100, 3)
    assert np.abs(decoded.reshape(-1, 3).mean(axis=0) - (200, 100, 50)).max() < 6


def test_jpeg_quality_changes_the_size() -> None:
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    encoder = JpegEncoder()
    assert len(encoder.encode(noise, 30)) < len(encoder.encode(noise, 95))


def test_jpeg_encoder_without_the_library_says_what_to_install() -> None:
    with pytest.raises(EncoderUnavailableError, match="apt-get install libturbojpeg0"):
        JpegEncoder(lib_path="/nonexistent/libturbojpeg.so.0")


def test_jpeg_encoder_honours_the_turbojpeg_variable_its_hint_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """BUG (focoos_edge/capture/encode.py, JpegEncoder.__init__): the install hint tells users to 'set
    TURBOJPEG to the library's path', but nothing reads that variable (PyTurboJPEG 1.8 does not
    either), so the advice has no effect."""
    monkeypatch.setenv("TURBOJPEG", "/nonexistent/libturbojpeg.so.0")
    with pytest.raises(EncoderUnavailableError, match="/nonexistent/libturbojpeg.so.0"):
        JpegEncoder()


# --------------------------------------------------------------------------------------------
# uplink.LiveQueue


def make_job(camera: str = "cam", n: int = 0, jpeg: bytes = b"\xff\xd8\xff\xd9", width: int = 64,
             height: int = 48, scale: float = 1.0) -> FrameJob:
    now_ns = time.time_ns()
    return FrameJob(camera=camera, frame_id=f"{camera}-{now_ns}-{n}", captured_at_ns=now_ns,
                    captured_mono=time.monotonic(), width=width, height=height, scale=scale, jpeg=jpeg)


def test_live_queue_supersedes_per_camera_and_returns_the_dropped_job() -> None:
    q = LiveQueue(per_camera=1)
    a1, a2, a3 = make_job("a", 1), make_job("a", 2), make_job("a", 3)
    assert q.put(a1) is None
    assert q.put(a2) is a1
    assert q.put(a3) is a2
    assert len(q) == 1
    assert q.get(0) is a3
    assert q.get(0) is None


def test_live_queue_keeps_per_camera_jobs_and_drops_the_oldest() -> None:
    q = LiveQueue(per_camera=2)
    a1, a2, a3 = make_job("a", 1), make_job("a", 2), make_job("a", 3)
    assert q.put(a1) is None and q.put(a2) is None
    assert q.put(a3) is a1
    assert [q.get(0), q.get(0)] == [a2, a3]


def test_live_queue_is_fifo_across_cameras() -> None:
    q = LiveQueue(per_camera=1)
    a1, b1, c1 = make_job("a", 1), make_job("b", 1), make_job("c", 1)
    for job in (a1, b1, c1):
        assert q.put(job) is None
    assert [q.get(0) for _ in range(3)] == [a1, b1, c1]
    # A superseding frame is the newest: it queues behind the other cameras' older frames.
    a2, b2, a3 = make_job("a", 2), make_job("b", 2), make_job("a", 3)
    q.put(a2), q.put(b2)
    assert q.put(a3) is a2
    assert [q.get(0), q.get(0)] == [b2, a3]


def test_live_queue_get_times_out_with_none() -> None:
    q = LiveQueue()
    started = time.monotonic()
    assert q.get(timeout_s=0.2) is None
    assert 0.18 <= time.monotonic() - started < 2.0


def test_live_queue_get_wakes_up_on_put_from_another_thread() -> None:
    q = LiveQueue()
    job = make_job()
    timer = threading.Timer(0.1, q.put, args=(job,))
    timer.start()
    started = time.monotonic()
    try:
        assert q.get(timeout_s=10.0) is job
        assert time.monotonic() - started < 5.0
    finally:
        timer.cancel()


# --------------------------------------------------------------------------------------------
# uplink.CircuitBreaker with a manual clock


class ManualClock:
    """Seconds that move only when the test says so."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.now_s = start_s

    def time(self) -> float:
        return self.now_s


def make_breaker(clock: ManualClock, threshold: int = 3) -> CircuitBreaker:
    # No jitter: delays 2, 4, 8, 8... so the test knows when the breaker half-opens.
    return CircuitBreaker(threshold=threshold, backoff=Backoff(2.0, 8.0, jitter="none"), clock=clock.time)


def test_breaker_opens_after_threshold_failures_in_a_row() -> None:
    clock = ManualClock()
    breaker = make_breaker(clock)
    breaker.failure()
    breaker.failure()
    assert breaker.ready() and breaker.allow()
    breaker.failure()
    assert not breaker.ready()
    assert not breaker.allow()
    clock.now_s += 1.99
    assert not breaker.ready() and not breaker.allow()


def test_breaker_lets_one_probe_through_per_delay_while_open() -> None:
    clock = ManualClock()
    breaker = make_breaker(clock)
    for _ in range(3):
        breaker.failure()
    clock.now_s += 2.0
    assert breaker.ready() and breaker.ready(), "ready() only looks: it does not take the probe"
    assert breaker.allow(), "one probe after the first delay"
    assert not breaker.ready()
    assert not breaker.allow(), "only one probe at a time"
    assert not breaker.allow()
    breaker.failure()  # the probe failed: wait the next, longer delay
    clock.now_s += 3.99
    assert not breaker.allow()
    clock.now_s += 0.01
    assert breaker.allow()
    assert not breaker.allow()


def test_breaker_closes_on_success_and_counts_afresh() -> None:
    clock = ManualClock()
    breaker = make_breaker(clock)
    for _ in range(3):
        breaker.failure()
    clock.now_s += 2.0
    assert breaker.allow()
    breaker.success()
    assert breaker.ready()
    assert all(breaker.allow() for _ in range(5)), "closed: no probe limit"
    breaker.failure()
    breaker.failure()
    assert breaker.allow(), "failures are counted in a row, from zero again"
    breaker.failure()
    assert not breaker.allow()
    clock.now_s += 1.99
    assert not breaker.allow(), "success reset the backoff: the first delay is 2 s again"
    clock.now_s += 0.01
    assert breaker.allow()


def test_breaker_retry_after_opens_at_once_for_at_least_that_long() -> None:
    clock = ManualClock()
    breaker = make_breaker(clock)
    breaker.failure(retry_after_s=30.0)
    assert not breaker.ready(), "one 429 with Retry-After is enough"
    assert not breaker.allow()
    clock.now_s += 29.9
    assert not breaker.ready() and not breaker.allow()
    clock.now_s += 0.1
    assert breaker.ready() and breaker.allow()


def test_breaker_retry_after_shorter_than_the_backoff_waits_the_backoff() -> None:
    clock = ManualClock()
    breaker = make_breaker(clock)
    breaker.failure(retry_after_s=0.5)
    clock.now_s += 0.5
    assert not breaker.allow(), "the breaker's own delay (2 s) still applies"
    clock.now_s += 1.5
    assert breaker.allow()


# --------------------------------------------------------------------------------------------
# uplink.Uplink.process against real HTTP servers and a real on-disk spool


class Recorder:
    """Collects what the uplink hands out: results and inference-state changes."""

    def __init__(self) -> None:
        self.results: list[tuple[FrameJob, InferenceResult, Delivery]] = []
        self.states: list[tuple[str, str | None]] = []

    def on_result(self, job: FrameJob, result: InferenceResult, delivery: Delivery) -> None:
        self.results.append((job, result, delivery))

    def on_state(self, state: str, detail: str | None) -> None:
        self.states.append((state, detail))


@pytest.fixture(scope="module")
def marker_jpeg() -> tuple[bytes, float, tuple[Marker, ...]]:
    """A 1280x720 frame with two markers, downscaled to 640x360 and JPEG-encoded like capture does."""
    markers = (Marker(id=5, x=100, y=100, size=240), Marker(id=9, x=800, y=300, size=200))
    frame = media.draw_marker_frame(1280, 720, markers)
    small, scale = resize_to_max_side(frame, 640)
    return JpegEncoder().encode(small, 85), scale, markers


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    server = LocalServer(port=0, api_key=LOCAL_KEY)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool(tmp_path / "spool.db", max_bytes=16 * 1024 * 1024, max_age_s=3600)
    try:
        yield spool
    finally:
        spool.close()


class Rig:
    """An Uplink wired to a real FocoosClient and spool, with its health and recorder."""

    def __init__(self, url: str, key: str, spool: Spool, *, model_ref: str = MODEL,
                 stop: threading.Event | None = None, **kwargs: object) -> None:
        self.rec = Recorder()
        self.spool = spool
        self.stop = stop or threading.Event()
        self.client = FocoosClient(url, key, timeout_s=5.0)
        self.health = InferenceHealth(self.rec.on_state)
        route = CameraRoute(threshold=0.5)
        self.uplink = Uplink(self.client, model_ref, {"cam": route}, LiveQueue(), spool, self.rec.on_result,
                             self.health, self.stop, default_route=route, **kwargs)
        self.counters = self.uplink.counters["cam"]

    def spooled_frames(self) -> int:
        return self.spool.pending().get("cam", {}).get("frames", 0)

    def close(self) -> None:
        self.stop.set()
        self.uplink.join(timeout_s=5.0)
        self.client.close()


@pytest.fixture
def rig(spool: Spool) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(url: str, key: str = LOCAL_KEY, **kwargs: object) -> Rig:
        made.append(Rig(url, key, spool, **kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_uplink_good_frame_gives_a_result(local_server: LocalServer, rig, marker_jpeg) -> None:
    jpeg, scale, markers = marker_jpeg
    r = rig(local_server.url)
    job = make_job(jpeg=jpeg, width=1280, height=720, scale=scale)
    r.uplink.process(job)
    assert len(r.rec.results) == 1
    got_job, result, delivery = r.rec.results[0]
    assert got_job is job
    assert delivery == Delivery(replayed=False, frame_row=None)
    boxes = {d.label: d.bbox for d in result.detections}
    assert set(boxes) == {"aruco_5", "aruco_9"}
    for marker in markers:  # boxes come back in uploaded (half-size) pixels
        expected = [v * scale for v in marker.box]
        assert boxes[f"aruco_{marker.id}"] == pytest.approx(expected, abs=3), marker
    c = r.counters
    assert (c.uploaded, c.results, c.bytes_uploaded, c.spooled) == (1, 1, len(jpeg), 0)
    assert len(c.round_trips_ms) == 1
    assert not c.dead_lettered and not c.errors
    assert r.health.state == "ok" and not r.health.paused.is_set()
    assert r.rec.states == [("ok", None)]


def test_uplink_wrong_key_pauses_uploads_and_keeps_the_frames(local_server: LocalServer, rig, marker_jpeg) -> None:
    r = rig(local_server.url, key=f"{CANARY}-wrong")
    r.uplink.process(make_job(jpeg=marker_jpeg[0]))
    assert r.health.state == "auth_failed" and r.health.paused.is_set()
    assert local_server.stats.auth_failures == 1
    assert r.counters.errors == {"auth_failed": 1}
    # Paused: the next frame goes to the spool at once, without a request.
    r.uplink.process(make_job(n=2, jpeg=marker_jpeg[0]))
    assert local_server.stats.requests == 1
    assert r.counters.spooled == 2 and r.spooled_frames() == 2, "nothing is lost while paused"
    assert not r.counters.dead_lettered and r.rec.results == []
    assert [s for s, _ in r.rec.states] == ["auth_failed"]
    assert CANARY not in repr(r.rec.states), "the rejected key must not be in the published detail"


def test_uplink_unknown_model_pauses_uploads(local_server: LocalServer, rig, marker_jpeg) -> None:
    r = rig(local_server.url, model_ref="no-such-model")
    r.uplink.process(make_job(jpeg=marker_jpeg[0]))
    assert r.health.state == "model_not_found" and r.health.paused.is_set()
    assert r.counters.errors == {"model_not_found": 1}
    assert r.counters.spooled == 1 and r.spooled_frames() == 1
    assert "no-such-model" in (r.health.detail or "")


def test_uplink_during_shutdown_spools_the_frame_without_a_request(local_server: LocalServer, rig,
                                                                   marker_jpeg) -> None:
    stop = threading.Event()
    stop.set()
    r = rig(local_server.url, stop=stop)
    r.uplink.process(make_job(jpeg=marker_jpeg[0]))
    assert local_server.stats.requests == 0
    assert r.counters.spooled == 1 and r.spooled_frames() == 1


def test_uplink_replays_a_spooled_frame_with_its_row(local_server: LocalServer, rig, spool: Spool,
                                                     marker_jpeg) -> None:
    job = make_job(jpeg=marker_jpeg[0], width=1280, height=720, scale=marker_jpeg[1])
    spool.put_frame(job)
    taken = spool.take_frame()
    assert taken is not None
    r = rig(local_server.url)
    r.uplink.process(taken.job, taken)
    assert len(r.rec.results) == 1
    replayed_job, _, delivery = r.rec.results[0]
    assert delivery == Delivery(replayed=True, frame_row=taken.row_id)
    assert replayed_job.frame_id == job.frame_id, "frame_id is stable across the spool"


OK_REPLY = {"detections": [{"bbox": [1, 2, 30, 40], "conf": 0.9, "cls_id": 0, "label": "person"}],
            "latency": {"inference": 0.01}}


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        srv.default = httpfault.json(200, OK_REPLY)
        yield srv


def test_uplink_503s_retry_then_open_the_breaker(fault_server: FaultServer, rig, marker_jpeg) -> None:
    fault_server.default = httpfault.json(503, {"detail": "overloaded"})
    r = rig(fault_server.url)
    r.uplink.process(make_job(jpeg=marker_jpeg[0]))
    assert len(fault_server.requests) == 3, "max_attempts tries, then the frame waits in the spool"
    assert r.counters.errors == {"server_error": 3}
    assert r.counters.spooled == 1
    assert r.health.state == "server_error" and not r.health.paused.is_set()
    # The breaker is open now: frames go to the spool without a request (one probe per delay).
    blocked = 0
    for n in range(1, 8):
        before = len(fault_server.requests)
        r.uplink.process(make_job(n=n, jpeg=marker_jpeg[0]))
        blocked += len(fault_server.requests) == before
        if blocked:
            break
    assert blocked, f"every frame reached the API: {len(fault_server.requests)} requests"
    assert r.counters.spooled == r.spooled_frames() == n + 1
    assert r.rec.results == [] and not r.counters.dead_lettered


def test_uplink_429_retry_after_opens_the_breaker_at_once(fault_server: FaultServer, rig, marker_jpeg) -> None:
    fault_server.script(httpfault.json(429, {"detail": "slow down"}, headers={"Retry-After": "30"}))
    r = rig(fault_server.url)
    r.uplink.process(make_job(jpeg=marker_jpeg[0]))
    r.uplink.process(make_job(n=2, jpeg=marker_jpeg[0]))
    assert len(fault_server.requests) == 1, "no request before Retry-After has passed"
    assert r.counters.errors == {"rate_limited": 1}
    assert r.counters.spooled == 2
    assert r.health.state == "rate_limited"


def test_uplink_malformed_replies_are_dead_lettered(fault_server: FaultServer, rig, marker_jpeg) -> None:
    # Truncated JSON (an HTML page would be network trouble: spooled, see test_hostile/fault matrix).
    fault_server.script(*[httpfault.raw(200, b'{"detections": [', "application/json")] * 3)
    r = rig(fault_server.url)
    r.uplink.process(make_job(jpeg=marker_jpeg[0]))
    assert len(fault_server.requests) == 3, "retried max_attempts times, not for ever"
    assert r.counters.dead_lettered == {"malformed_response": 1}
    assert r.counters.errors == {"malformed_response": 3}
    assert r.counters.spooled == 0
    assert r.health.state == "malformed_response"
    # A bad reply says nothing about reachability: the next frame goes out normally.
    r.uplink.process(make_job(n=2, jpeg=marker_jpeg[0]))
    assert len(r.rec.results) == 1 and r.health.state == "ok"


def test_uplink_rejected_frame_is_dead_lettered_without_retry(fault_server: FaultServer, rig, marker_jpeg) -> None:
    fault_server.script(httpfault.json(422, {"detail": "image too small"}))
    r = rig(fault_server.url)
    r.uplink.process(make_job(jpeg=marker_jpeg[0]))
    assert len(fault_server.requests) == 1
    assert r.counters.dead_lettered == {"rejected": 1}
    assert r.counters.spooled == 0 and r.spooled_frames() == 0


@pytest.mark.parametrize("probe_reply", [
    httpfault.raw(200, b"garbage", "application/json"),
    httpfault.json(400, {"detail": "cannot decode image"}),
], ids=["malformed", "rejected"])
def test_uplink_breaker_recovers_when_the_probe_reply_is_not_a_failure(
    fault_server: FaultServer, rig, marker_jpeg, probe_reply
) -> None:
    """BUG (focoos_edge/inference/uplink.py, Uplink.process): a half-open probe answered with a malformed 200
    or a 4xx calls neither breaker.success() nor breaker.failure(), so the breaker stays 'probing'
    for ever: every later frame is spooled without a request, and the backlog is never drained
    (`_backlog_allowed` sees `breaker.ready()` False), although the API is healthy again."""
    fault_server.script(*[httpfault.json(503, {"detail": "down"})] * 3, probe_reply)
    r = rig(fault_server.url)
    r.uplink.process(make_job(jpeg=marker_jpeg[0]))  # 3 x 503: the breaker opens
    deadline = time.monotonic() + 5.0  # the first open delay is at most 1 s
    n = 1
    while not r.rec.results and time.monotonic() < deadline:
        r.uplink.process(make_job(n=n, jpeg=marker_jpeg[0]))
        n += 1
        r.stop.wait(0.1)
    assert len(fault_server.requests) >= 4, "the probe was sent"
    assert r.rec.results, (
        f"the API recovered after the probe but no frame went through in 5 s: "
        f"{len(fault_server.requests)} requests, {r.counters.spooled} frames spooled")


MODEL_INFO = {"ref": "m1", "name": "m1", "task": "detection", "classes": ["person"], "im_size": 640}


def routed(get_status: str, post: httpfault.Behaviour) -> httpfault.Behaviour:
    """GET (model info) answers with `get_status`; POST (inference) behaves as `post`."""

    def run(h) -> None:
        if h.command == "GET":
            httpfault.json(200, {**MODEL_INFO, "status": get_status})(h)
        else:
            post(h)

    return run


def test_uplink_resumes_after_the_probe_loop_sees_the_model_again(rig, marker_jpeg) -> None:
    with FaultServer() as srv:
        srv.default = routed("TRAINING_COMPLETED", httpfault.json(200, OK_REPLY))
        srv.script(httpfault.json(401, {"detail": "key revoked"}))
        r = rig(srv.url, model_ref="m1", max_in_flight=1)
        r.uplink.process(make_job(jpeg=marker_jpeg[0]))
        assert r.health.paused.is_set() and r.spooled_frames() == 1
        r.uplink.start()
        # The probe lifts the pause; the idle worker then replays the spooled frame.
        wait_until(lambda: r.rec.results, 10, message=lambda: f"no replay; health {r.health.state}")
        r.close()
    assert r.health.state == "ok" and not r.health.paused.is_set()
    _, _, delivery = r.rec.results[0]
    assert delivery.replayed


def test_uplink_probe_loop_does_not_hammer_a_model_that_is_not_ready(
    rig, marker_jpeg, caplog: pytest.LogCaptureFixture
) -> None:
    """BUG (focoos_edge/inference/uplink.py, Uplink._probe_loop): after an auth/model error paused uploads, a
    model-info probe that succeeds with a not-ready status leaves uploads paused, and the loop then
    re-probes at once, with no wait: thousands of GET requests (and warnings) per second."""
    caplog.set_level(logging.ERROR, logger="focoos_edge.inference.uplink")  # the bug logs a warning per request
    with FaultServer() as srv:
        srv.default = routed("TRAINING_RUNNING", httpfault.json(401, {"detail": "bad key"}))
        r = rig(srv.url, model_ref="m1", max_in_flight=1)
        r.uplink.process(make_job(jpeg=marker_jpeg[0]))
        assert r.health.paused.is_set()
        r.uplink.start()
        r.stop.wait(1.5)
        r.close()
        gets = [q for q in srv.requests if q.method == "GET"]
    assert r.health.state == "model_not_ready"
    n_gets = len(gets)
    assert 1 <= n_gets <= 3, f"{n_gets} model-info requests in 1.5 s"

# --------------------------------------------------------------------------------------------
# messages


def test_topics() -> None:
    t = Topics("focoos", "edge-01")
    assert t.availability == "focoos/edge-01/availability"
    assert t.stats == "focoos/edge-01/stats"
    assert t.inference == "focoos/edge-01/inference"
    assert t.detections("front_door") == "focoos/edge-01/front_door/detections"
    assert t.camera_state("front_door") == "focoos/edge-01/front_door/state"
    assert Topics("site/a", "box").availability == "site/a/box/availability"


@pytest.mark.parametrize("t_ns, text", [
    (1764186000123456789, "2025-11-26T19:40:00.123456Z"),
    (0, "1970-01-01T00:00:00.000000Z"),
    (999_999_999, "1970-01-01T00:00:00.999999Z"),  # truncated, never rounded into the next second
    (1_000_000_000, "1970-01-01T00:00:01.000000Z"),
])
def test_iso_utc_ns(t_ns: int, text: str) -> None:
    assert iso_utc_ns(t_ns) == text


def test_iso_utc_of_a_float_time() -> None:
    assert iso_utc(1.5) == "1970-01-01T00:00:01.500000Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", iso_utc(time.time()))


def test_detections_payload_has_every_contract_field() -> None:
    det = detection_dict("person", 0, 0.912345, (412.04, 157, 598, 633.26))
    payload = detections_payload(
        device_id="edge-01", camera="front_door", frame_id="front_door-1764186000123456789",
        captured_at_ns=1764186000123456789, published_at_ns=1764186000301002000, replayed=False,
        model_ref="fai-detr-l-obj365", width=1920, height=1080, detections=[det],
        inference_ms=120.54, total_ms=178.21, queue_ms=3.0)
    contract = {"v", "device_id", "camera", "frame_id", "captured_at", "published_at", "replayed", "model_ref",
                "width", "height", "detections", "latency_ms"}
    assert contract <= set(payload)
    assert payload["v"] == 1
    assert payload["captured_at"] == "2025-11-26T19:40:00.123456Z"
    assert payload["published_at"] == "2025-11-26T19:40:00.301002Z"
    assert payload["replayed"] is False
    assert (payload["width"], payload["height"]) == (1920, 1080)
    assert payload["detections"] == [{"label": "person", "cls_id": 0, "conf": 0.9123,
                                      "bbox": [412.0, 157.0, 598.0, 633.3]}]
    assert {"inference", "total"} <= set(payload["latency_ms"])
    assert payload["latency_ms"]["inference"] == 120.5 and payload["latency_ms"]["total"] == 178.2
    wire = dumps(payload)
    assert json.loads(wire) == payload and b" " not in wire.replace(b"fai-detr", b"")


def test_detection_without_a_box() -> None:
    assert detection_dict("cat", 3, 0.5, None) == {"label": "cat", "cls_id": 3, "conf": 0.5, "bbox": None}


def _kept(dets: list[dict], labels, threshold: float) -> list[dict]:
    return [d for d in dets if keeps(d["label"], d["conf"], labels, threshold)]


def test_keeps_threshold_is_strict_and_labels_filter() -> None:
    dets = [detection_dict(label, i, conf, (0, 0, 1, 1))
            for i, (label, conf) in enumerate([("person", 0.6), ("car", 0.6000001), ("person", 0.9),
                                               ("dog", 0.95), ("car", 0.59)])]
    kept = _kept(dets, None, 0.6)
    assert [(d["label"], d["conf"]) for d in kept] == [("person", 0.9), ("dog", 0.95)], \
        "conf == threshold is dropped (strict >, like the server); 0.6000001 rounds to 0.6"
    kept = _kept(dets, ["person", "car"], 0.5)
    assert [d["label"] for d in kept] == ["person", "car", "person", "car"]
    assert _kept(dets, ["giraffe"], 0.0) == []


# --------------------------------------------------------------------------------------------
# systemd.Notifier over real unix datagram sockets


def _bound_dgram(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5.0)
    return sock


def test_notifier_sends_ready_status_stopping_verbatim(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with _bound_dgram(path) as sock:
        notifier = Notifier(environ={"NOTIFY_SOCKET": path})
        try:
            assert notifier.enabled
            assert notifier.ready("1/1 cameras streaming")
            assert sock.recv(4096) == b"READY=1\nSTATUS=1/1 cameras streaming"
            assert notifier.status("inference ok")
            assert sock.recv(4096) == b"STATUS=inference ok"
            assert notifier.stopping()
            assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
        finally:
            notifier.close()


def test_notifier_watchdog_ping(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with _bound_dgram(path) as sock:
        notifier = Notifier(environ={"NOTIFY_SOCKET": path})
        try:
            assert notifier.watchdog()
            assert sock.recv(4096) == b"WATCHDOG=1"
        finally:
            notifier.close()


@pytest.mark.parametrize("environ, expected_s", [
    ({"WATCHDOG_USEC": "20000000"}, 10.0),
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())}, 10.0),
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(environ: dict[str, str],
                                                                       expected_s: float | None) -> None:
    assert watchdog_interval_s(environ) == expected_s


def test_notifier_abstract_socket(tmp_path: Path) -> None:
    name = f"focoos-edge-test-{uuid.uuid4().hex}"
    with _bound_dgram("\0" + name) as sock:
        notifier = Notifier(environ={"NOTIFY_SOCKET": "@" + name})
        try:
            assert notifier.ready("up")
            assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        finally:
            notifier.close()


def test_notifier_without_notify_socket_is_a_no_op() -> None:
    notifier = Notifier(environ={})
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.status("x") is False
    assert notifier.stopping() is False


def test_notifier_with_a_vanished_socket_returns_false(tmp_path: Path) -> None:
    notifier = Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    try:
        assert notifier.enabled
        assert notifier.ready("x") is False  # ENOENT is swallowed: systemd going away must not kill us
    finally:
        notifier.close()


# --------------------------------------------------------------------------------------------
# logs.setup_logging: secrets redacted on the real stderr


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    noisy = {name: logging.getLogger(name).level for name in ("urllib3", "focoos_edge.paho")}
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)


def test_setup_logging_redacts_secrets_in_messages_and_tracebacks(
    restore_logging: None, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    secret = f"{CANARY}-api-key"
    setup_logging("info", [secret])
    log = logging.getLogger("focoos_edge.test_units")
    log.info("connecting with key %s", secret)
    log.debug("hidden at info level %s", "DEBUG-LINE")
    try:
        raise RuntimeError(f"server said: bad key {secret}")
    except RuntimeError:
        log.exception("request failed")
    err = capfd.readouterr().err
    assert CANARY not in err, err
    assert "connecting with key ***" in err
    assert "RuntimeError: server said: bad key ***" in err
    assert "Traceback (most recent call last)" in err
    assert "DEBUG-LINE" not in err
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO focoos_edge.test_units: ", err, re.M)


def test_setup_logging_replaces_previous_handlers(restore_logging: None, capfd: pytest.CaptureFixture[str]) -> None:
    setup_logging("info")
    setup_logging("info", ["SECRET-1234"])
    logging.getLogger("focoos_edge.y").info("once SECRET-1234")
    err = capfd.readouterr().err
    assert err.count("once ***") == 1, err
