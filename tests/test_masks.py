"""Segmentation masks and keypoints: decoding (bounded), tracing, mapping, end to end."""

from __future__ import annotations

import base64
import struct
import zlib

import cv2
import numpy as np
import pytest
from daemon_infra import KEY, TOPIC, daemon_command, daemon_config, stop_daemon

from focoos_edge.capture.encode import FrameJob
from focoos_edge.inference.geometry import scale_detections
from focoos_edge.inference.masks import trace_masks
from focoos_edge.inference.parse import Detection


def _png_b64(mask: np.ndarray) -> str:
    ok, png = cv2.imencode(".png", mask)
    assert ok
    return base64.b64encode(png.tobytes()).decode()


def _declaring(width: int, height: int, pad: int) -> str:
    """A PNG whose IHDR declares width x height, padded with junk to `pad` bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    data = b"\x89PNG\r\n\x1a\n" + chunk
    return base64.b64encode(data + b"\0" * (pad - len(data))).decode()


def _job(scale: float = 0.5, offset=(0.0, 0.0)) -> FrameJob:
    return FrameJob(camera="c", frame_id="f", captured_at_ns=0, captured_mono=0.0, width=1280, height=720,
                    scale=scale, jpeg=b"x", offset_x=offset[0], offset_y=offset[1])


def test_a_bbox_cropped_mask_is_traced_and_mapped_to_frame_pixels() -> None:
    mask = np.zeros((41, 61), np.uint8)
    cv2.rectangle(mask, (10, 5), (50, 35), 255, cv2.FILLED)
    det = Detection("a", 0, 0.9, (100.0, 50.0, 160.0, 90.0), has_mask=True, mask_png=_png_b64(mask),
                    keypoints=((110.0, 55.0, 0.8),))
    (traced,) = trace_masks([det], polygons=True, upload_w=640, upload_h=360)
    (out,) = scale_detections([traced], _job(scale=0.5, offset=(10.0, 20.0)))
    (poly,) = out.mask
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    # Upload (100 + 10..50, 50 + 5..35) -> frame (x / 0.5 + 10, y / 0.5 + 20).
    assert (min(xs), max(xs), min(ys), max(ys)) == (230.0, 310.0, 130.0, 190.0)
    assert len(poly) == 4  # a rectangle simplifies to its corners
    assert out.keypoints == ((230.0, 130.0, 0.8),) and out.broken == ()


def test_a_full_frame_mask_from_an_older_server_keeps_its_origin() -> None:
    mask = np.zeros((360, 640), np.uint8)
    cv2.rectangle(mask, (100, 50), (160, 90), 255, cv2.FILLED)
    det = Detection("a", 0, 0.9, (100.0, 50.0, 160.0, 90.0), has_mask=True, mask_png=_png_b64(mask))
    (traced,) = trace_masks([det], polygons=True, upload_w=640, upload_h=360)
    xs = [p[0] for p in traced.mask[0]]
    assert (min(xs), max(xs)) == (100.0, 160.0)


@pytest.mark.parametrize("bad", [
    "not base64 at all!", base64.b64encode(b"GIF89a not a png").decode(), _declaring(20000, 20000, 519 * 1024),
    _png_b64(np.zeros((40, 60), np.uint8)),  # empty
    _declaring(60, 40, 200),  # a header and no image data
])
def test_a_malformed_mask_drops_the_mask_and_keeps_the_detection(bad: str) -> None:
    det = Detection("a", 0, 0.9, (100.0, 50.0, 160.0, 90.0), has_mask=True, mask_png=bad)
    (out,) = trace_masks([det], polygons=True, upload_w=640, upload_h=360)
    assert out.mask is None and out.broken == ("mask",) and out.bbox == det.bbox


def test_masks_none_decodes_nothing() -> None:
    det = Detection("a", 0, 0.9, (1.0, 1.0, 9.0, 9.0), has_mask=True, mask_png="not base64!")
    (out,) = trace_masks([det], polygons=False, upload_w=64, upload_h=64)
    assert out.mask is None and out.broken == ()


@pytest.mark.parametrize("point", [(float("nan"), 5.0, 1.0), (1400.0, 5.0, 1.0), (5.0, -40.0, 1.0)])
def test_keypoints_outside_the_frame_are_dropped_and_counted(point) -> None:
    det = Detection("a", 0, 0.9, (1.0, 1.0, 9.0, 9.0), keypoints=((2.0, 2.0, 1.0), point))
    (out,) = scale_detections([det], _job(scale=1.0))
    assert out.keypoints is None and out.broken == ("keypoints",) and out.bbox == (1.0, 1.0, 9.0, 9.0)


def test_segmentation_masks_end_to_end_in_frame_pixels(marker_clip, mosquitto, mqtt_sub, spawn, tmp_path) -> None:
    """Local segmentation model, 1920x1080 clip uploaded at 640 px: every polygon point lies in its
    box (within 2 px), its area matches the drawn marker's within 10 %, keypoints at its corners."""
    from focoos_edge.tools.localserver import LocalServer

    server = LocalServer(port=0, api_key=KEY)
    server.start()
    try:
        sub = mqtt_sub(mosquitto.port, "focoos/#")
        config = daemon_config(tmp_path, api_url=server.url, mqtt_port=mosquitto.port, model_ref="local-aruco-seg",
                               cameras=[{"name": "cam", "source": f"file://{marker_clip.path}", "sample_fps": 2,
                                         "snapshot": {"min_interval_s": 0}}])
        daemon = spawn(daemon_command(config), name="daemon")
        msg = sub.wait_for(lambda m: m.topic == f"{TOPIC}/cam/detections" and len(m.json()["detections"]) == 3,
                           60, "detections with masks").json()
        sub.wait_for(lambda m: m.topic == f"{TOPIC}/cam/snapshot", 30, "snapshot")
        stop_daemon(daemon, sub)  # every message validated against the schemas
    finally:
        server.stop()
    drawn = {m.id: m for m in marker_clip.markers}
    for det in msg["detections"]:
        marker = drawn[det["cls_id"]]
        x1, y1, x2, y2 = det["bbox"]
        (poly,) = det["mask"]
        assert all(x1 - 2 <= x <= x2 + 2 and y1 - 2 <= y <= y2 + 2 for x, y in poly), (det["bbox"], poly)
        area = cv2.contourArea(np.asarray(poly, np.float32))
        assert area == pytest.approx(marker.size ** 2, rel=0.10), (marker, area)
        assert len(det["keypoints"]) == 4
        corners = {(marker.x, marker.y), (marker.x + marker.size, marker.y + marker.size)}
        for cx, cy in corners:
            assert min(abs(p[0] - cx) + abs(p[1] - cy) for p in det["keypoints"]) < 10


def test_malformed_masks_and_keypoints_from_a_server_are_counted_not_fatal(marker_clip, mosquitto, mqtt_sub, spawn,
                                                                          tmp_path) -> None:
    """A reply with a mask that is not a PNG and keypoints that are not triples: the detections are
    published without the broken parts (valid payloads) and counted in errors.malformed_mask."""
    import httpfault

    info = httpfault.json(200, {"ref": "local-aruco", "task": "instseg", "status": "DEPLOYED", "classes": ["a"]})
    reply = httpfault.json(200, {"detections": [
        {"bbox": [10, 10, 50, 50], "conf": 0.9, "cls_id": 0, "label": "a", "mask": "bm90IGEgcG5n"},
        {"bbox": [60, 60, 90, 90], "conf": 0.8, "cls_id": 0, "label": "a", "keypoints": [[1, 2], [3, 4]]},
        {"bbox": [5, 5, 9, 9], "conf": 0.7, "cls_id": 0, "label": "a", "mask": _declaring(20000, 20000, 4096)}]})
    with httpfault.FaultServer() as server:
        server.default = lambda h: (info if h.command == "GET" else reply)(h)
        sub = mqtt_sub(mosquitto.port, "focoos/#")
        config = daemon_config(tmp_path, api_url=server.url, mqtt_port=mosquitto.port,
                               cameras=[{"name": "cam", "source": f"file://{marker_clip.path}", "sample_fps": 2}])
        daemon = spawn(daemon_command(config), name="daemon")
        msg = sub.wait_for(lambda m: m.topic == f"{TOPIC}/cam/detections", 60, "detections").json()
        stats = sub.wait_for(lambda m: m.topic == f"{TOPIC}/stats"
                             and m.json()["cameras"]["cam"]["errors"].get("malformed_mask", 0) >= 3, 30,
                             "malformed masks counted").json()
        stop_daemon(daemon, sub)  # every payload valid against the schema
    assert len(msg["detections"]) == 3
    assert all("mask" not in d and "keypoints" not in d for d in msg["detections"])
    assert stats["cameras"]["cam"]["errors"]["malformed_mask"] % 3 == 0 and daemon.returncode == 0
