"""Spool leases end where they were taken: a replayed frame whose result could not be stored goes
back to the spool (not attempted, not dead-lettered) and is delivered on a later attempt. Real parts:
the ArUco inference server, the uplink, the results stage, the SQLite spool, the publisher and
Mosquitto with an independent subscriber; the storage failure is real too (another connection holds
the database's write lock, as a second process would)."""

from __future__ import annotations

import sqlite3
import threading

import media
import yaml
from daemon_infra import KEY
from media import Marker
from procs import wait_until

from focoos_edge.capture import FrameJob, JpegEncoder, resize_to_max_side
from focoos_edge.config import load_config
from focoos_edge.delivery import Publisher, Spool, Topics
from focoos_edge.inference import CameraRoute, FocoosClient, InferenceHealth, LiveQueue, Uplink
from focoos_edge.results import Results
from focoos_edge.service import mqtt_settings
from focoos_edge.subscribers import SubscriberFeatures

MARKERS = (Marker(id=5, x=100, y=100, size=240), Marker(id=9, x=800, y=300, size=200))


def spooled_frame(spool: Spool) -> FrameJob:
    """A frame left in the spool by an outage, with two markers the server will find."""
    small, scale = resize_to_max_side(media.draw_marker_frame(1280, 720, MARKERS), 640)
    job = FrameJob(camera="cam", frame_id="cam-1", captured_at_ns=1_767_225_600 * 10**9, captured_mono=0.0,
                   width=1280, height=720, scale=scale, jpeg=JpegEncoder().encode(small, 85))
    spool.put_frame(job)
    return job


def frames_on_disk(spool: Spool) -> list[tuple[str, int]]:
    """(frame_id, attempts) as another connection reads them (WAL: readers pass a held write lock)."""
    db = sqlite3.connect(spool.path)
    try:
        return db.execute("SELECT frame_id, attempts FROM frames").fetchall()
    finally:
        db.close()


def results_of(uplink: Uplink) -> int:
    camera = uplink.snapshot().cameras.get("cam")
    return camera.results if camera else 0


def test_a_replayed_result_not_stored_goes_back_to_the_spool_and_is_delivered_later(
        local_server, mosquitto, mqtt_sub, tmp_path):
    raw = {"device_id": "box1", "state_dir": str(tmp_path / "state"),
           "inference": {"api_url": local_server.url, "api_key": KEY, "model_ref": "local-aruco"},
           "mqtt": {"host": "127.0.0.1", "port": mosquitto.port},
           "cameras": [{"name": "cam", "source": "rtsp://127.0.0.1:1/x", "counts": False}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(tmp_path / "c.yaml", environ={})
    sub = mqtt_sub(mosquitto.port, "focoos/box1/cam/detections")
    spool = Spool(tmp_path / "state" / "spool.db", 64 * 2**20, 3600)
    job = spooled_frame(spool)
    topics, stop = Topics("focoos", "box1"), threading.Event()
    publisher = Publisher(mqtt_settings(config), topics, spool)
    results = Results(config, topics, publisher, SubscriberFeatures(config, topics, publisher))
    client = FocoosClient(local_server.url, KEY, timeout_s=5.0)
    route = CameraRoute(threshold=0.5)
    uplink = Uplink(client, "local-aruco", {"cam": route}, LiveQueue(), spool, results.handle,
                    InferenceHealth(lambda state, detail: None), stop, default_route=route, max_in_flight=1)
    spool._db.execute("PRAGMA busy_timeout = 200")  # SQLite waits 10 s for a lock in the spool: 0.2 s here
    holder = sqlite3.connect(spool.path, isolation_level=None)
    try:
        publisher.start(stop)
        assert publisher.connected.wait(10)
        holder.execute("BEGIN IMMEDIATE")  # from now on every commit of the spool fails: "database is locked"
        uplink.start()
        # Inferred twice: the first result could not be stored, and its frame was handed out again.
        wait_until(lambda: results_of(uplink) >= 2, 30, message=lambda: f"{results_of(uplink)} results")
        assert frames_on_disk(spool) == [(job.frame_id, 0)]  # still there, not counted as an attempt
        assert spool.snapshot().outbox.count == 0 and sub.count == 0
        holder.execute("ROLLBACK")  # the disk works again
        message = sub.wait_for(lambda m: m.json()["frame_id"] == job.frame_id, 30, "the frame's detections")
        wait_until(lambda: spool.snapshot().frames.count == spool.snapshot().outbox.count == 0, 10,
                   message=lambda: f"{spool.snapshot()}")
    finally:
        holder.close()
        stop.set()
        uplink.join(timeout_s=10.0)
        publisher.stop()
        client.close()
    payload = message.json()
    assert payload["replayed"] is True
    assert sorted(d["label"] for d in payload["detections"]) == ["aruco_5", "aruco_9"]
    assert [m.json()["frame_id"] for m in sub.messages()] == [job.frame_id]  # delivered once
    up = uplink.snapshot().cameras["cam"]
    assert up.results >= 3 and not up.dead_lettered and up.spooled == 0
    assert not results.snapshot().cameras.get("cam").dead_lettered
    assert spool.evicted == {} and frames_on_disk(spool) == []
    spool.close()
