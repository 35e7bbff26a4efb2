"""Camera capture: one thread per camera keeps only the freshest frame and samples at `sample_fps`.

The thread calls `grab()` continuously, so OpenCV/FFmpeg never accumulates a backlog of old frames,
and converts to BGR (`retrieve()`) only the frames it samples. A dead source is reopened with capped,
jittered backoff; the state (streaming / reconnecting / offline) goes out through a callback.

Decoding less: `decode="keyframes"` reads the stream with PyAV and decodes keyframes only
(keyframes.py); `usb_mjpeg` takes a USB camera's JPEGs undecoded and decodes only sampled ones,
scaled (mjpeg.py). Paying less: an optional scene-change gate and hourly budget (motion.py) decide
whether a sampled frame is sent at all; frames they hold back are counted, never produced.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from focoos_edge.capture.encode import FrameJob, JpegEncoder
from focoos_edge.capture.frameprep import FramePrep, ModelImSize
from focoos_edge.capture.keyframes import KeyframeOpenError, KeyframeUnavailableError, open_keyframes
from focoos_edge.capture.mjpeg import MjpegCapture, wrap_usb_capture
from focoos_edge.capture.motion import InferenceBudget, SceneGate
from focoos_edge.capture.source import ConversionBuffers, FrameSource, OpenCvSource, ScaledFrame
from focoos_edge.common import Backoff, Loop
from focoos_edge.config import Source

log = logging.getLogger(__name__)

STREAMING = "streaming"
RECONNECTING = "reconnecting"
OFFLINE = "offline"

# FFmpeg reads its capture options from this variable at open time. TCP avoids the UDP packet
# loss (grey smeared frames) that RTSP over Wi-Fi suffers; users can still override it.
_FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_FFMPEG_OPTIONS_DEFAULT = "rtsp_transport;tcp"

DECODE_ALL = "all"
DECODE_KEYFRAMES = "keyframes"


@dataclass(frozen=True)
class CaptureSettings:
    """What a camera thread needs from the camera's config."""

    name: str
    source: Source
    sample_fps: float
    max_side: int | None  # None: "auto", the model's im_size (ModelImSize)
    jpeg_quality: int
    loop: bool = True
    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 30.0
    offline_after_s: float = 60.0  # reconnecting for longer than this is reported as offline
    decode: str = DECODE_ALL  # "keyframes": decode only keyframes (PyAV); files and streams only
    decode_threads: int = 0  # FFmpeg decoder threads for decode "all"; 0 = OpenCV's choice (one per core)
    usb_mjpeg: bool = False  # usb: ask for MJPEG and decode sampled frames scaled (TurboJPEG)
    motion_threshold: float | None = None  # scene-change gate (mean abs grey diff); None = off
    motion_heartbeat_s: float = 60.0  # with the gate: a static scene is still sent this often
    max_inferences_per_hour: int | None = None  # None = no budget
    privacy_masks: tuple = ()  # normalized polygons filled black before encoding
    crop: tuple[float, float, float, float] | None = None  # normalized region uploaded alone

    def __post_init__(self) -> None:
        if self.decode not in (DECODE_ALL, DECODE_KEYFRAMES):
            raise ValueError(f"decode must be '{DECODE_ALL}' or '{DECODE_KEYFRAMES}', not {self.decode!r}")
        if self.decode == DECODE_KEYFRAMES and self.source.kind == "usb":
            raise ValueError("decode: keyframes is for files and network streams (see usb_mjpeg for usb)")


class CaptureOpenError(RuntimeError):
    """The source could not be opened (message is already redacted)."""


def open_capture(settings: CaptureSettings, stop: threading.Event | None = None,
                 buffers: ConversionBuffers | None = None) -> FrameSource:
    """Open the source as a :class:`FrameSource`: OpenCV's FFmpeg backend (V4L2 for USB devices)
    with open/read timeouts, a PyAV KeyframeSource with `decode="keyframes"` (files and streams),
    an MjpegCapture with `usb_mjpeg` when the device delivers MJPEG. `stop` interrupts a keyframe
    source's waits; an OpenCV source converts sampled frames into `buffers` when given.
    """
    src = settings.source
    os.environ.setdefault(_FFMPEG_OPTIONS_ENV, _FFMPEG_OPTIONS_DEFAULT)
    if settings.decode == DECODE_KEYFRAMES:
        try:
            return open_keyframes(src.uri, display=src.display, is_file=src.kind == "file",
                                  open_timeout_s=settings.open_timeout_s,
                                  read_timeout_s=settings.read_timeout_s, stop=stop)
        except (KeyframeOpenError, KeyframeUnavailableError) as exc:
            raise CaptureOpenError(str(exc)) from None
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(settings.open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(settings.read_timeout_s * 1000),
    ]
    if settings.decode_threads > 0:
        # One thread: no frame-threading delay (one frame per extra thread) and fewer frame buffers.
        params += [cv2.CAP_PROP_N_THREADS, settings.decode_threads]
    if src.kind == "usb" and src.device is not None:
        cap = cv2.VideoCapture(src.device, cv2.CAP_V4L2)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if settings.usb_mjpeg and cap.isOpened():
            wrapped = wrap_usb_capture(cap, settings.name)
            if isinstance(wrapped, MjpegCapture):
                return wrapped
    else:
        if src.kind == "file" and not os.path.exists(src.uri):
            raise CaptureOpenError(f"video file not found: {src.display}")
        cap = cv2.VideoCapture(src.uri, cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        raise CaptureOpenError(f"cannot open {src.display}")
    return OpenCvSource(cap, buffers)


class Sampler:
    """Decides which grabbed frames to keep so that about `fps` frames per second are sampled."""

    def __init__(self, fps: float):
        self.interval_s = 1.0 / fps
        self._next = 0.0

    def due(self, now: float) -> bool:
        """True when a frame grabbed at `now` (monotonic seconds) should be sampled."""
        if now < self._next:
            return False
        # Keep the cadence, but never burst to catch up after a stall.
        nxt = self._next + self.interval_s
        self._next = nxt if nxt > now else now + self.interval_s
        return True


@dataclass
class CameraCounters:
    """Monotonic counters of one camera, written by its thread (read through `CameraWorker.snapshot`)."""

    grabbed: int = 0
    sampled: int = 0
    grab_failures: int = 0
    open_failures: int = 0
    reconnects: int = 0
    skipped_static: int = 0  # sampled ticks held back by the scene-change gate (never produced)
    skipped_budget: int = 0  # held back because the hourly inference budget was used up
    skipped_paused: int = 0  # sampled ticks dropped while detection is switched OFF (never produced)
    recent_grabs: list = field(default_factory=list)  # monotonic times of the last grabs, for fps


@dataclass(frozen=True)
class CameraSnapshot:
    """One camera's figures at one moment (`CameraWorker.snapshot`). A camera with no worker (removed
    by a reload, or known only from frames in the spool) is reported with state `removed` and zeros."""

    state: str
    fps: float = 0.0  # frames grabbed per second over the last 5 s, to 0.01
    grabbed: int = 0
    sampled: int = 0
    reconnects: int = 0
    grab_failures: int = 0
    open_failures: int = 0
    skipped_static: int = 0
    skipped_budget: int = 0
    skipped_paused: int = 0
    restarts: Mapping[str, int] = field(default_factory=dict)  # the camera loop's, by thread name


class CameraWorker(threading.Thread):
    """Grabs frames from one source until `stop` is set.

    `on_job(FrameJob)` must not block (the uplink queue drops, it never waits);
    `on_state(camera, state, detail)` is called on every state change. `buffers`: the process's
    shared conversion buffers (one per camera thread when not given).
    """

    def __init__(self, settings: CaptureSettings, on_job: Callable[[FrameJob], None],
                 on_state: Callable[[str, str, str | None], None], stop: threading.Event,
                 opener: Callable[[CaptureSettings], FrameSource] | None = None,
                 im_size: ModelImSize | None = None, paused: threading.Event | None = None,
                 buffers: ConversionBuffers | None = None):
        super().__init__(name=f"camera-{settings.name}", daemon=True)
        self.settings = settings
        self.counters = CameraCounters()
        self.state = RECONNECTING
        self.last_progress = time.monotonic()
        self._on_job = on_job
        self._on_state = on_state
        self.stop_event = stop
        shared = buffers or ConversionBuffers()
        self._opener = opener or (lambda s: open_capture(s, stop, shared))
        self._paused = paused or threading.Event()  # set: detect OFF (mqtt control), still streaming
        self._encoder = JpegEncoder()
        self._prep = FramePrep(settings.privacy_masks, settings.crop)
        self._im_size = im_size or ModelImSize()
        self._gate = (SceneGate(settings.motion_threshold, settings.motion_heartbeat_s)
                      if settings.motion_threshold is not None else None)
        self._budget = (InferenceBudget(settings.max_inferences_per_hour)
                        if settings.max_inferences_per_hour else None)
        self._backoff = Backoff(settings.reconnect_initial_s, settings.reconnect_max_s, jitter="equal")
        self._lock = threading.Lock()
        self._failing_since: float | None = None  # monotonic time of the first failure in a row
        self.loop = Loop(self.name, self.cycle, stop, on_beat=self._beat)

    # -- public, thread-safe --------------------------------------------------
    def fps(self, window_s: float = 5.0) -> float:
        """Frames grabbed per second over the last `window_s`."""
        with self._lock:
            return self._fps(window_s)

    def _fps(self, window_s: float) -> float:
        now = time.monotonic()
        recent = [t for t in self.counters.recent_grabs if now - t <= window_s]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

    def snapshot(self) -> CameraSnapshot:
        """The camera's figures, read together under the lock its thread counts grabs under (the
        other counters have one writer, this thread)."""
        with self._lock:
            c = self.counters
            return CameraSnapshot(
                state=self.state, fps=round(self._fps(5.0), 2), grabbed=c.grabbed, sampled=c.sampled,
                reconnects=c.reconnects, grab_failures=c.grab_failures, open_failures=c.open_failures,
                skipped_static=c.skipped_static, skipped_budget=c.skipped_budget,
                skipped_paused=c.skipped_paused, restarts={self.loop.name: self.loop.restarts})

    # -- thread body ------------------------------------------------------------
    def run(self) -> None:
        self.loop.run()  # supervised: an unexpected error reopens the source after a backoff
        self._set_state(OFFLINE, "stopped")

    def _beat(self, now: float) -> None:
        self.last_progress = now

    def cycle(self) -> None:
        """One turn of the camera loop: open the source, stream until it fails or ends."""
        try:
            cap = self._opener(self.settings)
        except (CaptureOpenError, cv2.error) as exc:
            self.counters.open_failures += 1
            self._failing_since = self._failing_since or time.monotonic()
            self._open_failed(str(exc), self._failing_since)
            return
        try:
            looped = self._stream(cap)
        finally:
            cap.release()
        if not looped and not self.stop_event.is_set():
            self.counters.reconnects += 1

    def _finished(self) -> None:
        """A file played once (`loop: false`): offline, and idle until stopped (the loop still
        turns, so the watchdog does not take a finished file for a hung camera)."""
        log.info("camera %s: end of file (loop: false)", self.settings.name)
        self._set_state(OFFLINE, "end of file")
        while not self.stop_event.wait(1.0):
            self.last_progress = time.monotonic()

    def _open_failed(self, why: str, failing_since: float) -> None:
        delay = self._backoff.next_delay()
        long_down = time.monotonic() - failing_since > self.settings.offline_after_s
        self._set_state(OFFLINE if long_down else RECONNECTING, why)
        # One line per attempt would flood the journal for a camera that is down for days:
        # log the first failure and then only when the backoff has reached its cap, once.
        if self._backoff.attempts == 1:
            log.warning("camera %s: %s; retrying with backoff up to %.0f s",
                        self.settings.name, why, self.settings.reconnect_max_s)
        else:
            log.debug("camera %s: %s; next attempt in %.1f s", self.settings.name, why, delay)
        self.stop_event.wait(delay)

    def _stream(self, cap: FrameSource) -> bool:
        """Grab until the stream fails or stop is set; True when a looping file reached its end."""
        s = self.settings
        sampler = Sampler(s.sample_fps)
        is_file = s.source.kind == "file"
        pacer = _FilePacer(cap) if is_file and not cap.self_paced else None
        first = True
        while not self.stop_event.is_set():
            if pacer is not None:
                pacer.wait(self.stop_event)
            ok = cap.grab()
            now_mono = time.monotonic()
            now_ns = time.time_ns()
            if not ok:
                if self.stop_event.is_set():
                    return False
                if is_file and s.loop and not first:
                    log.debug("camera %s: end of file, looping", s.name)
                    return True  # reopened at once by run()
                if is_file and not first:  # loop: false: the clip is done, not broken
                    self._finished()
                    return False
                self.counters.grab_failures += 1
                log.warning("camera %s: stream ended or read timed out; reconnecting", s.name)
                self._set_state(RECONNECTING, "read failed")
                self.stop_event.wait(self._backoff.next_delay())
                return False
            if first:
                first = False
                # Reset only once frames flow: a source that opens but never delivers keeps backing off.
                self._backoff.reset()
                self._failing_since = None
                self._set_state(STREAMING, None)
                log.info("camera %s: streaming from %s", s.name, s.source.display)
            self._count_grab(now_mono)
            if sampler.due(now_mono):
                self._sample(cap, now_ns, now_mono)
        return False

    def _count_grab(self, now_mono: float) -> None:
        self.last_progress = now_mono
        with self._lock:
            self.counters.grabbed += 1
            recent = self.counters.recent_grabs
            recent.append(now_mono)
            if len(recent) > 256:
                del recent[:128]

    @property
    def max_side(self) -> int:
        """The upload's longest side: the configured one, or the model's im_size (auto)."""
        return self.settings.max_side or self._im_size.side

    def _sample(self, cap: FrameSource, captured_ns: int, captured_mono: float) -> None:
        if self._paused.is_set():  # before decoding: a paused camera costs grabbing only
            self.counters.skipped_paused += 1
            return
        max_side = self.max_side
        scaled = retrieve_scaled(cap, self._prep.source_side(max_side))
        if scaled is None:
            self.counters.grab_failures += 1
            return
        prepared = self._prep.apply(scaled, max_side)  # privacy masks first: nothing leaves unmasked
        if not self._admit(prepared.image):
            return
        jpeg = self._encoder.encode(prepared.image, self.settings.jpeg_quality)
        done = time.monotonic()
        self.counters.sampled += 1
        self._on_job(FrameJob(
            camera=self.settings.name, frame_id=f"{self.settings.name}-{captured_ns}",
            captured_at_ns=captured_ns, captured_mono=captured_mono, width=scaled.width,
            height=scaled.height, scale=prepared.scale, jpeg=jpeg, encoded_mono=done,
            offset_x=prepared.offset_x, offset_y=prepared.offset_y,
        ))

    def _admit(self, image: np.ndarray) -> bool:
        """Scene-change gate, then budget: False (and counted) when the frame is not to be sent."""
        thumb = None
        if self._gate is not None:
            decision, thumb = self._gate.check(image)
            if not decision.send:
                self.counters.skipped_static += 1
                return False
        if self._budget is not None and not self._budget.try_spend():
            self.counters.skipped_budget += 1
            return False
        if thumb is not None and self._gate is not None:
            self._gate.sent(thumb)
        return True

    def _set_state(self, state: str, detail: str | None) -> None:
        if state == self.state:
            return
        self.state = state
        self._on_state(self.settings.name, state, detail)


def retrieve_scaled(cap: FrameSource, max_side: int) -> ScaledFrame | None:
    """The grabbed frame in BGR, longest side `max_side`, with its original size; None on failure.

    Each source does it its own best way (OpenCV: decode + INTER_AREA; keyframes: one swscale
    pass; MJPEG: scaled JPEG decode).
    """
    return cap.retrieve_scaled(max_side)


class _FilePacer:
    """Plays a video file at its native frame rate, as a live camera would deliver it."""

    def __init__(self, cap: FrameSource):
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        self.interval_s = 1.0 / fps if 1.0 <= fps <= 240.0 else 0.04
        self._next = time.monotonic()

    def wait(self, stop: threading.Event) -> None:
        delay = self._next - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        self._next = max(self._next + self.interval_s, time.monotonic() - self.interval_s)
