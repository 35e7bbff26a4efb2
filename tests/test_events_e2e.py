"""Events, zones and filters from the real daemon: a file camera, an inference server whose boxes the
test switches on and off (tests/httpfault.py), Mosquitto and an independent subscriber."""

from __future__ import annotations

import signal
import threading
import time
from datetime import datetime

import httpfault
from daemon_infra import KEY, TOPIC, daemon_command, daemon_config, stop_daemon

from focoos_edge.delivery import contract

END_AFTER_S = 2.0
SAMPLE_S = 0.5
# In the uploaded 640x360 image (the 1920x1080 frame scaled by 1/3): a person whose feet stand in
# the zone, a car too small for the `*` filter's min_area, a dog under its own min_score.
PERSON = {"bbox": [100, 60, 200, 300], "conf": 0.9, "cls_id": 0, "label": "person"}
TINY_CAR = {"bbox": [400, 10, 410, 20], "conf": 0.9, "cls_id": 2, "label": "car"}
WEAK_DOG = {"bbox": [300, 100, 500, 300], "conf": 0.7, "cls_id": 1, "label": "dog"}
ZONES = {"door": {"polygon": [[0.1, 0.7], [0.4, 0.7], [0.4, 0.95], [0.1, 0.95]], "labels": ["person"]},
         "street": {"polygon": [[0.6, 0.0], [1.0, 0.0], [1.0, 1.0], [0.6, 1.0]]}}
FILTERS = {"*": {"min_area": 0.001}, "dog": {"min_score": 0.8}}


def ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def switchable_server(present: threading.Event):
    """Model info on GET; on POST the three boxes while `present` is set, nothing otherwise."""
    info = httpfault.json(200, {"ref": "local-aruco", "name": "x", "task": "detection",
                                "status": "TRAINING_COMPLETED", "classes": ["person", "dog", "car"]})

    def reply(h):
        if h.command == "GET":
            return info(h)
        dets = [PERSON, TINY_CAR, WEAK_DOG] if present.is_set() else []
        return httpfault.json(200, {"detections": dets, "latency": {"inference": 0.01}})(h)
    return reply


def events(sub, since: int = 0) -> list[dict]:
    return [m.json() for m in sub.messages(f"{TOPIC}/cam/events", since=since)]


def wait_event(sub, kind: str, daemon, since: int = 0, event_id: str | None = None) -> dict:
    return sub.wait_for(lambda m: m.topic == f"{TOPIC}/cam/events" and m.json()["type"] == kind
                        and event_id in (None, m.json()["event_id"]), 30, f"an event {kind}",
                        since=since, watch=[daemon]).json()


def test_events_zones_filters_and_kill9(marker_clip, mosquitto, mqtt_sub, spawn, tmp_path):
    present = threading.Event()
    with httpfault.FaultServer() as server:
        server.default = switchable_server(present)
        sub = mqtt_sub(mosquitto.port, "focoos/#")
        config = daemon_config(
            tmp_path, api_url=server.url, mqtt_port=mosquitto.port, api_key=KEY,
            events={"min_frames": 2, "end_after_s": END_AFTER_S},
            cameras=[{"name": "cam", "source": f"file://{marker_clip.path}", "sample_fps": 1 / SAMPLE_S,
                      "max_side": 640, "zones": ZONES, "filters": FILTERS}])
        daemon = spawn(daemon_command(config), name="daemon")

        # 1. An object present in several frames, then gone: one new, one end, one event_id.
        present.set()
        new = wait_event(sub, "new", daemon)
        assert (new["label"], new["zones"], new["entered_zones"]) == ("person", ["door"], ["door"])
        assert new["box"] == [300.0, 180.0, 600.0, 900.0] and new["frames"] == 2 and not new["replayed"]
        occupied = sub.wait_for(lambda m: m.topic == f"{TOPIC}/cam/zones/door/person" and m.payload == "1",
                                10, "door occupied")
        assert occupied
        mark = sub.count
        sub.wait_count(f"{TOPIC}/cam/detections", 3, 20, since=mark)
        present.clear()
        end = wait_event(sub, "end", daemon, event_id=new["event_id"])
        assert end["entered_zones"] == ["door"] and end["frames"] >= 3
        # The end is declared by the first frame later than end_after_s (sampled every SAMPLE_S).
        assert END_AFTER_S <= ts(end["end_at"]) - ts(end["last_seen_at"]) <= END_AFTER_S + SAMPLE_S + 0.3, end
        sub.wait_for(lambda m: m.topic == f"{TOPIC}/cam/zones/door/person" and m.payload == "0", 10, "door empty")
        first = [e for e in events(sub) if e["event_id"] == new["event_id"]]
        assert [e["type"] for e in first][0] == "new" and [e["type"] for e in first].count("end") == 1
        assert all(e["type"] == "update" for e in first[1:-1])

        # Filters drop the tiny car and the weak dog from detections, counts and events alike.
        dets = [d for m in sub.messages(f"{TOPIC}/cam/detections") for d in m.json()["detections"]]
        assert dets and {d["label"] for d in dets} == {"person"}
        assert all(d["zones"] == ["door"] for d in dets)
        assert {d.get("event_id") for d in dets} - {None} == {new["event_id"]}
        assert not sub.messages(f"{TOPIC}/cam/car") and not sub.messages(f"{TOPIC}/cam/dog")
        assert {e["label"] for e in events(sub)} == {"person"}

        # 2. kill -9 with an event open: the next start ends it.
        present.set()
        mark = sub.count
        second = wait_event(sub, "new", daemon, since=mark)
        daemon.signal(signal.SIGKILL)
        daemon.wait(10)
        present.clear()
        mark = sub.count
        daemon = spawn(daemon_command(config), name="daemon-restarted")
        end2 = wait_event(sub, "end", daemon, since=mark, event_id=second["event_id"])
        assert end2["label"] == "person" and end2["entered_zones"] == ["door"]
        stop_daemon(daemon, sub)

    every = events(sub)
    for e in every:
        contract.validate("events", e)
    news = [e["event_id"] for e in every if e["type"] == "new"]
    ends = [e["event_id"] for e in every if e["type"] == "end"]
    assert sorted(news) == sorted(ends) and len(set(news)) == len(news) == 2, every


def test_results_out_of_capture_order_are_tracked_in_order(marker_clip, mosquitto, mqtt_sub, spawn, tmp_path):
    """Four requests in flight, replies delayed so later frames finish first: detections still go out
    in capture order and the object makes one event, not several."""
    present = threading.Event()
    finished: list[tuple[float, float]] = []  # (arrival, reply) of every inference request
    lock = threading.Lock()
    count = [0]
    plain = switchable_server(present)

    def reply(h):
        if h.command == "POST":
            arrived = time.monotonic()
            with lock:
                count[0] += 1
                slow = count[0] % 2 == 1
            time.sleep(0.7 if slow else 0.05)  # odd requests finish after the even ones behind them
            plain(h)
            with lock:
                finished.append((arrived, time.monotonic()))
            return None
        return plain(h)

    with httpfault.FaultServer() as server:
        server.default = reply
        sub = mqtt_sub(mosquitto.port, "focoos/#")
        config = daemon_config(
            tmp_path, api_url=server.url, mqtt_port=mosquitto.port, api_key=KEY,
            inference={"max_in_flight": 4}, events={"min_frames": 2, "end_after_s": END_AFTER_S},
            cameras=[{"name": "cam", "source": f"file://{marker_clip.path}", "sample_fps": 4, "max_side": 640,
                      "zones": ZONES, "filters": FILTERS}])
        daemon = spawn(daemon_command(config), name="daemon")
        present.set()
        new = wait_event(sub, "new", daemon)
        sub.wait_count(f"{TOPIC}/cam/detections", 16, 30)
        present.clear()
        wait_event(sub, "end", daemon, event_id=new["event_id"])
        stop_daemon(daemon, sub)
    with lock:
        overtaken = sum(1 for a1, f1 in finished for a2, f2 in finished if a1 < a2 and f1 > f2)
    assert overtaken > 0, finished  # the server really answered out of order
    captured = [m.json()["captured_at"] for m in sub.messages(f"{TOPIC}/cam/detections")
                if not m.json()["replayed"]]
    assert captured == sorted(captured)
    ids = {e["event_id"] for e in events(sub)}
    assert ids == {new["event_id"]}, events(sub)
