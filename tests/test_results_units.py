"""The results stage's pure parts: geometry, filters, zones, occupancy, tracker, reorder buffer,
open-event store, their config validation (exit 78 naming the key), and the events schema."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from focoos_edge.common.geometry import contains, iou, self_intersection
from focoos_edge.config.load import ConfigError
from focoos_edge.config.models import load_config
from focoos_edge.config.results import EventsConfig, FilterConfig, ZoneConfig
from focoos_edge.delivery import contract
from focoos_edge.inference.parse import Detection
from focoos_edge.results.filters import apply_filters
from focoos_edge.results.payloads import ended, event_payload
from focoos_edge.results.reorder import ReorderBuffer
from focoos_edge.results.store import OpenEventStore
from focoos_edge.results.track import NS, Seen, Tracker
from focoos_edge.results.zones import Occupancy, zones_of

SQUARE = ((0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5))


def det(label: str, conf: float, box: tuple[float, float, float, float]) -> Detection:
    return Detection(label=label, cls_id=0, conf=conf, bbox=box)


# -- geometry ------------------------------------------------------------------------------------------
def test_point_in_polygon_including_boundary_and_concave():
    assert contains(SQUARE, (0.25, 0.25)) and contains(SQUARE, (0.5, 0.25))  # inside, on an edge
    assert not contains(SQUARE, (0.6, 0.25))
    u_shape = ((0, 0), (3, 0), (3, 3), (2, 3), (2, 1), (1, 1), (1, 3), (0, 3))
    assert contains(u_shape, (0.5, 2)) and not contains(u_shape, (1.5, 2))


def test_self_intersection_found_and_simple_polygons_pass():
    assert self_intersection(SQUARE) is None
    assert self_intersection(((0, 0), (1, 1), (1, 0), (0, 1))) == (0, 2)  # a bow tie


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


# -- filters -------------------------------------------------------------------------------------------
def test_filters_by_score_area_and_ratio_with_label_over_star():
    filters = {"*": FilterConfig(min_area=0.01), "person": FilterConfig(min_score=0.6, max_ratio=1.0)}
    dets = [det("car", 0.9, (0, 0, 5, 5)),          # 25 / 10000 of the frame: below min_area
            det("car", 0.9, (0, 0, 20, 20)),        # 4 %: kept
            det("person", 0.5, (0, 0, 10, 40)),     # score too low
            det("person", 0.7, (0, 0, 40, 10)),     # ratio 4 > 1
            det("person", 0.7, (0, 0, 2, 8))]       # tiny, but person's own filter replaces '*'
    kept = apply_filters(dets, filters, 100, 100)
    assert [d.bbox for d in kept] == [(0, 0, 20, 20), (0, 0, 2, 8)]
    assert apply_filters(dets, {}, 100, 100) == dets


# -- zones and occupancy -------------------------------------------------------------------------------
def test_zones_use_bottom_centre_and_labels():
    zones = {"door": ZoneConfig(polygon=SQUARE), "cars": ZoneConfig(polygon=SQUARE, labels=("car",))}
    standing = det("person", 0.9, (10, 0, 30, 40))   # bottom-centre (20, 40) of 100x100: in
    head_only = det("person", 0.9, (10, 30, 30, 80))  # top in the square, feet (20, 80) outside
    assert zones_of(standing, zones, 100, 100) == ("door",)
    assert zones_of(head_only, zones, 100, 100) == ()
    assert zones_of(det("car", 0.9, (10, 0, 30, 40)), zones, 100, 100) == ("door", "cars")


def test_occupancy_changes_only_and_back_to_zero():
    occ = Occupancy("p/d", "cam", {"door": ZoneConfig(polygon=SQUARE, labels=("person",))})
    assert occ.update([], 1) == [("p/d/cam/zones/door/person", 0)]  # stale retained value overwritten
    assert occ.update([("person", ("door",)), ("person", ("door",))], 2) == [("p/d/cam/zones/door/person", 2)]
    assert occ.update([("person", ("door",))], 1) == []  # older frame: ignored
    assert occ.update([("person", ("door",)), ("person", ("door",))], 3) == []
    assert occ.update([], 4) == [("p/d/cam/zones/door/person", 0)]


# -- tracker -------------------------------------------------------------------------------------------
def run(tracker: Tracker, frames: list[list[Seen]], step_s: float = 0.5) -> list:
    out = []
    for i, seen in enumerate(frames):
        out += tracker.step(seen, int(i * step_s * NS))[1]
    return out


def test_one_object_gives_new_updates_and_one_end():
    tracker = Tracker("cam", EventsConfig(min_frames=2, end_after_s=2))
    moving = [[Seen("person", 0.5 + i / 100, (10 + i, 10, 50 + i, 90), ("door",) if i >= 4 else ())]
              for i in range(8)]
    events = run(tracker, moving + [[]] * 6)
    kinds = [e.kind for e in events]
    assert kinds[0] == "new" and kinds[-1] == "end" and kinds.count("new") == kinds.count("end") == 1
    assert len({e.event_id for e in events}) == 1
    end = events[-1]
    assert end.entered_zones == ("door",) and end.frames == 8
    assert (end.end_ns - end.last_seen_ns) / NS == pytest.approx(2.0, abs=0.5)  # end_after_s, one sample
    updates = [e for e in events if e.kind == "update"]
    assert all((b.end_ns or 0) >= 0 for b in updates)
    stamps = [e.last_seen_ns for e in updates]
    assert all(b - a >= NS for a, b in zip(stamps, stamps[1:], strict=False))  # at most 1/s


def test_label_gates_matching_and_flicker_never_becomes_an_event():
    tracker = Tracker("cam", EventsConfig(min_frames=3, end_after_s=1))
    frames = [[Seen("person", 0.9, (0, 0, 10, 10))], [Seen("car", 0.9, (0, 0, 10, 10))],
              [Seen("person", 0.9, (0, 0, 10, 10))], [], [], [], []]
    assert run(tracker, frames) == []


def test_two_objects_keep_their_ids_and_stationary_is_reported():
    tracker = Tracker("cam", EventsConfig(min_frames=1, end_after_s=5, stationary_after_s=2))
    a, b = (0, 0, 10, 10), (50, 50, 60, 60)
    ids = [tracker.step([Seen("car", 0.9, a), Seen("car", 0.9, b)], i * NS)[0] for i in range(4)]
    assert ids[0] == ids[-1] and ids[0][0] != ids[0][1]
    assert any(t.stationary for t in tracker.tracks)
    assert len(tracker.end_all(10 * NS)) == 2 and tracker.tracks == []


def test_tick_expiry_ends_events_without_frames():
    tracker = Tracker("cam", EventsConfig(min_frames=1, end_after_s=3))
    tracker.step([Seen("dog", 0.9, (0, 0, 10, 10))], 0)
    assert tracker.expire(2 * NS) == []
    assert [e.kind for e in tracker.expire(3 * NS)] == ["end"]


# -- reorder buffer --------------------------------------------------------------------------------------
def test_reorder_releases_in_capture_order_and_gives_up_after_the_wait():
    buf = ReorderBuffer(wait_s=2.0)
    for ns in (1, 2, 3):
        buf.expect(ns, now_s=0.0)
    assert buf.arrive(2, "b", now_s=0.1) == []   # frame 1 still in flight
    assert buf.arrive(1, "a", now_s=0.2) == ["a", "b"]
    assert buf.release(now_s=1.0) == []          # frame 3 may still come
    buf.expect(4, now_s=1.5)
    assert buf.arrive(4, "d", now_s=1.6) == []
    assert buf.release(now_s=2.1) == ["d"]       # frame 3 given up after 2 s
    assert buf.arrive(3, "c", now_s=2.2) is None and buf.late == 1


# -- store and payloads ------------------------------------------------------------------------------------
def test_store_keeps_open_events_atomically(tmp_path: Path):
    tracker = Tracker("cam", EventsConfig(min_frames=1))
    (_, [new]) = tracker.step([Seen("cat", 0.8, (0, 0, 10, 10))], 5 * NS)
    payload = event_payload(new, device_id="box", camera="cam", replayed=False)
    contract.validate("events", payload)
    store = OpenEventStore(tmp_path)
    store.record(payload)
    assert [e["event_id"] for e in OpenEventStore(tmp_path).load()] == [new.event_id]
    end = ended(payload, 9 * NS)
    contract.validate("events", end)
    store.record(end)
    assert OpenEventStore(tmp_path).load() == [] and not list(tmp_path.glob("*.tmp"))
    (tmp_path / "open_events.json").write_text("{garbage")
    assert OpenEventStore(tmp_path).load() == []


# -- config ---------------------------------------------------------------------------------------------
BASE = """\
inference: {api_key: k-123456, model_ref: m}
cameras:
  - name: cam
    source: rtsp://127.0.0.1:8554/cam
"""
BAD = {
    "two_points": ("    zones:\n      door: {polygon: [[0, 0], [1, 1]]}\n", "cameras[0].zones.door.polygon"),
    "out_of_range": ("    zones:\n      door: {polygon: [[0, 0], [1.5, 0], [1, 1]]}\n",
                     "cameras[0].zones.door.polygon[1][0]"),
    "bow_tie": ("    zones:\n      door: {polygon: [[0, 0], [1, 1], [1, 0], [0, 1]]}\n",
                "cameras[0].zones.door.polygon"),
    "duplicate": ("    zones:\n      door: {polygon: [[0, 0], [1, 0], [1, 1]]}\n"
                  "      door: {polygon: [[0, 0], [1, 0], [1, 1]]}\n", "cameras[0].zones.door"),
    "unknown_zone_key": ("    zones:\n      door: {polygon: [[0, 0], [1, 0], [1, 1]], colour: red}\n",
                         "cameras[0].zones.door.colour"),
    "unknown_filter_key": ("    filters:\n      person: {min_size: 3}\n", "cameras[0].filters.person.min_size"),
    "filter_bounds": ("    filters:\n      '*': {min_area: 0.5, max_area: 0.1}\n", "cameras[0].filters.*.max_area"),
    "bad_zone_name": ("    zones:\n      Front Door: {polygon: [[0, 0], [1, 0], [1, 1]]}\n", "cameras[0].zones"),
    "events_key": ("    events: {min_frame: 3}\n", "cameras[0].events.min_frame"),
}


@pytest.mark.parametrize(("extra", "key"), list(BAD.values()), ids=list(BAD))
def test_bad_zones_filters_events_name_the_key(tmp_path: Path, extra: str, key: str):
    path = tmp_path / "c.yaml"
    path.write_text(BASE + extra)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert any(line.startswith(key) for line in caught.value.errors), caught.value.errors


def test_check_config_exits_78_naming_the_key(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(BASE + "    zones:\n      door: {polygon: [[0, 0], [1, 1], [1, 0], [0, 1]]}\n")
    done = subprocess.run([sys.executable, "-m", "focoos_edge", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 78 and "cameras[0].zones.door.polygon" in done.stderr, done.stderr


def test_events_override_per_camera(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent("""\
        events: {end_after_s: 9}
        """) + BASE + "    events: {min_frames: 4}\n")
    config = load_config(path, environ={})
    got = config.events_for(config.cameras[0])
    assert (got.min_frames, got.end_after_s, got.enabled) == (4, 9, True)
    assert json.dumps(config.redacted())
