"""Keyframe-only decoding with PyAV (FFmpeg's ``skip_frame``), for cameras sampled at <= 1 fps per GOP.

An H.264/H.265 camera sends one keyframe per GOP (typically every 1-2 s) and predicted frames in
between. When the daemon samples at or below the keyframe rate, decoding the predicted frames is
pure waste: with ``skip_frame = NONKEY`` the decoder only parses them, and a 1 s GOP at 25 fps
costs about a fifth of full decoding. :class:`KeyframeSource` is a
:class:`~focoos_edge.capture.source.FrameSource`; its ``retrieve_scaled`` converts and shrinks in
one swscale pass.

``grab()`` returns when the next keyframe is decoded. Files are played in real time (by the
packets' timestamps), like a live camera; live streams are read as fast as they arrive, so no
backlog builds up. PyAV is an optional dependency (``pip install 'focoos-edge[keyframes]'``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import cv2
import numpy as np

from focoos_edge.capture.encode import fit_size
from focoos_edge.capture.source import ScaledFrame

log = logging.getLogger(__name__)

PYAV_HINT = "keyframe-only decoding needs PyAV: pip install av (or the 'keyframes' extra)"
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
DEFAULT_MAX_GOP_S = 30.0  # longest wait for a keyframe before the stream is declared stalled


class KeyframeUnavailableError(RuntimeError):
    """PyAV is not installed (the message says how to install it)."""


class KeyframeOpenError(RuntimeError):
    """The source could not be opened (the message names the redacted source only)."""


def ffmpeg_options(env: dict[str, str] | None = None) -> dict[str, str]:
    """FFmpeg options for the source: RTSP over TCP, plus any the user set for OpenCV in
    ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` (``key;value|key;value``), so both decoders agree."""
    options = {"rtsp_transport": "tcp"}
    raw = (os.environ if env is None else env).get(FFMPEG_OPTIONS_ENV, "")
    for item in filter(None, raw.split("|")):
        key, sep, value = item.partition(";")
        if sep and key.strip():
            options[key.strip()] = value.strip()
    return options


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        raise KeyframeUnavailableError(PYAV_HINT) from None
    return av


class KeyframeSource:
    """Decodes only the keyframes of a file or stream (see the module doc).

    ``realtime``: pace a file at its timestamps (a live stream paces itself). ``stop`` cuts a
    pacing wait or a long wait for a keyframe short. Counters: ``packets`` read, ``keyframes``
    decoded. Not thread-safe: the camera thread owns it.
    """

    self_paced = True  # the camera thread must not add its own file pacer

    def __init__(self, uri: str, *, display: str, realtime: bool = False, open_timeout_s: float = 10.0,
                 read_timeout_s: float = 10.0, max_gop_s: float = DEFAULT_MAX_GOP_S,
                 stop: threading.Event | None = None):
        av = _import_av()
        self._av_errors = (av.FFmpegError, OSError, EOFError)
        self.display = display
        self.realtime = realtime
        self.max_gop_s = max_gop_s
        self._stop = stop or threading.Event()
        try:
            self._container = av.open(uri, options=ffmpeg_options(), timeout=(open_timeout_s, read_timeout_s))
        except self._av_errors as exc:
            # str(exc) carries the URL (and its password): only the error's own text goes out.
            raise KeyframeOpenError(f"cannot open {display}: {_reason(exc)}") from None
        if not self._container.streams.video:
            self._container.close()
            raise KeyframeOpenError(f"cannot open {display}: no video stream")
        self._stream = self._container.streams.video[0]
        ctx = self._stream.codec_context
        ctx.skip_frame = "NONKEY"  # the decoder parses predicted frames and drops them unseen
        ctx.thread_count = 1  # one keyframe per GOP: threads would only add latency and memory
        self._packets = self._container.demux(self._stream)
        self._frame: Any = None
        self._media_t0: float | None = None
        self._wall_t0 = 0.0
        self.packets = 0
        self.keyframes = 0

    # -- FrameSource ------------------------------------------------------------------------
    def isOpened(self) -> bool:
        """True until released."""
        return self._container is not None

    def grab(self) -> bool:
        """Read until the next keyframe is decoded; False at the end, on an error, a stall, or stop."""
        deadline = time.monotonic() + self.max_gop_s
        while not self._stop.is_set():
            try:
                packet = next(self._packets)
            except StopIteration:
                return False
            except self._av_errors as exc:
                log.debug("keyframes %s: read failed: %s", self.display, _reason(exc))
                return False
            self.packets += 1
            self._pace(packet)
            frame = self._decode(packet)
            if frame is not None:
                self._frame = frame
                self.keyframes += 1
                return True
            if time.monotonic() > deadline:
                log.warning("camera source %s: no keyframe for %.0f s (GOP too long, or a codec "
                            "without keyframes?): use decode: all", self.display, self.max_gop_s)
                return False
        return False

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        """The last keyframe as a full-size BGR image."""
        if self._frame is None:
            return False, None
        return True, self._frame.to_ndarray(format="bgr24")

    def retrieve_scaled(self, max_side: int) -> ScaledFrame | None:
        """The last keyframe in BGR, longest side ``max_side``: colour conversion and area-averaged
        downscale in one swscale pass (cheaper than a full-size BGR image and cv2.resize)."""
        frame = self._frame
        if frame is None:
            return None
        new_w, new_h, _ = fit_size(frame.width, frame.height, max_side)
        small = frame.reformat(width=new_w, height=new_h, format="bgr24", interpolation="AREA")
        return ScaledFrame(small.to_ndarray(), frame.width, frame.height, new_w / frame.width)

    def read(self) -> tuple[bool, np.ndarray | None]:
        """grab() + retrieve()."""
        return self.retrieve() if self.grab() else (False, None)

    def get(self, prop: int) -> float:
        """CAP_PROP_FPS, CAP_PROP_FRAME_WIDTH/HEIGHT and CAP_PROP_FOURCC; 0 for anything else."""
        ctx = self._stream.codec_context
        if prop == cv2.CAP_PROP_FPS:
            rate = self._stream.average_rate or self._stream.guessed_rate
            return float(rate) if rate else 0.0
        if prop == cv2.CAP_PROP_FRAME_WIDTH:
            return float(ctx.width)
        if prop == cv2.CAP_PROP_FRAME_HEIGHT:
            return float(ctx.height)
        if prop == cv2.CAP_PROP_FOURCC:
            return float(cv2.VideoWriter.fourcc(*(ctx.name.upper() + "    ")[:4]))
        return 0.0

    def release(self) -> None:
        """Close the container (idempotent)."""
        if self._container is not None:
            self._container.close()
            self._container = None
            self._frame = None

    # -- internals ---------------------------------------------------------------------------
    def _decode(self, packet: Any) -> Any:
        try:
            frames = packet.decode()
        except self._av_errors as exc:  # a corrupt packet: the next keyframe starts afresh
            log.debug("keyframes %s: undecodable packet: %s", self.display, _reason(exc))
            return None
        return frames[-1] if frames else None

    def _pace(self, packet: Any) -> None:
        """For files: wait until the packet's timestamp, counted from the first one, has come,
        as a camera would deliver it (every packet, so a looping file keeps its length)."""
        if not self.realtime:
            return
        if packet.pts is not None and packet.time_base is not None:
            media_t = float(packet.pts * packet.time_base)
        else:  # no timestamps: count packets at the stream's nominal rate
            media_t = self.packets / (self.get(cv2.CAP_PROP_FPS) or 25.0)
        now = time.monotonic()
        if self._media_t0 is None:
            self._media_t0, self._wall_t0 = media_t, now
            return
        delay = self._wall_t0 + (media_t - self._media_t0) - now
        if delay > 0:
            self._stop.wait(delay)


def _reason(exc: BaseException) -> str:
    """An FFmpeg error's own text, without the file name (a URL with credentials) that str() adds."""
    return str(getattr(exc, "strerror", None) or type(exc).__name__)


def open_keyframes(uri: str, *, display: str, is_file: bool, open_timeout_s: float,
                   read_timeout_s: float, stop: threading.Event | None = None) -> KeyframeSource:
    """Open ``uri`` for keyframe-only decoding (files played in real time)."""
    if is_file and not os.path.exists(uri):
        raise KeyframeOpenError(f"video file not found: {display}")
    return KeyframeSource(uri, display=display, realtime=is_file, open_timeout_s=open_timeout_s,
                          read_timeout_s=read_timeout_s, stop=stop)
