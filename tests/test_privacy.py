"""Privacy masks, crop and max_side: auto, with the real daemon: decode what the server received."""

from __future__ import annotations

import cv2
import httpfault
import numpy as np
import pytest
from daemon_infra import KEY, TOPIC, daemon_command, daemon_config, stop_daemon
from procs import wait_until

MASK = [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.5]]  # the top-left quarter
CROP = [0.5, 0.0, 1.0, 1.0]  # the right half


def _decode(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def _model_server(im_size: int):
    """Model info (im_size) on GET; on POST a box covering the whole upload when it is not 16:9
    (the cropped camera), else a box in the bottom-right quarter (away from the mask)."""
    info = httpfault.json(200, {"ref": "local-aruco", "name": "x", "task": "detection",
                                "status": "TRAINING_COMPLETED", "classes": ["person"], "im_size": im_size})

    def run(h) -> None:
        if h.command == "GET":
            return info(h)
        mine = [r for r in h.server._records if r.client_port == h.client_address[1]][-1]  # this connection's
        parts = httpfault.multipart_parts(mine)
        height, width = _decode(parts[0].data).shape[:2]
        whole = abs(width / height - 16 / 9) > 0.05
        box = [0, 0, width, height] if whole else [0.6 * width, 0.6 * height, 0.9 * width, 0.9 * height]
        httpfault.json(200, {"detections": [{"bbox": box, "conf": 0.9, "cls_id": 0, "label": "person"}]})(h)

    return run


def _uploads(server) -> list[np.ndarray]:
    return [_decode(httpfault.multipart_parts(r)[0].data) for r in server.requests if r.method == "POST"]


def test_masked_cropped_and_auto_sized_uploads(marker_clip, mosquitto, mqtt_sub, spawn, tmp_path):
    with httpfault.FaultServer() as server:
        server.default = _model_server(im_size=512)
        sub = mqtt_sub(mosquitto.port, "focoos/#")
        source = f"file://{marker_clip.path}"
        config = daemon_config(tmp_path, api_url=server.url, mqtt_port=mosquitto.port, api_key=KEY, cameras=[
            {"name": "masked", "source": source, "sample_fps": 2, "privacy_masks": [MASK],
             "snapshot": {"min_interval_s": 0}},
            {"name": "cropped", "source": source, "sample_fps": 2, "crop": CROP, "labels": ["person", "preson"]}])
        daemon = spawn(daemon_command(config), name="daemon")
        cropped = sub.wait_for(lambda m: m.topic == f"{TOPIC}/cropped/detections", 60, "cropped result").json()
        snap = sub.wait_for(lambda m: m.topic == f"{TOPIC}/masked/snapshot", 60, "snapshot").payload_bytes
        state = sub.wait_for(lambda m: m.topic == f"{TOPIC}/inference" and m.json()["state"] == "ok", 10, "ok")
        uploads = _uploads(server)
        stop_daemon(daemon, sub)

    # A label the model lacks is reported, with the closest class, in the retained inference state.
    assert state.json()["config_warnings"] == [
        "camera cropped: labels: 'preson' is not a class of model local-aruco (closest: person)"]
    assert "'preson' is not a class" in daemon.stderr_text()

    # max_side: auto -> the model's im_size (512) on the long side, for both cameras.
    full = [u for u in uploads if u.shape[:2] == (288, 512)]
    crops = [u for u in uploads if u.shape[:2] != (288, 512)]
    assert full and crops, [u.shape for u in uploads]
    # The crop's upload has the crop's aspect (960 x 1080 of the frame) and 512 px on its long side.
    for img in crops:
        assert img.shape[0] == 512 and img.shape[1] == pytest.approx(512 * 960 / 1080, abs=1)
    # The masked quarter is black in what the server received; the rest is not.
    for img in full:
        assert img[:140, :252].max() <= 16, img[:140, :252].max()
        assert img[150:, :].mean() > 60 and img[:, 260:].mean() > 60
    # A box covering the whole cropped upload comes back as the crop rectangle, in frame pixels.
    (det,) = cropped["detections"]
    assert (cropped["width"], cropped["height"]) == (1920, 1080)
    assert det["bbox"] == pytest.approx([960, 0, 1920, 1080], abs=2.5)
    # The snapshot (drawn on the upload) is masked too.
    shot = _decode(snap)
    h, w = shot.shape[:2]
    quarter = shot[:int(h * 0.48), :int(w * 0.48)]
    assert quarter.max() <= 16 and shot[int(h * 0.52):, :int(w * 0.48)].mean() > 60


def test_a_model_that_is_not_ready_gets_no_frames_until_it_is(marker_clip, mosquitto, mqtt_sub, spawn, tmp_path):
    """model_not_ready: frames are spooled (no upload, none dropped), the model re-checked with backoff,
    and the spooled frames are sent once it is ready."""
    status = {"now": "TRAINING_RUNNING"}

    def run(h) -> None:
        if h.command == "GET":
            return httpfault.json(200, {"ref": "local-aruco", "task": "detection", "status": status["now"],
                                        "classes": ["person"], "im_size": 320})(h)
        httpfault.json(200, {"detections": [{"bbox": [1, 1, 9, 9], "conf": 0.9, "cls_id": 0, "label": "person"}]})(h)

    with httpfault.FaultServer() as server:
        server.default = run
        sub = mqtt_sub(mosquitto.port, "focoos/#")
        config = daemon_config(tmp_path, api_url=server.url, mqtt_port=mosquitto.port, cameras=[
            {"name": "cam", "source": f"file://{marker_clip.path}", "sample_fps": 4}])
        daemon = spawn(daemon_command(config), name="daemon")
        sub.wait_for(lambda m: m.topic == f"{TOPIC}/inference" and m.json()["state"] == "model_not_ready", 30,
                     "model_not_ready")
        sub.wait_for(lambda m: m.topic == f"{TOPIC}/stats" and m.json()["cameras"]["cam"]["spooled"] >= 3, 30,
                     "frames spooled")
        wait_until(lambda: len([r for r in server.requests if r.method == "GET"]) >= 2, 20)  # re-checked
        assert not [r for r in server.requests if r.method == "POST"]
        status["now"] = "DEPLOYED"
        replayed = sub.wait_for(lambda m: m.topic == f"{TOPIC}/cam/detections" and m.json()["replayed"], 60,
                                "a spooled frame sent once the model is ready").json()
        final = stop_daemon(daemon, sub)
    assert replayed["detections"][0]["label"] == "person"
    assert final["cameras"]["cam"]["evicted"] == final["cameras"]["cam"]["dead_lettered"] == 0
