"""Tests for the Focoos-compatible local server: a real server on a free loopback port, real HTTP."""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import logging
import re
import socket
import threading
import time
from datetime import datetime

import cv2
import numpy as np
import pytest
import requests

from focoos_edge.cli import add_local_server_arguments
from focoos_edge.tools.account import Quota
from focoos_edge.tools.aruco import CLASSES, draw_markers
from focoos_edge.tools.limits import MAX_BODY_BYTES
from focoos_edge.tools.localserver import LocalServer, run_from_args

KEY = "local-test-key-0123"
MODEL = "local-aruco"
# (id, x, y, size) in a 1280x720 frame; TESTING.md: all found at half these positions at 640x360.
MARKERS = [(0, 100, 100, 120), (7, 500, 300, 120), (23, 1000, 500, 120), (49, 60, 560, 120)]


@pytest.fixture
def server():
    srv = LocalServer(port=0, api_key=KEY)
    srv.start()
    yield srv
    srv.stop()


def _frame_jpeg(markers, size=(1280, 720), scale_to=(640, 360), quality=80) -> bytes:
    frame = np.full((size[1], size[0], 3), 255, np.uint8)
    draw_markers(frame, markers)
    small = cv2.resize(frame, scale_to, interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return jpeg.tobytes()


def _infer(base_url, jpeg, threshold=None, key=KEY, session=None, model=MODEL):
    params = {} if threshold is None else {"confidence_threshold": threshold}
    http = session or requests
    return http.post(f"{base_url}/models/{model}/inference", params=params,
                     headers={"X-API-Key": key}, files={"file": ("image", jpeg, "image/jpeg")}, timeout=10)


def test_model_info(server):
    for path in (f"/models/{MODEL}", f"/models/{MODEL}/"):
        resp = requests.get(server.url + path, headers={"X-API-Key": KEY}, timeout=5)
        assert resp.status_code == 200
        info = resp.json()
        assert info["ref"] == MODEL and info["task"] == "detection"
        assert info["status"] == "TRAINING_COMPLETED"
        assert info["classes"] == [f"aruco_{i}" for i in range(50)]
        assert info["im_size"] == 640
    assert server.url == f"http://127.0.0.1:{server.port}/v0"


def test_models_list_and_user(server):
    models = requests.get(server.url + "/models/", headers={"X-API-Key": KEY}, timeout=5).json()
    assert [(m["ref"], m["task"]) for m in models] == [
        (MODEL, "detection"), ("local-aruco-seg", "instseg"), ("local-aruco-kp", "keypoint"),
        ("local-aruco-cls", "classification")]
    assert set(models[0]) >= {"ref", "name", "task", "description", "status", "focoos_model"}
    user = requests.get(server.url + "/user/", headers={"X-API-Key": KEY}, timeout=5).json()
    # Every field the Focoos SDK (v0.25.0) requires when FocoosHUB() is created, with its type.
    assert {k: type(v) for k, v in user.items()} == {
        "email": str, "created_at": str, "updated_at": str, "company": type(None), "api_key": dict, "quotas": dict}
    assert datetime.fromisoformat(user["created_at"].replace("Z", "+00:00"))
    assert isinstance(user["api_key"]["key"], str) and KEY not in json.dumps(user)
    assert {k: type(v) for k, v in user["quotas"].items()} == {
        "total_inferences": int, "max_inferences": int, "used_storage_gb": float, "max_storage_gb": float,
        "active_training_jobs": list, "max_active_training_jobs": int,
        "used_mlg4dnxlarge_training_jobs_hours": float, "max_mlg4dnxlarge_training_jobs_hours": float}
    assert user["quotas"]["total_inferences"] == 0
    assert _infer(server.url, _frame_jpeg(MARKERS[:1])).status_code == 200
    user = requests.get(server.url + "/user", headers={"X-API-Key": KEY}, timeout=5).json()
    assert user["quotas"]["total_inferences"] == 1


def test_unknown_model_is_404(server):
    resp = requests.get(server.url + "/models/nope", headers={"X-API-Key": KEY}, timeout=5)
    assert resp.status_code == 404
    assert resp.json() == {"detail": "Model not found"}
    assert _infer(server.url, _frame_jpeg([]), model="nope").status_code == 404


def _raw_get_status(port: int, path: str, headers: dict) -> int:
    """GET with http.client, which (unlike requests) lets a header value be only spaces."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": ""}, {"X-API-Key": "wrong"},
                                     {"Authorization": "Bearer wrong"}, {"Authorization": KEY}])
def test_bad_or_missing_key_is_401(server, headers):
    resp = requests.get(f"{server.url}/models/{MODEL}", headers=headers, timeout=5)
    assert resp.status_code == 401
    assert resp.json() == {"detail": "Invalid API key"}
    assert server.stats.auth_failures == 1


def test_legacy_bearer_key_accepted(server):
    resp = requests.get(f"{server.url}/models/{MODEL}", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert resp.status_code == 200
    assert server.stats.auth_failures == 0


def test_without_configured_key_any_non_blank_key_works():
    srv = LocalServer(port=0)
    srv.start()
    try:
        ok = requests.get(f"{srv.url}/models/{MODEL}", headers={"X-API-Key": "anything"}, timeout=5)
        blank = _raw_get_status(srv.port, f"/v0/models/{MODEL}", {"X-API-Key": "   "})
        blank_bearer = _raw_get_status(srv.port, f"/v0/models/{MODEL}", {"Authorization": "Bearer   "})
    finally:
        srv.stop()
    assert (ok.status_code, blank, blank_bearer) == (200, 401, 401)


def test_markers_detected_at_half_their_drawn_position(server):
    resp = _infer(server.url, _frame_jpeg(MARKERS))
    assert resp.status_code == 200
    body = resp.json()
    assert set(body["latency"]) == {"imload", "preprocess", "inference", "postprocess"}
    found = {d["cls_id"]: d for d in body["detections"]}
    assert sorted(found) == sorted(m[0] for m in MARKERS)
    for marker_id, x, y, size in MARKERS:
        det = found[marker_id]
        assert det["label"] == f"aruco_{marker_id}" == CLASSES[marker_id]
        assert 0.5 < det["conf"] <= 1.0
        expected = [x / 2, y / 2, (x + size) / 2, (y + size) / 2]
        assert det["bbox"] == pytest.approx(expected, abs=2), (marker_id, det["bbox"])
        assert all(round(v, 1) == v for v in det["bbox"])
    assert server.stats.inferences == 1


def _degraded_marker_frame() -> bytes:
    """Marker 3 clean at (100, 100), marker 5 at (600, 300) with a fifth of every data cell inverted."""
    frame = np.full((720, 1280, 3), 255, np.uint8)
    draw_markers(frame, [(3, 100, 100, 120), (5, 600, 300, 120)])
    cell = 20  # 120 px / (4 data bits + 2 border bits)
    for row in range(1, 5):
        for col in range(1, 5):
            y, x = 300 + row * cell, 600 + col * cell
            frame[y:y + cell, x:x + 4] = 255 - frame[y:y + cell, x:x + 4]
    small = cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()


def test_confidence_threshold_filters(server):
    jpeg = _degraded_marker_frame()
    by_threshold = {}
    for threshold in (None, 0.95, 1.0):
        resp = _infer(server.url, jpeg, threshold=threshold)
        assert resp.status_code == 200
        by_threshold[threshold] = {d["cls_id"]: d["conf"] for d in resp.json()["detections"]}
    assert sorted(by_threshold[None]) == [3, 5]  # default 0.5 keeps the degraded marker
    assert 0.5 < by_threshold[None][5] < 0.95 and by_threshold[None][3] == 1.0
    assert sorted(by_threshold[0.95]) == [3]
    assert by_threshold[1.0] == {}  # filtering is strict: conf > threshold


@pytest.mark.parametrize("threshold", ["abc", "1.5", "-0.1"])
def test_invalid_threshold_is_422(server, threshold):
    assert _infer(server.url, _frame_jpeg([]), threshold=threshold).status_code == 422


def test_bad_uploads_are_4xx(server):
    url = f"{server.url}/models/{MODEL}/inference"
    headers = {"X-API-Key": KEY}
    garbage = requests.post(url, headers=headers, files={"file": ("image", b"not an image", "image/jpeg")}, timeout=5)
    empty = requests.post(url, headers=headers, files={"file": ("image", b"", "image/jpeg")}, timeout=5)
    wrong_field = requests.post(url, headers=headers, files={"image": ("image", _frame_jpeg([]))}, timeout=5)
    raw_body = requests.post(url, headers={**headers, "Content-Type": "image/jpeg"}, data=_frame_jpeg([]), timeout=5)
    assert (garbage.status_code, empty.status_code) == (400, 400)
    assert (wrong_field.status_code, raw_body.status_code) == (422, 422)
    for resp in (garbage, empty, wrong_field, raw_body):
        assert "detail" in resp.json()
    assert server.stats.inferences == 0


def test_old_sdk_upload_without_filename_or_content_type(server):
    resp = requests.post(f"{server.url}/models/{MODEL}/inference", headers={"X-API-Key": KEY},
                         files={"file": (None, _frame_jpeg(MARKERS[:1]))}, timeout=5)
    assert resp.status_code == 200
    assert [d["cls_id"] for d in resp.json()["detections"]] == [0]


def test_oversized_body_is_413_without_reading_it(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.putrequest("POST", f"/v0/models/{MODEL}/inference")
        conn.putheader("X-API-Key", KEY)
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
        conn.endheaders()  # and no body: the server must answer from the headers alone
        resp = conn.getresponse()
        assert resp.status == 413
        assert resp.getheader("Connection") == "close"
    finally:
        conn.close()


@pytest.mark.parametrize("length", ["\u00b2", "12a", "-1", "1e3"])
def test_a_content_length_that_is_not_ascii_digits_is_400(server, length):
    """'²' passes str.isdigit() but not int(): it used to drop the connection without a reply."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"POST /v0/models/{MODEL}/inference HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
                     f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {length}\r\n\r\n"
                     .encode("latin-1"))  # how http.server decodes header bytes
        reply = b""
        while chunk := sock.recv(4096):  # the server closes the connection after its reply
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400"), reply[:80]
    assert b"Invalid Content-Length" in reply


def test_keep_alive_reuses_one_connection(server):
    jpeg = _frame_jpeg(MARKERS)
    with requests.Session() as session:
        assert _infer(server.url, jpeg, session=session).status_code == 200
        # A refused request with a body must not break the connection: the body is drained.
        assert _infer(server.url, jpeg, session=session, key="wrong").status_code == 401
        resp = session.get(f"{server.url}/models/{MODEL}", headers={"X-API-Key": KEY}, timeout=5)
        assert resp.status_code == 200
    assert (server.stats.requests, server.stats.connections) == (3, 1)
    # Control: without a session every request opens its own connection, and the counter sees it.
    _infer(server.url, jpeg)
    assert server.stats.connections == 2


def test_latency_option_delays_inference():
    srv = LocalServer(port=0, api_key=KEY, latency_s=0.4)
    srv.start()
    try:
        jpeg = _frame_jpeg(MARKERS[:1])
        started = time.monotonic()
        assert _infer(srv.url, jpeg).status_code == 200
        assert time.monotonic() - started >= 0.4
    finally:
        srv.stop()


def test_stop_is_quick_during_simulated_latency():
    srv = LocalServer(port=0, api_key=KEY, latency_s=30)
    srv.start()
    worker = threading.Thread(target=_try_infer, args=(srv.url, _frame_jpeg(MARKERS[:1])), daemon=True)
    try:
        worker.start()
        deadline = time.monotonic() + 5
        while srv.stats.inferences == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.stats.inferences == 1  # the request is now waiting out its simulated latency
    finally:
        started = time.monotonic()
        srv.stop()  # joins the handler threads, so a blind sleep in one would show here
    assert time.monotonic() - started < 3
    worker.join(5)
    assert not worker.is_alive()


def _try_infer(url, jpeg):
    try:
        _infer(url, jpeg)
    except requests.RequestException:
        pass  # the server was stopped under the request: expected


def test_draw_markers_validates_and_adds_quiet_zone():
    frame = np.zeros((200, 300), np.uint8)  # black background, grey-scale frame
    assert draw_markers(frame, [(9, 50, 40, 60)]) is frame
    assert frame[35, 45] == 255  # quiet zone outside the marker's own black border
    detector = cv2.aruco.ArucoDetector(cv2.aruco.getPredefinedDictionary(cv2.aruco.DICT_4X4_50))
    corners, ids, _ = detector.detectMarkers(frame)
    assert ids is not None and ids.flatten().tolist() == [9]
    assert corners[0].reshape(-1, 2).min(axis=0).tolist() == [50, 40]
    for bad in [(50, 0, 0, 60), (1, 250, 0, 60), (1, -1, 0, 60), (1, 0, 0, 5)]:
        with pytest.raises(ValueError):
            draw_markers(frame, [bad])


def _cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_local_server_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_from_args_serves_until_stopped(caplog, monkeypatch):
    monkeypatch.setenv("FOCOOS_LOCAL_API_KEY", "env-secret-key-42")
    stop = threading.Event()
    result = []
    caplog.set_level(logging.DEBUG, logger="focoos_edge.tools.localserver")
    runner = threading.Thread(target=lambda: result.append(run_from_args(_cli_args("--port", "0"), stop)))
    runner.start()
    deadline = time.monotonic() + 5
    while not (match := re.search(r"http://127\.0\.0\.1:(\d+)/v0", caplog.text)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert match, caplog.text
    url = match.group(0)
    assert requests.get(f"{url}/models/{MODEL}", headers={"X-API-Key": "env-secret-key-42"}, timeout=5).ok
    assert requests.get(f"{url}/models/{MODEL}", headers={"X-API-Key": "other"}, timeout=5).status_code == 401
    stop.set()
    runner.join(5)
    assert result == [0]
    assert "env-secret-key-42" not in caplog.text
    assert "not checked" not in caplog.text and "any non-blank key" not in caplog.text


def test_run_from_args_without_key_warns(caplog, monkeypatch):
    monkeypatch.delenv("FOCOOS_LOCAL_API_KEY", raising=False)
    stop = threading.Event()
    stop.set()  # start, log, then stop at once
    caplog.set_level(logging.INFO, logger="focoos_edge.tools.localserver")
    assert run_from_args(_cli_args("--port", "0"), stop) == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "keys are not checked" in warnings[0].getMessage()


def test_run_from_args_port_in_use_returns_1(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_from_args(_cli_args("--port", str(port), "--api-key", "k"), threading.Event()) == 1
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_segmentation_keypoint_and_classification_models(server):
    """local-aruco-seg: a bbox-cropped PNG of each marker's quad and its corners as keypoints;
    local-aruco-kp: keypoints only; local-aruco-cls: classes without boxes."""
    jpeg = _frame_jpeg(MARKERS[:2])
    seg = _infer(server.url, jpeg, model="local-aruco-seg").json()["detections"]
    assert sorted(d["cls_id"] for d in seg) == [0, 7]
    for det in seg:
        x1, y1, x2, y2 = det["bbox"]
        png = base64.b64decode(det["mask"])
        mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (int(np.ceil(y2)) - int(y1) + 1, int(np.ceil(x2)) - int(x1) + 1)
        assert set(np.unique(mask)) <= {0, 255}
        assert np.count_nonzero(mask) == pytest.approx(60 * 60, rel=0.1)  # a 120 px marker at half size
        assert len(det["keypoints"]) == 4 and all(p[2] == 1.0 for p in det["keypoints"])
        assert all(x1 <= p[0] <= x2 and y1 <= p[1] <= y2 for p in det["keypoints"])
    kp = _infer(server.url, jpeg, model="local-aruco-kp").json()["detections"]
    assert all("keypoints" in d and "mask" not in d for d in kp) and len(kp) == 2
    cls = _infer(server.url, jpeg, model="local-aruco-cls").json()["detections"]
    assert sorted(d["cls_id"] for d in cls) == [0, 7] and all(set(d) == {"conf", "cls_id", "label"} for d in cls)


def test_quota_refuses_inference_past_it_and_user_reports_it():
    srv = LocalServer(port=0, api_key=KEY, quota=Quota.parse("9:10"), im_size=[512, 384])
    srv.start()
    try:
        jpeg = _frame_jpeg(MARKERS[:1])
        assert _infer(srv.url, jpeg).status_code == 200
        refused = _infer(srv.url, jpeg)
        assert refused.status_code == 429 and "quota" in refused.json()["detail"]
        quotas = requests.get(srv.url + "/user/", headers={"X-API-Key": KEY}, timeout=5).json()["quotas"]
        assert (quotas["total_inferences"], quotas["max_inferences"]) == (10, 10)
        assert requests.get(f"{srv.url}/models/{MODEL}", headers={"X-API-Key": KEY}, timeout=5).json()["im_size"] \
            == [512, 384]
        srv.quota.reset()
        assert _infer(srv.url, jpeg).status_code == 200
    finally:
        srv.stop()
    with pytest.raises(ValueError, match="USED:MAX"):
        Quota.parse("10")
