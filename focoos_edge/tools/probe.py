"""`focoos-edge probe`: check each camera, the inference endpoint and the broker, for people."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable

import cv2
import numpy as np

from focoos_edge.capture import (
    DEFAULT_IM_SIZE,
    CaptureOpenError,
    EncoderUnavailableError,
    FramePrep,
    JpegEncoder,
    ModelImSize,
    ScaledFrame,
    open_capture,
    resize_to_max_side,
)
from focoos_edge.config import Config
from focoos_edge.delivery import check_broker
from focoos_edge.inference import AuthError, FocoosClient, FocoosError, ModelNotFoundError
from focoos_edge.service import capture_settings, mqtt_settings


def fourcc_text(value: float) -> str:
    """OpenCV's FOURCC property as text ('h264', 'MJPG'...)."""
    code = int(value)
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return text.strip("\x00 ") if text.isprintable() and code else "unknown"


CAMERA_HINT = ("check the URL, the credentials and that the camera is reachable from this box "
               "(for RTSP: the path, and that TCP port 554 is open)")


def probe_camera(cam, out_dir: str, encoder: JpegEncoder, measure_s: float = 2.0) -> tuple[bool, str, bytes | None]:
    """Open one camera, read frames for `measure_s`, save one JPEG; returns (ok, report line, the
    frame as the daemon would upload it)."""
    settings = capture_settings(cam)
    try:
        cap = open_capture(settings)
    except (CaptureOpenError, cv2.error) as exc:
        return False, f"camera {cam.name}: FAILED: {exc}\n  fix: {CAMERA_HINT}", None
    try:
        # Streams start with a burst of buffered frames: measure the rate after a warm-up second.
        start = time.monotonic()
        times, frame = [], None
        while time.monotonic() - start < measure_s + 1.0:
            ok, img = cap.read()
            if not ok:
                break
            frame = img
            times.append(time.monotonic())
        if frame is None:
            return False, (f"camera {cam.name}: FAILED: opened {settings.source.display} but read no frame"
                           f"\n  fix: {CAMERA_HINT}"), None
        steady = [t for t in times if t - start >= 1.0]
        fps = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 2 else 0.0
        h, w = frame.shape[:2]
        path = os.path.join(out_dir, f"{cam.name}.jpg")
        saved, upload = probe_images(cam, frame, encoder)
        save_private(path, saved)
        return True, (f"camera {cam.name}: ok, {settings.source.display}, codec "
                      f"{fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))}, {w}x{h}, stream fps "
                      f"{cap.get(cv2.CAP_PROP_FPS):.1f}, measured {fps:.1f} fps, saved {path}"), upload
    finally:
        cap.release()


def check_out_dir(out_dir: str) -> str | None:
    """Create `out_dir` (0700) if missing; refuse one that another user owns (its owner could plant
    links there, and would read camera frames). None when it is fine, else why not."""
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    st = os.stat(out_dir)
    if st.st_uid != os.geteuid():
        return (f"{out_dir} belongs to another user (uid {st.st_uid}); camera frames are written only "
                "into a folder of yours: choose another --out")
    return None


def save_private(path: str, data: bytes) -> None:
    """Write `data` to `path` (mode 0600) through a new temporary file renamed over it: the rename
    replaces a symlink at `path` instead of following it, so no other file is ever overwritten."""
    fd, tmp = tempfile.mkstemp(prefix=".probe-", suffix=".jpg", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp: O_CREAT | O_EXCL, mode 0600
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def probe_images(cam, frame: np.ndarray, encoder: JpegEncoder,
                 im_size: int = DEFAULT_IM_SIZE) -> tuple[bytes, bytes]:
    """The full-size picture the probe saves and the JPEG the daemon would upload, both with the
    camera's privacy masks filled black (the upload also cropped); auto sizes with `im_size`."""
    full = FramePrep(cam.privacy_masks).apply(ScaledFrame(frame.copy(), frame.shape[1], frame.shape[0], 1.0),
                                              max(frame.shape[:2]))
    small, scale = resize_to_max_side(frame, FramePrep(crop=cam.crop).source_side(cam.fixed_max_side or im_size))
    prep = FramePrep(cam.privacy_masks, cam.crop)
    upload = prep.apply(ScaledFrame(small.copy(), frame.shape[1], frame.shape[0], scale),
                        cam.fixed_max_side or im_size)
    return encoder.encode(full.image, 90), encoder.encode(upload.image, cam.jpeg_quality)


def inference_hint(exc: FocoosError) -> str:
    """What to fix for an inference failure."""
    if isinstance(exc, AuthError):
        return "check inference.api_key / api_key_file (the key of your Focoos account)"
    if isinstance(exc, ModelNotFoundError):
        return "check inference.model_ref: the model's reference in Focoos HUB"
    return "check inference.api_url and that this box reaches it (DNS, proxy, firewall)"


def probe_inference(config: Config, jpeg: bytes) -> tuple[bool, str]:
    """Model info, then one timed inference of `jpeg`."""
    inf = config.inference
    client = FocoosClient(inf.api_url, inf.api_key_value, timeout_s=inf.timeout_s)
    try:
        info = client.model_info(inf.model_ref)
        result = client.infer(inf.model_ref, jpeg, inf.threshold)
    except FocoosError as exc:
        return False, f"inference {inf.api_url}: FAILED: {exc}\n  fix: {inference_hint(exc)}"
    finally:
        client.close()
    ready = "ready" if info.ready else "NOT READY (training or deploy not finished)"
    sides = ", ".join(f"{c.name} {c.fixed_max_side or upload_side(info)} px"
                      + ("" if c.fixed_max_side else " (auto)") for c in config.cameras)
    return info.ready, (f"inference {inf.api_url}: model {info.ref} ({info.task}, {len(info.classes)} "
                        f"classes, im_size {info.im_size or 'not given'}, status {info.status}: {ready}); "
                        f"uploads: {sides}; one inference in "
                        f"{result.round_trip_s * 1000:.0f} ms, {len(result.detections)} detections")


def upload_side(info) -> int:
    """The long side of uploads with max_side: auto for this model."""
    holder = ModelImSize()
    holder.set(info.im_size)
    return holder.side


def probe_broker(config: Config) -> tuple[bool, str]:
    settings = mqtt_settings(config)
    error = check_broker(settings)
    where = f"mqtt {settings.host}:{settings.port}"
    if error:
        return False, f"{where}: FAILED: {error}\n  fix: check mqtt.host, mqtt.port, credentials and TLS settings"
    return True, f"{where}: ok"


def run_probe(config: Config, camera: str | None, out_dir: str, print_fn: Callable[[str], None]) -> int:
    """Run every check, print one line each; 0 when all passed, 1 otherwise."""
    cams = [c for c in config.cameras if camera in (None, c.name)]
    if not cams:
        print_fn(f"no camera named {camera!r} (have: {', '.join(c.name for c in config.cameras)})")
        return 1
    try:
        encoder = JpegEncoder()
    except EncoderUnavailableError as exc:
        print_fn(f"jpeg: FAILED: {exc}")
        return 1
    problem = check_out_dir(out_dir)
    if problem:
        print_fn(f"probe --out: {problem}")
        return 1
    cam_results = [probe_camera(c, out_dir, encoder) for c in cams]
    # The timed inference uses a real frame when a camera gave one, else a grey 640x360 frame.
    jpeg = next((j for _, _, j in cam_results if j), None) or \
        encoder.encode(np.full((360, 640, 3), 128, np.uint8), 80)
    results = [(ok, line) for ok, line, _ in cam_results]
    results += [probe_inference(config, jpeg), probe_broker(config)]
    for _, line in results:
        print_fn(line)
    failed = sum(not ok for ok, _ in results)
    print_fn("probe: all checks passed" if not failed else f"probe: {failed} check(s) failed")
    return 0 if not failed else 1
