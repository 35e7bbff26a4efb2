"""The Prometheus endpoint: render() on a real stats message and on edge cases, checked by a strict
parser of text format 0.0.4 (and by prometheus_client's parser when it is installed), and a real
MetricsServer on 127.0.0.1."""

from __future__ import annotations

import http.client
import math
import re
import socket
import threading

import pytest
from daemon_infra import KEY, daemon_command, daemon_config

from focoos_edge.delivery import contract
from focoos_edge.service.metrics import CONTENT_TYPE, MetricsServer, render

TOPIC = "focoos/box1"
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE = re.compile(rf"^({NAME})(?:\{{(.*)\}})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(,|$)')


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def _labels(text: str | None) -> tuple[tuple[str, str], ...]:
    """`a="x",b="y"` -> (("a", "x"), ("b", "y")); the whole text must be consumed."""
    if not text:
        return ()
    found, pos = [], 0
    while pos < len(text):
        m = LABEL.match(text, pos)
        assert m, f"bad labels at {text[pos:]!r}"
        found.append((m.group(1), _unescape(m.group(2))))
        pos = m.end()
    names = [name for name, _ in found]
    assert len(names) == len(set(names)), f"repeated label in {text!r}"
    return tuple(found)


def parse_exposition(text: str) -> dict[str, dict]:
    """Strict 0.0.4 parser for what render() may emit: family -> {type, help, samples{labels: value}}.

    HELP and TYPE once per family and before its samples, samples of a family together, known types,
    no duplicate series, counters named *_total and never negative, every name focoos_edge_*."""
    assert text.endswith("\n") and "\n\n" not in text
    families: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            kind, name, rest = line[2:6], *line[7:].split(" ", 1)
            assert re.fullmatch(NAME, name) and name.startswith("focoos_edge_"), line
            fam = families.setdefault(name, {"type": None, "help": None, "samples": {}})
            assert not fam["samples"], f"{kind} after samples: {line}"
            key = "help" if kind == "HELP" else "type"
            assert fam[key] is None, f"second {kind} line for {name}"
            fam[key] = rest
            current = name
            continue
        assert not line.startswith("#"), f"unexpected comment: {line}"
        m = SAMPLE.match(line)
        assert m, f"bad sample line: {line!r}"
        name, labels, value = m.group(1), _labels(m.group(2)), float(m.group(3))
        assert name == current, f"{name} outside its family block (current {current})"
        fam = families[name]
        assert fam["type"] in ("counter", "gauge") and fam["help"], name
        assert labels not in fam["samples"], f"duplicate series {name}{labels}"
        if fam["type"] == "counter":
            assert name.endswith("_total") and value >= 0, line
        fam["samples"][labels] = value
    for name, fam in families.items():
        assert fam["type"] is not None and fam["help"] is not None, name
        assert (fam["type"] == "counter") == name.endswith("_total"), name
    return families


def value_of(families: dict, name: str, **labels: str) -> float:
    return families[f"focoos_edge_{name}"]["samples"][tuple(labels.items())]


def _camera(**overrides) -> dict:
    cam = {"state": "streaming", "fps": 12.5, "grabbed": 1000, "sampled": 40, "reconnects": 1, "uploaded": 38,
           "bytes_uploaded": 912_000, "results": 37, "spooled": 2, "errors": {"timeout": 2},
           "evicted_by_reason": {"max_age": 1, "dead_letter_malformed": 1},
           "dead_lettered_by_reason": {"malformed": 1}, "inference_ms": {"p50": 120.4, "p95": 301.0},
           "produced": 40, "delivered": 36, "pending": 2, "evicted": 1, "dead_lettered": 1}
    return {**cam, **overrides}


def edge_case_stats() -> dict:
    return {
        "v": 1, "device_id": 'odd"box\\1', "at": "2026-11-26T19:40:00.000000Z", "uptime_s": 3600.5,
        "cpu_percent": 37.5, "rss_bytes": 98_765_432,
        "inference": {"state": "rate_limited", "queue_depth": 0, "in_flight": 4},
        "mqtt": {"connected": False, "sent": 120, "acked": 110, "resent": 3, "dropped": 0},
        "spool": {"frames": {"count": 5, "bytes": 150_000, "oldest_age_s": 42.0},
                  "outbox": {"count": 0, "bytes": 0, "oldest_age_s": None},
                  "disk_bytes": 4_194_304, "max_bytes": 268_435_456, "disk_full": True},
        "cameras": {
            "yard": _camera(),
            "door": _camera(state="reconnecting", fps=0.0, errors={}, evicted_by_reason={},
                            dead_lettered_by_reason={}, inference_ms={"p50": None, "p95": None}),
            "gone": _camera(state="removed", errors={'weird "reason"\nline': 1}),
        },
    }


def test_the_hand_written_stats_follow_the_stats_schema():
    """The edge cases are shaped like the real message (apart from the deliberately odd device_id)."""
    assert contract.check("stats", {**edge_case_stats(), "device_id": "box-1"}) == []


def test_render_edge_cases_parse_strictly_and_keep_every_figure():
    fams = parse_exposition(render(edge_case_stats()))
    assert value_of(fams, "info", device_id='odd"box\\1') == 1  # escaped and read back
    assert value_of(fams, "mqtt_connected") == 0 and value_of(fams, "spool_disk_full") == 1
    assert value_of(fams, "inference_state", state="rate_limited") == 1
    assert value_of(fams, "mqtt_messages_resent_total") == 3
    assert value_of(fams, "spool_items", queue="frames") == 5
    assert value_of(fams, "spool_oldest_age_seconds", queue="frames") == 42.0
    assert (("queue", "outbox"),) not in fams["focoos_edge_spool_oldest_age_seconds"]["samples"]
    assert value_of(fams, "camera_state", camera="door", state="reconnecting") == 1
    assert value_of(fams, "inference_errors_total", camera="yard", reason="timeout") == 2
    assert value_of(fams, "inference_errors_total", camera="gone", reason='weird "reason"\nline') == 1
    assert value_of(fams, "spool_evictions_total", camera="yard", reason="dead_letter_malformed") == 1
    assert value_of(fams, "inference_latency_seconds", camera="yard", quantile="0.95") == pytest.approx(0.301)
    latency = fams["focoos_edge_inference_latency_seconds"]["samples"]
    assert not [labels for labels in latency if ("camera", "door") in labels]  # no figure yet: no sample
    for camera in ("yard", "door", "gone"):  # the accounting identity survives the translation
        produced = value_of(fams, "frames_produced_total", camera=camera)
        assert produced == sum(value_of(fams, name, camera=camera) for name in (
            "frames_delivered_total", "frames_pending", "frames_evicted_total", "frames_dead_lettered_total"))
    assert fams["focoos_edge_uptime_seconds"]["type"] == "gauge"
    assert fams["focoos_edge_frames_uploaded_total"]["type"] == "counter"


def test_render_refuses_a_stats_dict_without_its_keys():
    stats = edge_case_stats()
    del stats["cameras"]["yard"]["uploaded"]
    with pytest.raises(KeyError):
        render(stats)


def test_prometheus_client_parses_the_output():
    """Runs when prometheus-client is installed (test extra): the reference parser agrees."""
    parser = pytest.importorskip("prometheus_client.parser")
    families = {f.name: f for f in parser.text_string_to_metric_families(render(edge_case_stats()))}
    # prometheus_client names counter families without their _total suffix.
    uploaded = families["focoos_edge_frames_uploaded"]
    assert uploaded.type == "counter"
    assert {s.labels["camera"]: s.value for s in uploaded.samples} == {"yard": 38, "door": 38, "gone": 38}
    info = families["focoos_edge_info"].samples[0]
    assert info.labels == {"device_id": 'odd"box\\1'}


def test_render_a_real_stats_message(marker_clip, local_server, mosquitto, mqtt_sub, spawn, tmp_path):
    """The daemon's own stats message (over MQTT), rendered: every key render() reads is there."""
    sub = mqtt_sub(mosquitto.port, f"{TOPIC}/stats")
    config = daemon_config(tmp_path, api_url=local_server.url, mqtt_port=mosquitto.port, api_key=KEY,
                           cameras=[{"name": "gate", "source": str(marker_clip.path), "sample_fps": 4}])
    daemon = spawn(daemon_command(config), name="daemon")
    message = sub.wait_for(lambda m: m.json()["cameras"].get("gate", {}).get("uploaded", 0) >= 2, 60,
                           "stats with uploads", watch=[daemon])
    stats = message.json()
    fams = parse_exposition(render(stats))
    gate = stats["cameras"]["gate"]
    assert value_of(fams, "frames_uploaded_total", camera="gate") == gate["uploaded"]
    assert value_of(fams, "camera_state", camera="gate", state="streaming") == 1
    assert value_of(fams, "resident_memory_bytes") == stats["rss_bytes"] > 0
    assert value_of(fams, "info", device_id="box1") == 1
    assert value_of(fams, "inference_state", state="ok") == 1


def _request(port: int, method: str, path: str) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_server_serves_metrics_and_nothing_else():
    calls = []
    failing = threading.Event()

    def get_stats():
        calls.append(1)
        if failing.is_set():
            raise RuntimeError("broken figure")
        return edge_case_stats()

    server = MetricsServer("127.0.0.1", 0, get_stats).start()
    try:
        assert server.port > 0
        status, headers, body = _request(server.port, "GET", "/metrics")
        assert status == 200 and headers["Content-Type"] == CONTENT_TYPE
        assert body.decode() == render(edge_case_stats())
        assert _request(server.port, "GET", "/metrics?x=1")[0] == 200
        assert _request(server.port, "GET", "/")[0] == 404
        status, headers, _ = _request(server.port, "POST", "/metrics")
        assert status == 405 and headers["Allow"] == "GET"
        failing.set()
        status, _, body = _request(server.port, "GET", "/metrics")
        assert status == 500 and b"broken figure" not in body  # no internals to the client
        failing.clear()
        assert _request(server.port, "GET", "/metrics")[0] == 200  # still serving
        assert len(calls) == 4  # stats read per scrape, not for 404/405
    finally:
        port = server.port
        server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_server_reports_a_taken_port():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        with pytest.raises(OSError):
            MetricsServer("127.0.0.1", holder.getsockname()[1], edge_case_stats).start()
    finally:
        holder.close()


def test_numbers_are_prometheus_numbers():
    stats = edge_case_stats()
    stats["cpu_percent"] = math.nan
    stats["uptime_s"] = math.inf
    text = render(stats)
    assert "focoos_edge_cpu_percent NaN\n" in text and "focoos_edge_uptime_seconds +Inf\n" in text
    fams = parse_exposition(text)
    assert math.isnan(value_of(fams, "cpu_percent"))
