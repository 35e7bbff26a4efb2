"""Hostile replies against the real daemon (scripted HTTP server, real Mosquitto, mosquitto_sub).

Issue 12: one bad result must not end the upload workers, a reply must not blow up memory or
topics, and every published payload validates against the shipped schemas. Each poisoned frame
gets the same hostile reply on every retry; every other frame gets a good reply.
"""

from __future__ import annotations

import json
import threading

import httpfault
from daemon_infra import assert_accounted, assert_valid_messages
from procs import wait_until
from test_fault_matrix import (  # noqa: F401 - `rig` and the clips are fixtures used by name
    CAM,
    DETECTIONS,
    STATS,
    TOPIC,
    PoisonFrames,
    cam,
    long_clip,
    rig,
    stop_daemon,
    wait_stats,
)
from test_units import make_job

from focoos_edge.delivery.spool import Spool
from focoos_edge.inference.client import FocoosClient
from focoos_edge.inference.live import CameraRoute, InferenceHealth, LiveQueue
from focoos_edge.inference.uplink import Uplink

MIB = 1024 * 1024
# The daemon idles near 60-70 MB here; a hostile 5 MB reply may cost a transient parse peak,
# never the 0.9-2 GB the issue measured before the ceilings.
RSS_BOUND = 250 * MIB


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a live process (VmHWM), in bytes: catches peaks between stats."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def det(**fields) -> dict:
    return {"bbox": [10, 20, 110, 220], "conf": 0.9, "cls_id": 0, "label": "person", **fields}


def reply(*detections: dict) -> httpfault.Behaviour:
    body = json.dumps({"detections": list(detections)}, separators=(",", ":")).encode()
    return httpfault.raw(200, body, "application/json")


MANY = reply(*[{"bbox": [1, 1, 2, 2], "conf": 0.9, "label": "car"}] * 158_273)  # 7 MB, under the 8 MiB cap
HOSTILE = [
    ("lone_surrogate", reply(det(label="a\ud800b"))),
    ("label_70k", reply(det(label="x" * 70_000))),
    ("conf_1e308", reply(det(conf=1e308))),
    ("many_detections", MANY),
    ("schema_breakers", reply(det(conf=7.5, bbox=[300, 300, 10, 10], cls_id=10 ** 300), det(cls_id=-4))),
    ("invented_labels", reply(*[det(label=f"made-up-{i}") for i in range(300)])),
]


def test_hostile_replies_keep_the_daemon_up_and_payloads_valid(rig, long_clip):  # noqa: F811 - fixtures
    # Snapshots on: drawing is part of the result path (conf 1e308 used to overflow there).
    daemon = rig.start(long_clip, camera={"snapshot": {"min_interval_s": 0}})
    rig.sub.wait_count(DETECTIONS, 2, 60, watch=[daemon])
    poison = PoisonFrames(HOSTILE)
    rig.api.inference_picker(poison)
    mark = rig.sub.count
    stats = wait_stats(rig, lambda s: sum(cam(s)["clamped_by_reason"].values()) > 0
                       and len(poison.assigned) == len(HOSTILE), 90, "every hostile reply served", daemon)
    rig.sub.wait_count(DETECTIONS, len(rig.sub.messages(DETECTIONS)) + 4, 60, watch=[daemon])  # still going
    peak_rss = max(vm_hwm(daemon.pid), *(m.json()["rss_bytes"] for m in rig.sub.messages(STATS, mark)))
    final = stop_daemon(daemon, rig.sub)  # exit 0, accounting identity, every payload validates

    c = cam(final)
    assert set(c["clamped_by_reason"]) >= {"label_not_unicode", "label_too_long", "conf_out_of_range",
                                           "too_many_detections", "inverted_box", "cls_id_out_of_range",
                                           "count_label_cap"}, c
    assert c["dead_lettered"] == 0, c  # every hostile reply was made publishable, none lost
    assert "thread_restarts" not in final and "thread_restarts" not in stats
    assert peak_rss < RSS_BOUND, peak_rss
    biggest = max(len(m.payload_bytes) for m in rig.sub.messages(DETECTIONS))
    assert biggest < 200_000, biggest  # 1000 detections at most
    count_topics = {m.topic for m in rig.sub.messages(f"{TOPIC}/{CAM}/+")} - {
        f"{TOPIC}/{CAM}/{k}" for k in ("detections", "state", "snapshot", "events")}
    assert 1 < len(count_topics) <= 64, sorted(count_topics)
    labels = [d["label"] for m in rig.sub.messages(DETECTIONS) for d in m.json()["detections"]]
    assert "a?b" in labels and max(len(x or "") for x in labels) == 100
    print(f"[hostile] peak_rss_mb={peak_rss / MIB:.1f} biggest_message={biggest} count_topics={len(count_topics)}"
          f" clamped={c['clamped_by_reason']}")
    assert_accounted(final)
    assert_valid_messages(rig.sub)


# -- the result-processing boundary, on the real uplink threads ----------------------------------
def test_a_result_that_raises_is_dead_lettered_and_the_workers_go_on(tmp_path):
    """Whatever handling a result raises, its frame is dead-lettered (a spooled frame's row dropped),
    or only counted when the message was already stored; the worker threads keep serving."""
    failures = [UnicodeEncodeError("utf-8", "a\ud800", 1, 2, "surrogates not allowed"),
                ValueError("topic too long"), OverflowError("cannot convert float infinity")]
    handled: list[str] = []

    def on_result(job, result, delivery):
        n = int(job.frame_id.rsplit("-", 1)[1])
        handled.append(job.frame_id)
        if n == 3:  # stored, then an extra (a snapshot) fails: counted, not dead-lettered
            delivery.stored.set()
            raise RuntimeError("snapshot failed")
        if n < len(failures):
            raise failures[n]

    spool = Spool(tmp_path / "spool.db", max_bytes=16 * MIB, max_age_s=3600)
    stop = threading.Event()
    route = CameraRoute(threshold=0.5)
    with httpfault.FaultServer() as server:
        server.default = reply(det())
        client = FocoosClient(server.url, "k-0123", timeout_s=5)
        uplink = Uplink(client, "m", {"cam": route}, LiveQueue(per_camera=8), spool, on_result,
                        InferenceHealth(lambda s, d: None), stop, default_route=route, max_in_flight=2)
        spool.put_frame(make_job(n=0))  # from the spool: its row must go when it is dead-lettered
        uplink.start()
        for n in range(1, 8):
            uplink.queue.put(make_job(n=n))
        try:
            wait_until(lambda: len(handled) == 8, 30, message=lambda: f"handled {handled}")
            counters = uplink.counters["cam"]
            wait_until(lambda: uplink.busy == 0, 10)
            assert uplink.alive() and uplink.restarts() == {"uplink-probe": 0, "uplink-0": 0, "uplink-1": 0}
            assert counters.dead_lettered == {"result_error": 3}, counters.dead_lettered
            assert counters.errors == {"result_error": 1}, counters.errors
            assert spool.pending().get("cam", {}).get("frames", 0) == 0
            assert spool.snapshot().frames.count == 0
        finally:
            stop.set()
            uplink.join(5)
            client.close()
            spool.close()


def test_parse_clamps_what_the_schema_forbids():
    from focoos_edge.inference.parse import MAX_DETECTIONS, parse_inference

    body = json.dumps({"detections": [
        det(label="a\ud800b", conf=7.5, bbox=[300, 200, 10, 20], cls_id=-4),
        det(label="y" * 500, conf=-0.5, cls_id=10 ** 300),
    ] + [det()] * (MAX_DETECTIONS + 5)}).encode()
    result = parse_inference(body, 0.1)
    first, second = result.detections[:2]
    assert (first.label, first.conf, first.bbox, first.cls_id) == ("a?b", 1.0, (10.0, 20.0, 300.0, 200.0), None)
    assert (len(second.label), second.conf, second.cls_id) == (100, 0.0, None)
    assert len(result.detections) == MAX_DETECTIONS
    assert result.clamped == {"label_not_unicode": 1, "conf_out_of_range": 2, "inverted_box": 1,
                              "cls_id_out_of_range": 2, "label_too_long": 1, "too_many_detections": 7}


def test_an_unexpected_error_in_a_worker_is_accounted_and_the_loop_restarts(tmp_path):
    """The client refuses an empty JPEG with a ValueError (no HTTP involved): a programming error as
    far as the uplink knows. The frame is dead-lettered, the loop logs and restarts, later frames flow."""
    spool = Spool(tmp_path / "spool.db", max_bytes=16 * MIB, max_age_s=3600)
    stop = threading.Event()
    route = CameraRoute(threshold=0.5)
    handled: list[str] = []
    with httpfault.FaultServer() as server:
        server.default = reply(det())
        client = FocoosClient(server.url, "k-0123", timeout_s=5)
        uplink = Uplink(client, "m", {"cam": route}, LiveQueue(per_camera=8), spool,
                        lambda job, result, delivery: handled.append(job.frame_id),
                        InferenceHealth(lambda s, d: None), stop, default_route=route, max_in_flight=1)
        uplink.start()
        try:
            uplink.queue.put(make_job(n=1, jpeg=b""))
            uplink.queue.put(make_job(n=2))
            wait_until(lambda: len(handled) == 1, 30, message=lambda: f"handled {handled}")
            assert uplink.counters["cam"].dead_lettered == {"worker_error": 1}
            assert uplink.restarts()["uplink-0"] == 1 and uplink.alive()
        finally:
            stop.set()
            uplink.join(5)
            client.close()
            spool.close()
