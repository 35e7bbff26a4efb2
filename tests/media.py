"""Test media generated at test time (none is committed): ArUco marker clips and testsrc2 clips.

Clips are H.264 (libx264, yuv420p, no B-frames so that tests/rtsp_server.py can re-stamp them)
in MP4 with ``+faststart``. Long clips are cheap: one short unit is encoded (one GOP for a static
picture, one sway period for a moving one) and then repeated with ``-stream_loop`` and stream
copy, so a 40 s 1080p clip costs about as much as one second of encoding.
"""

from __future__ import annotations

import math
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ARUCO_DICT = cv2.aruco.DICT_4X4_50
BACKGROUND_GREY = 200
FFMPEG_TIMEOUT_S = 300.0
FFMPEG_MISSING = "ffmpeg not found: install it with `apt-get install -y ffmpeg`"


class MediaError(RuntimeError):
    """ffmpeg failed (the message carries its stderr tail)."""


@dataclass(frozen=True)
class Marker:
    """An ArUco DICT_4X4_50 marker drawn with its top-left corner at (x, y), ``size`` px wide.

    The size includes the marker's black border; a white quiet zone is drawn around it.
    """

    id: int
    x: int
    y: int
    size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2) of the marker in the frame it was drawn into (motion=False)."""
        return (self.x, self.y, self.x + self.size, self.y + self.size)

    def quiet_zone_px(self) -> int:
        """Width of the white margin drawn around the marker."""
        return max(4, self.size // 5)


def draw_marker_frame(
    width: int, height: int, markers: Iterable[Marker | tuple[int, int, int, int]], dx: int = 0
) -> np.ndarray:
    """A BGR frame: grey background, each marker on a white quiet zone, shifted ``dx`` px."""
    frame = np.full((height, width, 3), BACKGROUND_GREY, np.uint8)
    dictionary = cv2.aruco.getPredefinedDictionary(ARUCO_DICT)
    for marker in map(_as_marker, markers):
        x, y, size, pad = marker.x + dx, marker.y, marker.size, marker.quiet_zone_px()
        if x - pad < 0 or y - pad < 0 or x + size + pad > width or y + size + pad > height:
            raise ValueError(f"marker {marker} (shifted {dx} px) does not fit in {width}x{height}")
        frame[y - pad : y + size + pad, x - pad : x + size + pad] = 255
        image = cv2.aruco.generateImageMarker(dictionary, marker.id, size)
        frame[y : y + size, x : x + size] = image[:, :, None]
    return frame


def sway_offset_px(frame_index: int, fps: int, motion_px: int, period_s: float) -> int:
    """Horizontal marker offset in frame ``frame_index`` of a motion clip (a sine sway)."""
    return round(motion_px * math.sin(2 * math.pi * frame_index / (fps * period_s)))


def make_marker_clip(
    path: Path,
    width: int = 1920,
    height: int = 1080,
    fps: int = 25,
    seconds: int = 30,
    markers: Sequence[Marker | tuple[int, int, int, int]] = (),
    gop: int | None = None,
    motion: bool = False,
    motion_px: int = 40,
    period_s: int = 4,
) -> Path:
    """Encode a clip of ArUco markers on a grey background and return ``path``.

    Static by default (markers exactly at ``Marker.box``). With ``motion=True`` the markers
    sway horizontally by ``sway_offset_px`` (period ``period_s``, a whole number of seconds);
    leave ``motion_px`` of room on both sides.
    """
    gop = gop or fps
    markers = [_as_marker(m) for m in markers]
    unit_frames = fps * period_s if motion else gop
    if seconds * fps % unit_frames:
        raise ValueError(f"{seconds} s at {fps} fps is not a whole number of {unit_frames} frames")
    # Drawn before ffmpeg starts, so that a marker that does not fit fails here.
    picture = draw_marker_frame(width, height, markers, -motion_px if motion else 0)
    if motion:
        draw_marker_frame(width, height, markers, motion_px)
        frames: Iterable[np.ndarray] = (
            draw_marker_frame(width, height, markers, sway_offset_px(i, fps, motion_px, period_s))
            for i in range(unit_frames)
        )
    else:
        frames = (picture for _ in range(unit_frames))
    with tempfile.TemporaryDirectory(prefix="marker-clip-") as tmp:
        unit = Path(tmp) / "unit.mp4"
        _encode_raw(frames, unit, (width, height), fps, gop)
        _repeat(unit, Path(path), seconds * fps // unit_frames)
    return Path(path)


def make_test_clip(
    path: Path, width: int, height: int, fps: int, seconds: int, gop: int | None = None
) -> Path:
    """Encode ffmpeg's moving ``testsrc2`` pattern (with a frame counter) and return ``path``."""
    source = f"testsrc2=size={width}x{height}:rate={fps}"
    _ffmpeg(["-f", "lavfi", "-i", source, "-t", str(seconds), *_x264_args(gop or fps), str(path)])
    return Path(path)


def detect_markers(frame: np.ndarray) -> dict[int, np.ndarray]:
    """ArUco DICT_4X4_50 detections in a BGR frame: id -> 4x2 corners (TL, TR, BR, BL)."""
    detector = cv2.aruco.ArucoDetector(
        cv2.aruco.getPredefinedDictionary(ARUCO_DICT), cv2.aruco.DetectorParameters()
    )
    corners, ids, _rejected = detector.detectMarkers(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    if ids is None:
        return {}
    return {int(i): c.reshape(4, 2) for i, c in zip(ids.flatten(), corners, strict=True)}


def read_frames(path_or_url: str | Path, count: int, timeout_s: float = 20.0) -> list[np.ndarray]:
    """Read up to ``count`` frames with cv2's FFmpeg backend (file or RTSP).

    Returns fewer (maybe none) if the source cannot be opened, ends, or stalls ``timeout_s``.
    """
    timeout_ms = int(timeout_s * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms]
    params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
    cap = cv2.VideoCapture(str(path_or_url), cv2.CAP_FFMPEG, params)
    frames: list[np.ndarray] = []
    try:
        while cap.isOpened() and len(frames) < count:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    return frames


def _as_marker(marker: Marker | tuple[int, int, int, int]) -> Marker:
    return marker if isinstance(marker, Marker) else Marker(*marker)


def _x264_args(gop: int) -> list[str]:
    # -bf 0: the RTSP server re-stamps access units in decode order, which is only right
    # without B-frames (IP cameras rarely use them either). yuv420p: what every decoder takes.
    return [
        "-c:v", "libx264", "-preset", "veryfast", "-bf", "0", "-g", str(gop),
        "-keyint_min", str(gop), "-pix_fmt", "yuv420p", "-movflags", "+faststart",
    ]


def _encode_raw(
    frames: Iterable[np.ndarray], out: Path, size: tuple[int, int], fps: int, gop: int
) -> None:
    """Pipe raw BGR frames into ffmpeg."""
    raw_input = ["-f", "rawvideo", "-pix_fmt", "bgr24", "-s", "{}x{}".format(*size)]
    raw_input += ["-r", str(fps), "-i", "-"]
    with tempfile.TemporaryFile() as err:
        proc = _popen_ffmpeg(["-v", "error", "-y", *raw_input, *_x264_args(gop), str(out)], err)
        try:
            for frame in frames:
                proc.stdin.write(frame.tobytes())
        except BrokenPipeError:
            pass  # ffmpeg died: its status and stderr say why
        except BaseException:
            proc.kill()
            raise
        finally:
            proc.stdin.close()
            code = proc.wait(timeout=FFMPEG_TIMEOUT_S)
        if code != 0:
            err.seek(0)
            raise MediaError(f"ffmpeg encoding {out} failed ({code}): {_tail(err.read())}")


def _repeat(unit: Path, out: Path, times: int) -> None:
    """Concatenate ``times`` copies of ``unit`` without re-encoding."""
    loop = ["-stream_loop", str(times - 1), "-i", str(unit)]
    _ffmpeg([*loop, "-c", "copy", "-movflags", "+faststart", str(out)])


def _popen_ffmpeg(args: list[str], err: object) -> subprocess.Popen:
    try:
        return subprocess.Popen(
            ["ffmpeg", *args], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err
        )
    except FileNotFoundError as exc:
        raise MediaError(FFMPEG_MISSING) from exc


def _ffmpeg(args: list[str]) -> None:
    try:
        done = subprocess.run(
            ["ffmpeg", "-v", "error", "-y", *args],
            capture_output=True,
            timeout=FFMPEG_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise MediaError(FFMPEG_MISSING) from exc
    if done.returncode != 0:
        command = " ".join(args)
        raise MediaError(f"ffmpeg {command} failed ({done.returncode}): {_tail(done.stderr)}")


def _tail(stderr: bytes) -> str:
    return stderr[-2000:].decode("utf-8", errors="replace").strip()
