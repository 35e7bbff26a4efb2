"""The Prometheus endpoint: render() of a daemon snapshot assembled from hand-made stage snapshots
(edge cases) and a real daemon's /metrics, checked by a strict parser of text format 0.0.4 (and by
prometheus_client's parser when it is installed) and against the stats message made from the same
snapshot; a real MetricsServer on 127.0.0.1."""

from __future__ import annotations

import http.client
import math
import re
import socket
import threading
from dataclasses import replace

import pytest
from daemon_infra import KEY, daemon_command, daemon_config
from procs import free_port

from focoos_edge.capture import CameraSnapshot
from focoos_edge.delivery import PublisherSnapshot, QueueSnapshot, SpoolSnapshot, contract
from focoos_edge.inference import UplinkCameraSnapshot, UplinkSnapshot
from focoos_edge.results import EventFigures, ResultsCameraSnapshot, ResultsSnapshot
from focoos_edge.service.control import ControlSnapshot
from focoos_edge.service.metrics import CONTENT_TYPE, MetricsServer, render
from focoos_edge.service.report import stats_message
from focoos_edge.service.stats import Account, DaemonSnapshot, Parts, assemble
from focoos_edge.subscribers import FeaturesSnapshot

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


def _uplink_camera(**overrides) -> UplinkCameraSnapshot:
    figures = {"uploaded": 38, "bytes_uploaded": 912_000, "results": 37, "spooled": 2, "errors": {"timeout": 2},
               "dead_lettered": {"malformed": 1}, "round_trips_ms": (120.4, 95.0, 301.0)}
    return UplinkCameraSnapshot(**{**figures, **overrides})  # type: ignore[arg-type]


def edge_case_parts() -> Parts:
    """Three cameras: `yard` streaming, `door` reconnecting with no latency measured yet, `gone`
    removed by a reload (its frames still accounted for); an odd device_id; a full disk."""
    return Parts(
        device_id='odd"box\\1', at_s=1_795_722_000.0, uptime_s=3600.54, cpu_percent=37.5, rss_bytes=98_765_432,
        workers={"yard": CameraSnapshot("streaming", fps=12.5, grabbed=1000, sampled=40, reconnects=1),
                 "door": CameraSnapshot("reconnecting", grabbed=900, sampled=40, reconnects=3)},
        uplink=UplinkSnapshot(state="rate_limited", queued={}, in_flight={"yard": 2, "door": 2}, cameras={
            "yard": _uplink_camera(),
            "door": _uplink_camera(errors={}, dead_lettered={}, round_trips_ms=()),
            "gone": _uplink_camera(errors={'weird "reason"\nline': 1}, dead_lettered={})}),
        results=ResultsSnapshot({"yard": ResultsCameraSnapshot(EventFigures(open=1, held_for_order=1, late=0)),
                                 "door": ResultsCameraSnapshot(EventFigures(open=0, held_for_order=0, late=2))}),
        spool=SpoolSnapshot(frames=QueueSnapshot(5, 150_000, 42.0), outbox=QueueSnapshot(0, 0, None),
                            disk_bytes=4_194_304, max_bytes=268_435_456, disk_full=True,
                            pending={"yard": {"frames": 2, "outbox": 0}, "gone": {"frames": 3, "outbox": 0}},
                            evicted={("yard", "max_age"): 1, ("yard", "dead_letter_malformed"): 1,
                                     ("gone", "budget"): 1, ("yard/events", "outbox_budget"): 2}),
        publisher=PublisherSnapshot(connected=False, sent=120, acked=110, resent=3, dropped_queue_full=0, connects=2,
                                    connect_failures=4, delivered={"yard": 33, "door": 38, "gone": 36,
                                                                   "yard/events": 4}),
        control=ControlSnapshot(off=frozenset({"door"})), features=FeaturesSnapshot({"yard": 2}),
        retired_sampled={"gone": 30}, recovered={"gone": 10}, main_restarts={"main": 0})


def edge_case_snapshot() -> DaemonSnapshot:
    return assemble(edge_case_parts())


def test_the_snapshot_accounts_for_every_frame_of_every_camera():
    """produced = delivered + pending (in flight, held for order, spool, live queue) + evicted (not the
    dead-letter evictions, counted once as dead_lettered) + dead_lettered; event streams left out."""
    cameras = edge_case_snapshot().cameras
    assert list(cameras) == ["door", "gone", "yard"]
    assert cameras["yard"].account == Account(produced=40, delivered=33, pending=5, evicted=1, dead_lettered=1)
    assert cameras["door"].account == Account(produced=40, delivered=38, pending=2, evicted=0, dead_lettered=0)
    assert cameras["gone"].account == Account(produced=40, delivered=36, pending=3, evicted=1, dead_lettered=0)
    assert cameras["gone"].capture.state == "removed" and cameras["gone"].events is None
    assert cameras["yard"].clamped_by_reason == {"count_label_cap": 2}
    assert (cameras["yard"].inference_ms_p50, cameras["yard"].inference_ms_p95) == (120.4, 301.0)


def test_the_hand_written_snapshot_gives_a_stats_message_of_the_schema():
    """The edge cases make a message shaped like the real one (apart from the deliberately odd device_id)."""
    message = stats_message(replace(edge_case_snapshot(), device_id="box-1"))
    assert contract.check("stats", message) == []
    assert message["cameras"]["gone"]["events"] == {} and message["cameras"]["door"]["detect"] == "OFF"


def test_render_edge_cases_parse_strictly_and_keep_every_figure():
    fams = parse_exposition(render(edge_case_snapshot()))
    assert value_of(fams, "info", device_id='odd"box\\1') == 1  # escaped and read back
    assert value_of(fams, "mqtt_connected") == 0 and value_of(fams, "spool_disk_full") == 1
    assert value_of(fams, "inference_state", state="rate_limited") == 1
    assert value_of(fams, "inference_in_flight") == 4
    assert value_of(fams, "uptime_seconds") == 3600.5
    assert value_of(fams, "mqtt_messages_resent_total") == 3
    assert value_of(fams, "spool_items", queue="frames") == 5
    assert value_of(fams, "spool_oldest_age_seconds", queue="frames") == 42.0
    assert (("queue", "outbox"),) not in fams["focoos_edge_spool_oldest_age_seconds"]["samples"]
    assert value_of(fams, "camera_state", camera="door", state="reconnecting") == 1
    assert value_of(fams, "camera_state", camera="gone", state="removed") == 1
    assert value_of(fams, "camera_detect_on", camera="door") == 0
    assert value_of(fams, "inference_errors_total", camera="yard", reason="timeout") == 2
    assert value_of(fams, "inference_errors_total", camera="gone", reason='weird "reason"\nline') == 1
    assert value_of(fams, "spool_evictions_total", camera="yard", reason="dead_letter_malformed") == 1
    assert value_of(fams, "reply_clamps_total", camera="yard", reason="count_label_cap") == 2
    assert value_of(fams, "inference_latency_seconds", camera="yard", quantile="0.95") == pytest.approx(0.301)
    latency = fams["focoos_edge_inference_latency_seconds"]["samples"]
    assert not [labels for labels in latency if ("camera", "door") in labels]  # no figure yet: no sample
    assert (("camera", "gone"),) not in fams["focoos_edge_events_open"]["samples"]  # not in the config
    for camera in ("yard", "door", "gone"):  # the accounting identity survives the translation
        produced = value_of(fams, "frames_produced_total", camera=camera)
        assert produced == 40 == sum(value_of(fams, name, camera=camera) for name in (
            "frames_delivered_total", "frames_pending", "frames_evicted_total", "frames_dead_lettered_total"))
    assert fams["focoos_edge_uptime_seconds"]["type"] == "gauge"
    assert fams["focoos_edge_frames_uploaded_total"]["type"] == "counter"
    assert "focoos_edge_thread_restarts_total" not in fams  # none restarted


# Per-camera keys of the stats message and the metric that shows the same figure.
SAME_FIGURE = {"grabbed": "camera_frames_grabbed_total", "sampled": "camera_frames_sampled_total",
               "reconnects": "camera_reconnects_total", "uploaded": "frames_uploaded_total",
               "bytes_uploaded": "uploaded_bytes_total", "results": "inference_results_total",
               "spooled": "frames_spooled_total", "produced": "frames_produced_total",
               "delivered": "frames_delivered_total", "pending": "frames_pending", "evicted": "frames_evicted_total",
               "dead_lettered": "frames_dead_lettered_total", "fps": "camera_fps",
               "skipped_paused": "frames_skipped_paused_total"}
SAME_REASONS = {"errors": "inference_errors_total", "evicted_by_reason": "spool_evictions_total",
                "dead_lettered_by_reason": "dead_letters_total", "clamped_by_reason": "reply_clamps_total"}


def test_the_message_and_the_metrics_show_the_same_figures():
    """Both read one snapshot: every per-camera figure of the message is the metric's value."""
    snap = edge_case_snapshot()
    message, fams = stats_message(snap), parse_exposition(render(snap))
    for camera, cam in message["cameras"].items():
        for key, name in SAME_FIGURE.items():
            assert value_of(fams, name, camera=camera) == cam[key], (camera, key)
        for key, name in SAME_REASONS.items():
            found = {dict(labels)["reason"]: v for labels, v in fams[f"focoos_edge_{name}"]["samples"].items()
                     if ("camera", camera) in labels}
            assert found == cam[key], (camera, key)
        assert value_of(fams, "camera_state", camera=camera, state=cam["state"]) == 1
    mqtt = message["mqtt"]
    assert [value_of(fams, f"mqtt_messages_{k}_total") for k in ("sent", "acked", "resent", "dropped")] == [
        mqtt["sent"], mqtt["acked"], mqtt["resent"], mqtt["dropped"]]
    assert value_of(fams, "live_queue_frames") == message["inference"]["queue_depth"]
    assert value_of(fams, "spool_bytes", queue="frames") == message["spool"]["frames"]["bytes"]


def test_prometheus_client_parses_the_output():
    """Runs when prometheus-client is installed (test extra): the reference parser agrees."""
    parser = pytest.importorskip("prometheus_client.parser")
    families = {f.name: f for f in parser.text_string_to_metric_families(render(edge_case_snapshot()))}
    # prometheus_client names counter families without their _total suffix.
    uploaded = families["focoos_edge_frames_uploaded"]
    assert uploaded.type == "counter"
    assert {s.labels["camera"]: s.value for s in uploaded.samples} == {"yard": 38, "door": 38, "gone": 38}
    info = families["focoos_edge_info"].samples[0]
    assert info.labels == {"device_id": 'odd"box\\1'}


def test_a_real_daemon_serves_the_figures_of_its_stats_message(marker_clip, local_server, mosquitto, mqtt_sub,
                                                                 spawn, tmp_path):
    """A running daemon's /metrics (over HTTP) against its stats message (over MQTT): every family of the
    edge cases is there (by-reason counters once a reason occurred), and the counters are at least
    what the earlier message said."""
    sub = mqtt_sub(mosquitto.port, f"{TOPIC}/stats")
    port = free_port()
    config = daemon_config(tmp_path, api_url=local_server.url, mqtt_port=mosquitto.port, api_key=KEY,
                           metrics={"enabled": True, "port": port},
                           cameras=[{"name": "gate", "source": str(marker_clip.path), "sample_fps": 4}])
    daemon = spawn(daemon_command(config), name="daemon")
    message = sub.wait_for(lambda m: m.json()["cameras"].get("gate", {}).get("uploaded", 0) >= 2, 60,
                           "stats with uploads", watch=[daemon])
    stats = message.json()
    status, headers, body = _request(port, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE
    fams = parse_exposition(body.decode())
    by_reason = {f"focoos_edge_{name}" for name in SAME_REASONS.values()}  # appear with their first reason
    assert set(fams) == set(parse_exposition(render(edge_case_snapshot()))) - by_reason
    gate = stats["cameras"]["gate"]
    for key in ("uploaded", "results", "grabbed", "produced", "delivered"):
        assert value_of(fams, SAME_FIGURE[key], camera="gate") >= gate[key] > 0, key
    assert value_of(fams, "camera_state", camera="gate", state="streaming") == 1
    assert value_of(fams, "resident_memory_bytes") > 0
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

    def get_snapshot():
        calls.append(1)
        if failing.is_set():
            raise RuntimeError("broken figure")
        return edge_case_snapshot()

    server = MetricsServer("127.0.0.1", 0, get_snapshot).start()
    try:
        assert server.port > 0
        status, headers, body = _request(server.port, "GET", "/metrics")
        assert status == 200 and headers["Content-Type"] == CONTENT_TYPE
        assert body.decode() == render(edge_case_snapshot())
        assert _request(server.port, "GET", "/metrics?x=1")[0] == 200
        assert _request(server.port, "GET", "/")[0] == 404
        status, headers, _ = _request(server.port, "POST", "/metrics")
        assert status == 405 and headers["Allow"] == "GET"
        failing.set()
        status, _, body = _request(server.port, "GET", "/metrics")
        assert status == 500 and b"broken figure" not in body  # no internals to the client
        failing.clear()
        assert _request(server.port, "GET", "/metrics")[0] == 200  # still serving
        assert len(calls) == 4  # a snapshot per scrape, not for 404/405
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
            MetricsServer("127.0.0.1", holder.getsockname()[1], edge_case_snapshot).start()
    finally:
        holder.close()


def test_numbers_are_prometheus_numbers():
    text = render(replace(edge_case_snapshot(), cpu_percent=math.nan, uptime_s=math.inf))
    assert "focoos_edge_cpu_percent NaN\n" in text and "focoos_edge_uptime_seconds +Inf\n" in text
    fams = parse_exposition(text)
    assert math.isnan(value_of(fams, "cpu_percent"))
