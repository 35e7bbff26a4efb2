"""FocoosClient against real HTTP servers on 127.0.0.1 (tests/httpfault.py): wire format, error
translation, tolerant parsing, keep-alive and secrecy of the API key."""

from __future__ import annotations

import logging
import pickle
import socket
import time
import traceback
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpfault
import pytest
from httpfault import FaultServer, hang, multipart_parts, raw, reset

from focoos_edge.inference.client import FocoosClient, format_threshold
from focoos_edge.inference.errors import (
    AuthError,
    FocoosError,
    MalformedResponseError,
    ModelNotFoundError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from focoos_edge.inference.geometry import map_to_frame
from focoos_edge.inference.parse import Detection, parse_retry_after

CANARY = "CANARY-7f3a9c"
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"  # opaque bytes: the client must not touch them
OK_REPLY = {
    "detections": [
        {"bbox": [412, 157, 598, 633], "conf": 0.9134, "cls_id": 0, "label": "person"},
        {"bbox": [35.4, 301.0, 211.9, 472.2], "conf": 0.78, "cls_id": 2, "label": "car", "mask": None},
    ],
    "latency": {"imload": 0.003, "preprocess": 0.011, "inference": 0.019, "postprocess": 0.002},
}


@pytest.fixture
def server():
    with FaultServer() as srv:
        srv.default = httpfault.json(200, OK_REPLY)
        yield srv


@pytest.fixture
def client(server):
    with FocoosClient(server.url, CANARY, timeout_s=2.0) as c:
        yield c


def infer_error(client: FocoosClient, ref: str = "fai-detr-l-obj365") -> FocoosError:
    with pytest.raises(FocoosError) as info:
        client.infer(ref, JPEG, 0.5)
    return info.value


# --- wire format ---------------------------------------------------------------------------------

def test_inference_request_matches_the_wire_format(server, client):
    result = client.infer("fai-detr-l-obj365", JPEG, 0.35)
    (rec,) = server.requests
    assert rec.method == "POST"
    assert rec.path == "/v0/models/fai-detr-l-obj365/inference"
    assert rec.header("X-API-Key") == CANARY
    assert "authorization" not in rec.header_names()
    assert rec.query == {"confidence_threshold": ["0.35"]}
    assert rec.header("content-type").startswith("multipart/form-data; boundary=")
    (part,) = multipart_parts(rec)
    assert (part.name, part.filename, part.content_type) == ("file", "image", "image/jpeg")
    assert part.data == JPEG
    assert rec.header("user-agent").startswith("focoos-edge/")
    assert result.detections[0] == Detection("person", 0, 0.9134, (412.0, 157.0, 598.0, 633.0))
    assert result.detections[1].label == "car" and result.detections[1].has_mask is False
    assert result.server_latency_s["inference"] == pytest.approx(0.019)
    assert 0 < result.round_trip_s < 2.0


def test_model_ref_is_percent_encoded_and_base_url_trailing_slash_ignored(server):
    with FocoosClient(server.url + "/", CANARY) as client:
        client.infer("team/model v2", JPEG, 1)
    (rec,) = server.requests
    assert rec.path == "/v0/models/team%2Fmodel%20v2/inference"
    assert rec.query == {"confidence_threshold": ["1.0"]}


@pytest.mark.parametrize("threshold, text", [(0.5, "0.5"), (0, "0.0"), (1e-5, "0.00001"), (0.123456, "0.123456")])
def test_threshold_is_formatted_as_a_plain_float(threshold, text):
    assert format_threshold(threshold) == text


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_invalid_threshold_is_rejected_before_any_request(server, client, threshold):
    with pytest.raises(ValueError):
        client.infer("m", JPEG, threshold)
    assert server.requests == []


@pytest.mark.parametrize("key", ["", "   ", None, "abc\r\nX-Evil: 1"])
def test_blank_or_unsafe_key_is_rejected_at_construction(key):
    with pytest.raises(ValueError) as info:
        FocoosClient("http://127.0.0.1:9/v0", key)
    assert "X-Evil" not in str(info.value)


def test_model_info_parses_int_and_pair_im_size(server, client):
    info = {"ref": "fai-detr-l-obj365", "name": "Objects", "task": "detection", "status": "TRAINING_COMPLETED",
            "classes": ["person", "car"], "im_size": 640, "is_managed": True}
    server.script(httpfault.json(200, info), httpfault.json(200, {**info, "im_size": [800, 600], "status": "DEPLOYED"}))
    first, second = client.model_info("fai-detr-l-obj365"), client.model_info("fai-detr-l-obj365")
    assert (first.name, first.task, first.classes, first.im_size, first.ready) == (
        "Objects", "detection", ("person", "car"), 640, True)
    assert second.im_size == (800, 600) and second.ready
    assert [r.method for r in server.requests] == ["GET", "GET"]
    assert server.requests[0].path == "/v0/models/fai-detr-l-obj365"
    assert server.requests[0].header("X-API-Key") == CANARY


def test_model_info_status_readiness(server, client):
    server.script(httpfault.json(200, {"status": "TRAINING_RUNNING"}), httpfault.json(200, {"status": "SOMETHING_NEW"}),
                  httpfault.json(200, {"name": "x"}))
    running, unknown, missing = (client.model_info("m") for _ in range(3))
    assert not running.ready and not unknown.ready
    assert missing.ready and missing.status is None and missing.notes
    assert missing.ref == "m" and missing.classes == ()


# --- error matrix --------------------------------------------------------------------------------

@pytest.mark.parametrize("status, error_type, reason, retryable", [
    (401, AuthError, "auth_failed", False),
    (403, AuthError, "auth_failed", False),
    (404, ModelNotFoundError, "model_not_found", False),
    (500, TransientError, "server_error", True),
    (502, TransientError, "server_error", True),
    (503, TransientError, "server_error", True),
    (408, TransientError, "timeout", True),
    (400, PermanentError, "rejected", False),
    (422, PermanentError, "rejected", False),
    (301, TransientError, "unreachable", True),  # network trouble (captive portal), not a bad frame
    (302, TransientError, "unreachable", True),
    (307, TransientError, "unreachable", True),
])
def test_http_status_maps_to_a_typed_error(server, client, status, error_type, reason, retryable):
    server.default = httpfault.json(status, {"detail": f"detail for {status}"}, {"Location": "http://127.0.0.1:9/"})
    err = infer_error(client)
    assert type(err) is error_type
    assert (err.reason, err.retryable, err.status) == (reason, retryable, status)
    assert f"HTTP {status}" in str(err)
    if status not in (301, 302, 307):
        assert f"detail for {status}" in str(err)
    assert len(server.requests) == 1  # no automatic retry, no redirect followed


def test_messages_are_short_and_precise(server, client):
    server.script(httpfault.json(401, {"detail": "x"}), raw(404, b"<html>nope</html>", "text/html"),
                  httpfault.json(422, {"detail": [{"loc": ["query"], "msg": "y" * 500}]}))
    assert str(infer_error(client)) == "Focoos API rejected the API key (HTTP 401): x"
    assert str(infer_error(client, "x")) == "model 'x' not found (HTTP 404)"
    long_detail = str(infer_error(client))
    assert long_detail.startswith('Focoos API rejected the request (HTTP 422): [{"loc":["query"]')
    assert len(long_detail) <= len("Focoos API rejected the request (HTTP 422): ") + 200


def test_rate_limit_with_retry_after_seconds(server, client):
    server.default = httpfault.json(429, {"detail": "slow down"}, {"Retry-After": "7"})
    err = infer_error(client)
    assert isinstance(err, RateLimitedError) and err.retryable and err.reason == "rate_limited"
    assert err.retry_after_s == 7.0


def test_rate_limit_with_retry_after_http_date(server, client):
    when = datetime.now(timezone.utc) + timedelta(seconds=120)
    server.default = httpfault.json(429, {}, {"Retry-After": format_datetime(when, usegmt=True)})
    err = infer_error(client)
    assert isinstance(err, RateLimitedError)
    assert 110 <= err.retry_after_s <= 121


def test_rate_limit_without_retry_after(server, client):
    server.default = raw(429, b"Too Many Requests")
    err = infer_error(client)
    assert isinstance(err, RateLimitedError) and err.retry_after_s is None


@pytest.mark.parametrize("value, expected", [
    ("7", 7.0), (" 2.5 ", 2.5), ("-3", 0.0), ("Wed, 21 Oct 2026 07:28:10 GMT", 10.0),
    ("Wed, 21 Oct 2026 07:27:00 GMT", 0.0), ("soon", None), ("", None), (None, None), ("nan", None),
])
def test_parse_retry_after(value, expected):
    now = datetime(2026, 10, 21, 7, 28, 0, tzinfo=timezone.utc)
    assert parse_retry_after(value, now=now) == expected


def test_hang_past_the_timeout_is_a_transient_timeout(server):
    server.default = hang(30)
    with FocoosClient(server.url, CANARY, timeout_s=0.3) as client:
        started = time.monotonic()
        err = infer_error(client)
        elapsed = time.monotonic() - started
    assert isinstance(err, TransientError) and err.reason == "timeout" and err.status is None
    assert str(err) == "Focoos API timed out after 0.3 s"
    assert elapsed < 3.0


def test_slow_reply_within_the_timeout_succeeds(server):
    server.default = httpfault.delay(0.2, httpfault.json(200, {"detections": []}))
    with FocoosClient(server.url, CANARY, timeout_s=2.0) as client:
        assert client.infer("m", JPEG, 0.5).detections == ()


def test_connection_reset_is_transient(server, client):
    server.default = reset()
    err = infer_error(client)
    assert isinstance(err, TransientError) and err.reason == "unreachable" and err.retryable
    assert "reset" in str(err) or "closed the connection" in str(err)
    with pytest.raises(TransientError):
        client.model_info("m")  # a GET, which urllib3 would happily retry if allowed to
    assert len(server.requests) == 2  # no automatic retries: they are the uplink's job


def test_connection_refused_is_transient():
    port = httpfault.closed_port()
    with FocoosClient(f"http://127.0.0.1:{port}/v0", CANARY, timeout_s=2.0) as client:
        err = infer_error(client)
    assert isinstance(err, TransientError) and err.reason == "unreachable"
    assert str(err) == f"connection to 127.0.0.1:{port} refused"
    assert err.__suppress_context__ and err.__cause__ is None


def test_connect_timeout_on_a_saturated_listener_is_transient():
    # A listener that never accepts, with its accept queue full: further SYNs are dropped, so
    # connect() hangs like it would towards a dead host, on loopback only.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(8)]
        try:
            for sock in fillers:
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
            with FocoosClient(f"http://127.0.0.1:{port}/v0", CANARY, timeout_s=2.0, connect_timeout_s=0.3) as client:
                started = time.monotonic()
                err = infer_error(client)
                elapsed = time.monotonic() - started
        finally:
            for sock in fillers:
                sock.close()
    assert isinstance(err, TransientError) and err.reason == "timeout"
    assert str(err) == f"connection to 127.0.0.1:{port} timed out after 0.3 s"
    assert elapsed < 3.0


def test_client_recovers_after_a_reset(server, client):
    server.script(reset())
    assert isinstance(infer_error(client), TransientError)
    assert len(client.infer("m", JPEG, 0.5).detections) == 2


# --- malformed and tolerant parsing --------------------------------------------------------------

@pytest.mark.parametrize("body, fragment", [
    (b"{not json", "invalid JSON"),
    (b"", "invalid JSON"),
    (b"\xff\xfe\x00garbage", "invalid JSON"),
    (b"[1, 2]", "top level is a list, expected an object"),
    (b'{"latency": {}}', "no 'detections' key"),
    (b'{"detections": {"a": 1}}', "detections is an object, expected a list"),
    (b'{"detections": [{"conf": 0.5, "bbox": [1, 2, 3, 4]}, 7]}', "detections[1] is a number, expected an object"),
    (b'{"detections": [{"conf": 0.5, "bbox": [1, 2, 3, 4]}, {"conf": 0.5}, {"conf": 0.5, "bbox": [1, 2, 3]}]}',
     "detections[2].bbox is not 4 numbers"),
    (b'{"detections": [{"conf": 0.5, "bbox": [1, 2, "3", 4]}]}', "detections[0].bbox is not 4 numbers"),
    (b'{"detections": [{"conf": 0.5, "bbox": [1, 2, NaN, 4]}]}', "detections[0].bbox is not 4 numbers"),
    (b'{"detections": [{"conf": "0.9", "bbox": [1, 2, 3, 4]}]}', "detections[0].conf is not a number"),
    (b'{"detections": [{"bbox": [1, 2, 3, 4]}]}', "detections[0].conf is not a number"),
])
def test_unusable_200_replies_are_malformed(server, client, body, fragment):
    server.default = raw(200, body, "application/json")
    err = infer_error(client)
    assert isinstance(err, MalformedResponseError) and err.reason == "malformed_response"
    assert str(err).startswith("malformed reply: ") and fragment in str(err)


def test_tolerant_parsing(server, client):
    server.default = httpfault.json(200, {
        "detections": [
            {"bbox": [1, 2, 3, 4], "conf": 1, "cls_id": 3, "label": None, "extra": {"x": 1}},
            {"bbox": [1.5, 2.5, 3.5, 4.5], "conf": 0.4, "cls_id": 1.0, "label": "dog", "mask": "iVBORw0KGgo="},
            {"conf": 0.8, "cls_id": 7, "label": "cat"},
            {"bbox": [0, 0, 9, 9], "conf": 0.6, "keypoints": [[1, 2, 1], [3.5, 4, 0]], "bbox_extra": True},
            {"bbox": None, "conf": 0.3, "keypoints": "nonsense", "cls_id": "x"},
        ],
        "image": None,
        "latency": {"inference": 0.02, "notes": "n/a"},
        "something_new": [1, 2],
    })
    dets = client.infer("m", JPEG, 0.2).detections
    assert dets[0] == Detection(None, 3, 1.0, (1.0, 2.0, 3.0, 4.0))
    assert dets[1].has_mask and dets[1].cls_id == 1 and dets[1].bbox == (1.5, 2.5, 3.5, 4.5)
    assert dets[2] == Detection("cat", 7, 0.8, None)  # classification: no box
    assert dets[3].keypoints == ((1.0, 2.0, 1.0), (3.5, 4.0, 0.0))
    assert dets[4] == Detection(None, None, 0.3, None, broken=("keypoints",))  # counted as malformed


def test_missing_latency_gives_an_empty_dict(server, client):
    server.default = httpfault.json(200, {"detections": []})
    result = client.infer("m", JPEG, 0.5)
    assert result.detections == () and result.server_latency_s == {}


def test_oversized_reply_is_malformed(server, client):
    server.default = raw(200, b'{"detections": [], "pad": "' + b"x" * (9 * 1024 * 1024) + b'"}', "application/json")
    err = infer_error(client)
    assert isinstance(err, MalformedResponseError) and "larger than" in str(err)


# --- connection reuse ----------------------------------------------------------------------------

def test_sequential_calls_reuse_one_keep_alive_connection(server, client):
    for _ in range(5):
        client.infer("m", JPEG, 0.5)
    client.model_info("m")
    assert len(server.requests) == 6
    assert len({r.client_port for r in server.requests}) == 1


def test_error_replies_keep_the_connection(server, client):
    server.script(httpfault.json(503, {"detail": "busy"}), httpfault.json(404, {}))
    for _ in range(2):
        infer_error(client)
    client.infer("m", JPEG, 0.5)
    assert len({r.client_port for r in server.requests}) == 1


def test_shared_client_across_threads_stays_within_the_pool(server):
    import concurrent.futures

    server.default = httpfault.delay(0.05, httpfault.json(200, OK_REPLY))
    with FocoosClient(server.url, CANARY, pool_size=3) as client, \
            concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: client.infer("m", JPEG, 0.5), range(12)))
    assert all(len(r.detections) == 2 for r in results)
    assert len({r.client_port for r in server.requests}) <= 3


# --- the API key stays secret --------------------------------------------------------------------

def test_api_key_never_leaks_into_errors_or_logs(server, caplog):
    caplog.set_level(logging.DEBUG)
    server.script(
        httpfault.json(401, {"detail": f"key {CANARY} is not valid"}),
        httpfault.json(403, {"detail": {"key": CANARY}}),
        httpfault.json(404, {"detail": CANARY}),
        httpfault.json(429, {"detail": CANARY}, {"Retry-After": CANARY}),
        httpfault.json(500, {"detail": CANARY}),
        httpfault.json(422, {"detail": CANARY}),
        raw(200, b"{" + CANARY.encode()),
        reset(),
        hang(30),
    )
    errors = []
    with FocoosClient(server.url, CANARY, timeout_s=0.3) as client:
        for _ in range(9):
            errors.append(infer_error(client))
        client.infer("m", JPEG, 0.5)
        client.model_info("m")
    assert len(server.requests) == 11 and all(r.header("x-api-key") == CANARY for r in server.requests)
    assert "***" in str(errors[0])
    for err in errors:
        rendered = str(err) + repr(err) + "".join(traceback.format_exception(err)) + repr(err.__dict__)
        assert CANARY not in rendered
        assert CANARY.encode() not in pickle.dumps(str(err))
    loggers = {r.name for r in caplog.records}
    assert "urllib3.connectionpool" in loggers and "focoos_edge.inference.client" in loggers
    assert CANARY not in caplog.text
    assert all(CANARY not in r.getMessage() for r in caplog.records)
    assert CANARY not in repr(client)


# --- map_to_frame --------------------------------------------------------------------------------

def test_map_to_frame_maps_back_to_original_pixels():
    dets = (
        Detection("a", 0, 0.9, (100.0, 50.0, 200.0, 150.0)),
        Detection("b", 1, 0.8, (10.33, 20.0, 30.0, 40.07), keypoints=((10.0, 20.0, 1.0),)),
        Detection("c", 2, 0.7, None),
    )
    out = map_to_frame(dets, scale=1 / 3, width=1920, height=1080)
    assert out[0].bbox == (300.0, 150.0, 600.0, 450.0)
    assert out[1].bbox == (31.0, 60.0, 90.0, 120.2)
    assert out[1].keypoints == ((30.0, 60.0, 1.0),)
    assert out[2] == dets[2]
    assert (out[0].label, out[0].cls_id, out[0].conf) == ("a", 0, 0.9)


def test_map_to_frame_clips_to_the_frame():
    dets = (Detection("a", 0, 0.9, (-5.0, -0.01, 700.0, 400.0)),)
    (out,) = map_to_frame(dets, scale=0.5, width=1280, height=720)
    assert out.bbox == (0.0, 0.0, 1280.0, 720.0)
    assert str(out.bbox[1]) == "0.0"  # no negative zero


def test_map_to_frame_identity_and_bad_scale():
    dets = (Detection("a", 0, 0.9, (1.26, 2.0, 3.0, 4.0)),)
    assert map_to_frame(dets, scale=1.0, width=10, height=10)[0].bbox == (1.3, 2.0, 3.0, 4.0)
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            map_to_frame(dets, scale=bad, width=10, height=10)


# --- proxies from the environment, read once ------------------------------------------------------

def test_an_http_proxy_from_the_environment_is_used_and_read_once(server, monkeypatch):
    """HTTP_PROXY at construction routes uploads through the proxy (which sees the absolute URL of
    the API); the environment is read once, so a change afterwards does not reroute a running client."""
    with FaultServer() as proxy:
        proxy.default = httpfault.json(200, OK_REPLY)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        with FocoosClient(server.url, CANARY, timeout_s=2.0) as via_proxy:
            monkeypatch.delenv("HTTP_PROXY")
            assert via_proxy.infer("fai-detr-l-obj365", JPEG, 0.5).detections
        (rec,) = proxy.requests
        assert rec.path == "/v0/models/fai-detr-l-obj365/inference"  # the proxy got the API's request
        assert rec.header("Host") == f"127.0.0.1:{server.port}"
        assert not server.requests
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        with FocoosClient(server.url, CANARY, timeout_s=2.0) as direct:
            assert direct.infer("fai-detr-l-obj365", JPEG, 0.5).detections
        assert len(proxy.requests) == 1 and len(server.requests) == 1
