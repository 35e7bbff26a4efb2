"""`focoos-edge probe`: check each camera, the inference endpoint and the broker, for people."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import cv2

from focoos_edge.capture import CaptureOpenError, open_capture
from focoos_edge.config import Config
from focoos_edge.daemon import capture_settings, mqtt_settings
from focoos_edge.encode import EncoderUnavailableError, JpegEncoder
from focoos_edge.focoos import FocoosClient, FocoosError
from focoos_edge.publish import check_broker


def fourcc_text(value: float) -> str:
    """OpenCV's FOURCC property as text ('h264', 'MJPG'...)."""
    code = int(value)
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return text.strip("\x00 ") if text.isprintable() and code else "unknown"


def probe_camera(cam, out_dir: str, encoder: JpegEncoder, measure_s: float = 2.0) -> tuple[bool, str]:
    """Open one camera, read frames for `measure_s`, save one JPEG; returns (ok, report line)."""
    settings = capture_settings(cam)
    try:
        cap = open_capture(settings)
    except (CaptureOpenError, cv2.error) as exc:
        return False, f"camera {cam.name}: FAILED: {exc}"
    try:
        start = time.monotonic()
        frames, frame = 0, None
        while time.monotonic() - start < measure_s:
            ok, img = cap.read()
            if not ok:
                break
            frames, frame = frames + 1, img
        if frame is None:
            return False, f"camera {cam.name}: FAILED: opened {settings.source.display} but read no frame"
        elapsed = time.monotonic() - start
        h, w = frame.shape[:2]
        path = os.path.join(out_dir, f"{cam.name}.jpg")
        with open(path, "wb") as f:
            f.write(encoder.encode(frame, 90))
        return True, (f"camera {cam.name}: ok, {settings.source.display}, codec "
                      f"{fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))}, {w}x{h}, stream fps "
                      f"{cap.get(cv2.CAP_PROP_FPS):.1f}, read {frames / elapsed:.1f} fps, saved {path}")
    finally:
        cap.release()


def probe_inference(config: Config) -> tuple[bool, str]:
    inf = config.inference
    client = FocoosClient(inf.api_url, inf.api_key_value, timeout_s=inf.timeout_s)
    try:
        info = client.model_info(inf.model_ref)
    except FocoosError as exc:
        return False, f"inference {inf.api_url}: FAILED: {exc}"
    finally:
        client.close()
    ready = "ready" if info.ready else "NOT READY"
    return info.ready, (f"inference {inf.api_url}: model {info.ref} ({info.task}, {len(info.classes)} "
                        f"classes, status {info.status}: {ready})")


def probe_broker(config: Config) -> tuple[bool, str]:
    settings = mqtt_settings(config)
    error = check_broker(settings)
    where = f"mqtt {settings.host}:{settings.port}"
    return (False, f"{where}: FAILED: {error}") if error else (True, f"{where}: ok")


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
    os.makedirs(out_dir, exist_ok=True)
    results = [probe_camera(c, out_dir, encoder) for c in cams]
    results += [probe_inference(config), probe_broker(config)]
    for _, line in results:
        print_fn(line)
    return 0 if all(ok for ok, _ in results) else 1
