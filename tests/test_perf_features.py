"""Decode-less and cost features with real media: keyframe-only decoding (PyAV, file and RTSP),
the scene-change gate and hourly budget, MJPEG scaled decode, and the camera thread using them.

No timed assertions: waits have generous deadlines and the checks are on counts and pixels.
Figures (CPU, freshness...) come from scripts/bench.py, not from here.
"""

from __future__ import annotations

import itertools
import subprocess
import threading
from pathlib import Path

import cv2
import media
import numpy as np
import pytest
from procs import free_port, wait_until

from focoos_edge.capture.encode import FrameJob, JpegEncoder, resize_to_max_side
from focoos_edge.capture.keyframes import KeyframeSource, ffmpeg_options
from focoos_edge.capture.mjpeg import (
    MjpegCapture,
    MjpegDecodeError,
    MjpegDecoder,
    decode_scaled,
    pick_scaling_factor,
    wrap_usb_capture,
)
from focoos_edge.capture.motion import InferenceBudget, SceneGate, mean_abs_diff, thumbnail
from focoos_edge.capture.source import ConversionBuffers, FrameSource
from focoos_edge.capture.turbo import EncoderUnavailableError
from focoos_edge.capture.worker import (
    CameraWorker,
    CaptureOpenError,
    CaptureSettings,
    open_capture,
    retrieve_scaled,
)
from focoos_edge.config.sources import parse_source

FPS = 25


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small real clips: moving testsrc2 with GOP 25 and GOP 10, a static marker picture."""
    media_dir = tmp_path_factory.mktemp("perf-media")
    return {
        "gop25": media.make_test_clip(media_dir / "gop25.mp4", 640, 360, FPS, 4, gop=25),
        "gop10": media.make_test_clip(media_dir / "gop10.mp4", 640, 360, FPS, 4, gop=10),
        "static": media.make_marker_clip(media_dir / "static.mp4", 640, 360, FPS, 4,
                                         markers=[(7, 100, 80, 120)]),
        "mjpeg": make_mjpeg_clip(media_dir / "mjpeg.avi"),
        "moving": media.make_marker_clip(media_dir / "moving.mp4", 640, 360, FPS, 4,
                                         markers=[(7, 200, 80, 120)], motion=True, motion_px=60,
                                         period_s=2),
    }


def make_mjpeg_clip(path: Path) -> Path:
    """testsrc2 1280x720 as Motion-JPEG: every frame a JPEG, as a USB camera sends them."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25",
                    "-t", "2", "-c:v", "mjpeg", "-q:v", "4", str(path)], check=True, timeout=120)
    return path


def all_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a file, decoded by OpenCV (the reference)."""
    return media.read_frames(path, 10_000)


def settings(source: str, **kw: object) -> CaptureSettings:
    base = dict(name="cam", source=parse_source(source), sample_fps=2.0, max_side=320, jpeg_quality=80)
    return CaptureSettings(**{**base, **kw})


# -- keyframe-only source --------------------------------------------------------------------------

@pytest.mark.parametrize("clip, gop", [("gop25", 25), ("gop10", 10)])
def test_keyframe_source_decodes_only_the_keyframes_of_a_file(clips, clip, gop):
    reference = all_frames(clips[clip])
    source = KeyframeSource(str(clips[clip]), display=clip)
    decoded, packets_at = [], []
    try:
        while source.grab():
            ok, frame = source.retrieve()
            assert ok
            decoded.append(frame)
            packets_at.append(source.packets)
    finally:
        source.release()
    assert len(reference) == 100
    assert source.keyframes == len(decoded) == 100 // gop
    # Each decoded picture is the keyframe at index k * gop, not any other frame of the GOP
    # (testsrc2 moves every frame: a neighbour would be far off).
    for k, frame in enumerate(decoded):
        assert cv2.PSNR(frame, reference[k * gop]) > 35
        assert cv2.PSNR(frame, reference[k * gop + 1]) < cv2.PSNR(frame, reference[k * gop])
    assert packets_at == [k * gop + 1 for k in range(len(decoded))]


def test_keyframe_source_reads_rtsp_over_tcp_one_keyframe_per_gop(clips, rtsp_server):
    server = rtsp_server(clip=clips["gop25"])
    source = KeyframeSource(server.url, display="rtsp", open_timeout_s=10, read_timeout_s=10)
    packets_at = []
    try:
        for _ in range(4):
            assert source.grab(), "no keyframe from the RTSP server"
            packets_at.append(source.packets)
        ok, frame = source.retrieve()
        scaled = source.retrieve_scaled(320)
    finally:
        source.release()
    assert ok and frame.shape == (360, 640, 3)
    assert scaled.image.shape == (180, 320, 3) and (scaled.width, scaled.height) == (640, 360)
    assert source.keyframes == 4
    # Between two keyframes the decoder saw a whole GOP of packets and output nothing else.
    assert [b - a for a, b in itertools.pairwise(packets_at)] == [25, 25, 25]


def test_keyframe_source_scaled_retrieve_matches_full_decode_and_resize(clips):
    source = KeyframeSource(str(clips["gop25"]), display="clip")
    try:
        assert source.grab()
        _, full = source.retrieve()
        scaled = source.retrieve_scaled(320)
    finally:
        source.release()
    reference, _ = resize_to_max_side(full, 320)
    assert scaled.image.shape == reference.shape and scaled.scale == 0.5
    grey = lambda img: cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)  # noqa: E731
    assert cv2.PSNR(grey(scaled.image), grey(reference)) > 40


def test_keyframe_open_failure_names_the_source_without_its_password():
    port = free_port()  # nothing listens there
    cfg = settings(f"rtsp://admin:s3cretpw@127.0.0.1:{port}/cam", decode="keyframes",
                   open_timeout_s=2, read_timeout_s=2)
    with pytest.raises(CaptureOpenError) as info:
        open_capture(cfg)
    assert "s3cretpw" not in str(info.value)
    assert f"127.0.0.1:{port}" in str(info.value)


def test_keyframe_source_stops_at_once_when_stop_is_set(clips):
    stop = threading.Event()
    source = KeyframeSource(str(clips["gop25"]), display="clip", realtime=True, stop=stop)
    try:
        stop.set()
        assert source.grab() is False
        assert source.packets == 0
    finally:
        source.release()


def test_ffmpeg_options_use_tcp_and_take_the_users_opencv_options():
    assert ffmpeg_options({}) == {"rtsp_transport": "tcp"}
    env = {"OPENCV_FFMPEG_CAPTURE_OPTIONS": "rtsp_transport;udp|stimeout;5000000|junk"}
    assert ffmpeg_options(env) == {"rtsp_transport": "udp", "stimeout": "5000000"}


# -- scene-change gate and budget ----------------------------------------------------------------

def run_gate(frames: list[np.ndarray], gate: SceneGate, clock: FakeClock, step_s: float) -> list[str]:
    reasons = []
    for frame in frames:
        decision, thumb = gate.check(frame)
        reasons.append(decision.reason)
        if decision.send:
            gate.sent(thumb)
        clock.now += step_s
    return reasons


def test_gate_skips_a_static_clip_except_first_frame_and_heartbeats(clips):
    sampled = all_frames(clips["static"])[::12]  # about 2 fps from 25 fps
    clock = FakeClock()
    gate = SceneGate(threshold=1.0, heartbeat_s=2.0, clock=clock)
    reasons = run_gate(sampled, gate, clock, step_s=0.5)
    assert len(reasons) == 9
    assert reasons == ["first", "static", "static", "static", "heartbeat",
                       "static", "static", "static", "heartbeat"]


def test_gate_passes_every_sampled_frame_of_a_moving_clip(clips):
    sampled = all_frames(clips["moving"])[::12]
    clock = FakeClock()
    gate = SceneGate(threshold=1.0, heartbeat_s=60.0, clock=clock)
    reasons = run_gate(sampled, gate, clock, step_s=0.5)
    assert reasons[0] == "first"
    assert set(reasons[1:]) == {"changed"}


def test_gate_compares_with_the_last_sent_frame_so_slow_drift_adds_up():
    clock = FakeClock()
    gate = SceneGate(threshold=3.0, heartbeat_s=1e9, clock=clock)
    frames = [np.full((90, 160, 3), 100 + 2 * i, np.uint8) for i in range(4)]  # +2 grey levels each
    reasons = run_gate(frames, gate, clock, step_s=1.0)
    assert reasons == ["first", "static", "changed", "static"]  # 2 < 3, then 4 > 3 vs the sent one


def test_thumbnail_is_small_grey_and_diff_is_in_grey_levels():
    img = np.zeros((1080, 1920, 3), np.uint8)
    thumb = thumbnail(img)
    assert thumb.shape == (36, 64) and thumb.dtype == np.uint8
    assert mean_abs_diff(thumb, thumb + 10) == pytest.approx(10.0)
    assert mean_abs_diff(thumb, thumbnail(np.zeros((480, 640, 3), np.uint8))) == float("inf")


def test_budget_caps_each_sliding_hour_and_spreads_inferences():
    clock = FakeClock()
    budget = InferenceBudget(per_hour=120, burst=2, clock=clock)  # one every 30 s on average
    granted = []
    for _ in range(7200):  # two hours, one try per second
        granted.append(budget.try_spend())
        clock.now += 1.0
    times = [t for t, ok in enumerate(granted) if ok]
    assert 240 <= len(times) <= 242  # 120 per hour (+ the initial burst)
    for start in range(0, 3600, 600):
        assert sum(1 for t in times if start <= t < start + 3600) <= 120
    first_hour = [t for t in times if t < 3600]
    assert first_hour[:2] == [0, 1]  # the burst
    assert {b - a for a, b in itertools.pairwise(first_hour[1:])} == {30}  # then evenly spread
    for start in range(0, 7200 - 600, 60):  # never more than a burst plus 10 minutes' worth
        assert sum(1 for t in times if start <= t < start + 600) <= 2 + 20


# -- MJPEG scaled decode ----------------------------------------------------------------------------

BGR_LEFT, BGR_RIGHT = (30, 40, 200), (200, 120, 20)  # a red-ish and a blue-ish half


def two_colour_jpeg(width: int, height: int, quality: int = 90) -> bytes:
    img = np.empty((height, width, 3), np.uint8)
    img[:, : width // 2] = BGR_LEFT
    img[:, width // 2 :] = BGR_RIGHT
    return JpegEncoder().encode(img, quality)


@pytest.mark.parametrize("size, max_side, factor, out", [
    ((1920, 1080), 640, (3, 8), (640, 360)),   # 720 px decoded, resized to 640
    ((1920, 1080), 480, (1, 4), (480, 270)),   # exact factor, no resize
    ((1280, 720), 640, (1, 2), (640, 360)),
    ((640, 480), 640, (1, 1), (640, 480)),     # already small enough
    ((320, 240), 640, (1, 1), (320, 240)),     # never upscaled
])
def test_mjpeg_decode_scaled_size_factor_and_colour(size, max_side, factor, out):
    decoder = MjpegDecoder()
    jpeg = two_colour_jpeg(*size)
    assert pick_scaling_factor(*size, max_side, sorted(decoder._tj.scaling_factors)) == factor
    frame = decode_scaled(jpeg, max_side, decoder)
    assert (frame.width, frame.height) == size
    assert frame.image.shape == (out[1], out[0], 3)
    assert frame.scale == pytest.approx(out[0] / size[0])
    h, w = frame.image.shape[:2]
    for (x, colour) in ((w // 4, BGR_LEFT), (3 * w // 4, BGR_RIGHT)):
        assert np.abs(frame.image[h // 2, x].astype(int) - colour).max() <= 6


def test_mjpeg_decodes_a_v4l2_style_buffer_without_huffman_tables():
    # Many USB cameras send MJPEG frames without DHT segments (the standard tables are implied);
    # OpenCV hands them over as a 1xN uint8 Mat.
    jpeg = two_colour_jpeg(1280, 720)
    stripped = strip_dht(jpeg)
    assert len(stripped) < len(jpeg)
    frame = decode_scaled(np.frombuffer(stripped, np.uint8).reshape(1, -1), 640)
    assert frame.image.shape == (360, 640, 3)
    assert np.abs(frame.image[180, 160].astype(int) - BGR_LEFT).max() <= 6


def test_mjpeg_rejects_bytes_that_are_not_a_jpeg():
    with pytest.raises(MjpegDecodeError):
        decode_scaled(b"\x00" * 1000, 640)


def strip_dht(jpeg: bytes) -> bytes:
    """Remove every DHT (0xFFC4) segment before the scan."""
    out, i = bytearray(jpeg[:2]), 2
    while i < len(jpeg):
        marker, length = jpeg[i + 1], int.from_bytes(jpeg[i + 2 : i + 4], "big")
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            out += jpeg[i:]
            break
        if marker != 0xC4:
            out += jpeg[i : i + 2 + length]
        i += 2 + length
    return bytes(out)


# -- the camera thread with the new settings -------------------------------------------------------

def run_worker(cfg: CaptureSettings, until, timeout_s: float = 30.0) -> tuple[CameraWorker, list[FrameJob]]:
    jobs: list[FrameJob] = []
    states: list[str] = []
    stop = threading.Event()
    worker = CameraWorker(cfg, jobs.append, lambda _c, state, _d: states.append(state), stop)
    worker.start()
    try:
        wait_until(lambda: until(worker, jobs), timeout_s,
                   message=lambda: f"worker counters {worker.counters}, states {states}")
    finally:
        stop.set()
        worker.join(10)
    assert not worker.is_alive()
    assert "streaming" in states
    return worker, jobs


def decode(jpeg: bytes) -> np.ndarray:
    """An independent decoder (OpenCV's libjpeg), BGR."""
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def check_job(job: FrameJob, width: int, height: int, max_side: int) -> None:
    assert (job.width, job.height) == (width, height)
    img = decode(job.jpeg)
    assert max(img.shape[:2]) == max_side
    assert job.scale == pytest.approx(img.shape[1] / width)
    assert job.captured_mono <= job.encoded_mono


def test_camera_worker_in_keyframe_mode_produces_frame_jobs_from_a_file(clips):
    cfg = settings(str(clips["gop10"]), decode="keyframes", sample_fps=25)
    worker, jobs = run_worker(cfg, lambda w, j: len(j) >= 12)  # > 10 keyframes: looped once
    check_job(jobs[0], 640, 360, 320)
    # Every job shows a keyframe (testsrc2 changes every frame: the best-matching frame of the
    # clip identifies it), and the file looped back to its start without a reconnect.
    reference = [resize_to_max_side(f, 320)[0] for f in all_frames(clips["gop10"])]
    for job in jobs:
        img = decode(job.jpeg)
        best = max(range(len(reference)), key=lambda i: cv2.PSNR(img, reference[i]))
        assert best % 10 == 0, f"job shows frame {best}, not a keyframe"
    assert worker.counters.reconnects == 0


def test_camera_worker_in_keyframe_mode_from_rtsp(clips, rtsp_server):
    server = rtsp_server(clip=clips["gop25"])
    worker, jobs = run_worker(settings(server.url, decode="keyframes"), lambda w, j: len(j) >= 3)
    check_job(jobs[-1], 640, 360, 320)
    # One job per keyframe at 2 fps, except that the server sends its first GOP in a burst on
    # connect, so the first two keyframes can arrive within one sampling interval.
    assert worker.counters.grabbed - 1 <= worker.counters.sampled <= worker.counters.grabbed


def test_camera_worker_gate_holds_back_a_static_scene(clips):
    cfg = settings(str(clips["static"]), motion_threshold=1.0, motion_heartbeat_s=3600)
    worker, jobs = run_worker(cfg, lambda w, j: w.counters.skipped_static >= 4)
    assert len(jobs) == worker.counters.sampled == 1  # only the first frame was produced
    check_job(jobs[0], 640, 360, 320)


def test_camera_worker_gate_lets_a_moving_scene_through(clips):
    cfg = settings(str(clips["moving"]), motion_threshold=1.0, motion_heartbeat_s=3600)
    worker, jobs = run_worker(cfg, lambda w, j: len(j) >= 4)
    assert worker.counters.skipped_static == 0


def test_camera_worker_budget_skips_and_counts(clips):
    cfg = settings(str(clips["moving"]), max_inferences_per_hour=24)  # burst of 2, then 1 per 150 s
    worker, jobs = run_worker(cfg, lambda w, j: w.counters.skipped_budget >= 3)
    assert len(jobs) == worker.counters.sampled == 2


def test_camera_worker_decodes_raw_mjpeg_frames_scaled(clips):
    # OpenCV's raw mode hands over each JPEG undecoded as a 1xN uint8 Mat, exactly as V4L2 does
    # with CAP_PROP_CONVERT_RGB=0: the camera thread's MJPEG path with a real capture (only the
    # V4L2 format negotiation needs a device).
    path = str(clips["mjpeg"])

    def opener(_settings: CaptureSettings) -> MjpegCapture:
        return MjpegCapture(cv2.VideoCapture(path, cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1]))

    jobs: list[FrameJob] = []
    stop = threading.Event()
    worker = CameraWorker(settings(path, usb_mjpeg=True, max_side=640), jobs.append,
                          lambda *_: None, stop, opener=opener)
    worker.start()
    try:
        wait_until(lambda: len(jobs) >= 2, 30, message=lambda: f"counters {worker.counters}")
    finally:
        stop.set()
        worker.join(10)
    check_job(jobs[0], 1280, 720, 640)
    # The first job shows the clip's first picture, in the right colours (testsrc2 changes every
    # frame: the next one is far off).
    first, second = (resize_to_max_side(f, 640)[0] for f in all_frames(clips["mjpeg"])[:2])
    img = decode(jobs[0].jpeg)
    assert cv2.PSNR(img, first) > 25
    assert cv2.PSNR(img, first) > cv2.PSNR(img, second) + 5


def test_a_usb_capture_that_does_not_deliver_mjpeg_is_left_as_it_is(clips):
    cap = cv2.VideoCapture(str(clips["gop25"]), cv2.CAP_FFMPEG)  # H.264: refuses the MJPG format
    try:
        assert wrap_usb_capture(cap, "cam") is cap
        assert cap.read()[1].shape == (360, 640, 3)  # still converts to BGR
    finally:
        cap.release()


def test_camera_worker_with_one_decoder_thread(clips):
    worker, jobs = run_worker(settings(str(clips["gop25"]), decode_threads=1), lambda w, j: len(j) >= 2)
    check_job(jobs[0], 640, 360, 320)


def test_default_retrieve_is_decode_then_resize(clips):
    cap = open_capture(settings(str(clips["gop25"])))
    try:
        assert cap.grab()
        scaled = retrieve_scaled(cap, 320)
        _, full = cap.retrieve()
    finally:
        cap.release()
    assert (scaled.width, scaled.height) == (640, 360)
    assert np.array_equal(scaled.image, resize_to_max_side(full, 320)[0])


def scaled_frames(path: Path, max_side: int, buffers: ConversionBuffers | None, n: int) -> list[np.ndarray]:
    """The first `n` frames of a file through OpenCvSource.retrieve_scaled."""
    cap = open_capture(settings(str(path)), buffers=buffers)
    try:
        out = []
        for _ in range(n):
            assert cap.grab()
            scaled = cap.retrieve_scaled(max_side)
            assert scaled is not None
            out.append(scaled.image)
        return out
    finally:
        cap.release()


def test_shared_conversion_buffers_give_the_same_pixels_and_keep_one_buffer_per_shape(clips, tmp_path):
    """Cameras of two sizes converted into the shared buffers, from two threads at once: every
    downscaled frame equals the one converted into a fresh array; one buffer per frame shape."""
    big = media.make_test_clip(tmp_path / "big.mp4", 1280, 720, FPS, 2, gop=25)
    expected = {p: scaled_frames(p, 320, None, 20) for p in (clips["gop25"], big)}
    buffers = ConversionBuffers()
    got: dict[Path, list[np.ndarray]] = {}
    threads = [threading.Thread(target=lambda p=p: got.__setitem__(p, scaled_frames(p, 320, buffers, 20)))
               for p in expected]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for path, frames in expected.items():
        assert len(got[path]) == len(frames)
        assert all(np.array_equal(a, b) for a, b in zip(got[path], frames, strict=True)), path
    assert sorted(buffers.shapes()) == [(360, 640, 3), (720, 1280, 3)]


def test_shared_conversion_buffer_is_reused_and_never_handed_out(clips):
    """The buffer is converted into again and again (no fresh 6 MB array per sampled frame), and a
    frame that needs no downscale leaves as a copy: the next conversion cannot overwrite it."""
    buffers = ConversionBuffers()
    cap = open_capture(settings(str(clips["gop25"])), buffers=buffers)
    try:
        assert cap.grab()
        first = cap.retrieve_scaled(640)  # 640x360 already: not downscaled
        with buffers.borrow((360, 640, 3)) as slot:
            held = slot.buffer
        assert held is not None and first is not None
        assert not np.shares_memory(first.image, held)
        kept = first.image.copy()
        for _ in range(5):
            assert cap.grab()
            assert cap.retrieve_scaled(320) is not None
        with buffers.borrow((360, 640, 3)) as slot:
            assert slot.buffer is held  # the same array, converted into in place
        assert np.array_equal(first.image, kept)
    finally:
        cap.release()


def test_capture_settings_reject_an_unknown_decode_mode_and_keyframes_for_usb():
    with pytest.raises(ValueError, match="decode"):
        settings("/tmp/x.mp4", decode="fast")
    with pytest.raises(ValueError, match="keyframes"):
        settings("usb:0", decode="keyframes")


def test_every_source_is_a_declared_frame_source(clips):
    """OpenCV, PyAV (keyframes) and MJPEG sources implement the one FrameSource protocol."""
    path = str(clips["gop25"])
    sources = [open_capture(settings(path)), open_capture(settings(path, decode="keyframes")),
               MjpegCapture(cv2.VideoCapture(str(clips["mjpeg"]), cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1]))]
    try:
        for source in sources:
            assert isinstance(source, FrameSource), type(source)
            assert source.grab()
            scaled = source.retrieve_scaled(320)
            assert scaled is not None and max(scaled.image.shape[:2]) == 320
        assert [s.self_paced for s in sources] == [False, True, False]
    finally:
        for source in sources:
            source.release()


def test_the_mjpeg_decoder_loads_turbojpeg_like_the_encoder(monkeypatch):
    """One loader: $TURBOJPEG is honoured by the MJPEG decoder too (it used to be ignored there)."""
    monkeypatch.setenv("TURBOJPEG", "/nonexistent/libturbojpeg.so.0")
    with pytest.raises(EncoderUnavailableError, match="/nonexistent/libturbojpeg.so.0"):
        MjpegDecoder()
    with pytest.raises(EncoderUnavailableError, match="/nonexistent/libturbojpeg.so.0"):
        JpegEncoder()
