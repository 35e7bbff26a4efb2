"""Outages on real processes: inference down for a minute, the broker and the daemon killed with -9.

The fault loops are shared with scripts/fault_stress.py (which runs them at a larger scale); these
tests run them small and check the guarantees: every sampled frame is published or still pending,
`replayed` marks the frames that waited for inference, the spool survives SIGKILL intact, and each
clean stop ends with the exact accounting identity. After a kill during an inference outage,
"progress" is new frames committed to the spool (no detection can come); with inference up, it is
new detections.

The last two tests pin down the final stats message (taken after the outbox flush) and `replayed` for
messages that waited for the broker (docs/mqtt.md).
"""

from __future__ import annotations

import calendar
import importlib.util
import itertools
import random
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from focoos_edge.tools.localserver import LocalServer


def _load_fault_stress():
    path = Path(__file__).resolve().parents[1] / "scripts" / "fault_stress.py"
    spec = importlib.util.spec_from_file_location("fault_stress", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_stress"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fs = _load_fault_stress()

OUTAGE_S = 60.0  # the figure: long enough for the breaker's backoff to reach its cap
EDGE_S = 1.5  # frames captured this close to an outage edge may be either live or replayed
OUTBOX_WINDOW = 50  # Publisher's default: outbox messages in flight per connection


@pytest.fixture(scope="module")
def clip(ffmpeg_tool, tmp_path_factory) -> Path:
    return fs.make_clip(tmp_path_factory.mktemp("outage-media") / "marker-640x360.mp4")


@pytest.fixture
def make_rig(tmp_path, clip, mosquitto_factory, mqtt_sub, spawn):
    """``make_rig(sample_fps, latency_s=0, persistent=False)`` -> a fault_stress.Rig on fixtures."""
    servers: list[LocalServer] = []

    def make(*, sample_fps: float, latency_s: float = 0.0, persistent: bool = False):
        broker = mosquitto_factory(port=fs.stable_port(), **(fs.PERSISTENT_BROKER if persistent else {}))
        sub = mqtt_sub(broker.port, "focoos/#", qos=1, persistent_id="sub1" if persistent else None)
        server = LocalServer(port=fs.stable_port(), api_key=fs.KEY, latency_s=latency_s)
        servers.append(server)
        return fs.Rig(tmp_path, clip, broker, sub, server, spawn, sample_fps)

    yield make
    for server in servers:
        server.stop()


def iso_ns(text: str) -> int:
    """A payload timestamp ('2026-11-26T19:40:00.123456Z') as Unix nanoseconds."""
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return (calendar.timegm(dt.timetuple()) * 1_000_000 + dt.microsecond) * 1000


def gaps_over(captured: list[int], limit_s: float, origin_s: float) -> list[str]:
    """Gaps between consecutive capture times above `limit_s`, located relative to `origin_s`."""
    times = sorted(captured)
    return [f"{(b - a) / 1e9:.2f} s gap at {a / 1e9 - origin_s:+.1f} s" for a, b in itertools.pairwise(times)
            if b - a > limit_s * 1e9]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_inference_outage_frames_wait_in_the_spool_and_are_replayed(make_rig, tmp_path):
    interval_s = 0.5
    # 0.2 s per request: the backlog takes seconds to drain, so live frames interleave with it.
    rig = make_rig(sample_fps=1 / interval_s, latency_s=0.2)
    rig.inference_up()
    daemon = rig.start_daemon()
    rig.sub.wait_count(f"{fs.PREFIX}/+/detections", 3, fs.PROGRESS_TIMEOUT_S, watch=[daemon])

    t_down = time.time()
    rig.inference_down()
    fs.pause(OUTAGE_S)
    spooled_before_restore = rig.sub.messages(f"{fs.PREFIX}/stats")[-1].json()["spool"]["frames"]["count"]
    mark = rig.sub.count
    t_up = time.time()
    rig.inference_up()
    ok = rig.sub.wait_for(lambda m: m.topic == f"{fs.PREFIX}/inference" and m.json()["state"] == "ok",
                          fs.PROGRESS_TIMEOUT_S + 60, "inference ok again", since=mark, watch=[daemon])
    t_ok = ok.received_at  # the outage as the daemon saw it ends with its first success
    rig.wait_drained(mark, daemon)
    drain_s = time.time() - t_ok
    final = rig.stop_daemon(daemon)
    snap = fs.snapshot_spool(rig.spool_db, tmp_path / "final-spool")

    payloads = rig.detections()
    seen = Counter(p["frame_id"] for p in payloads)
    cam = final["cameras"][fs.CAMERA]
    assert snap.integrity == "ok"
    assert max(seen.values()) == 1, [i for i, n in seen.items() if n > 1]  # the broker never went away
    assert (cam["evicted"], cam["dead_lettered"]) == (0, 0), cam
    # Frame ids, not counters: each frame produced was received or is still in the spool.
    assert len(set(seen) | snap.ids) == cam["produced"] and len(seen) >= cam["delivered"], (cam, len(seen))
    # Every sampled frame is published or still pending: no hole in the capture times.
    missing = gaps_over([fs.captured_ns(i) for i in set(seen) | snap.ids], 1.5 * interval_s, t_down)
    assert not missing, missing

    wrong_flag, moved = [], []
    for p in payloads:
        at_ns = fs.captured_ns(p["frame_id"])
        if iso_ns(p["captured_at"]) != at_ns // 1000 * 1000:
            moved.append(p)  # replayed or not, captured_at is the original capture time
        at_s = at_ns / 1e9
        if (t_down + EDGE_S <= at_s <= t_ok - EDGE_S and not p["replayed"]) or \
                ((at_s < t_down - EDGE_S or at_s > t_ok + EDGE_S) and p["replayed"]):
            wrong_flag.append((round(at_s - t_down, 2), p["replayed"]))
    assert not moved, moved[:3]
    assert not wrong_flag, (f"outage {t_ok - t_down:.1f} s", wrong_flag)
    replayed = [p for p in payloads if p["replayed"]]
    assert len(replayed) >= spooled_before_restore > 0
    assert all(iso_ns(p["published_at"]) >= t_up * 1e9 for p in replayed)  # sent late, stamped early

    # Live frames published while the backlog drained were not queued behind it.
    drain_end_ns = max(iso_ns(p["published_at"]) for p in replayed)
    live = [p for p in payloads if not p["replayed"] and t_ok * 1e9 <= iso_ns(p["published_at"]) <= drain_end_ns]
    backlog_age_ms = (t_ok - t_down) * 1000
    assert live, "no live frame was published while the backlog drained"
    worst_ms = max(p["latency_ms"]["total"] for p in live)
    assert worst_ms <= 0.05 * backlog_age_ms, [p["latency_ms"] for p in live]
    print(f"\ninference outage: {t_up - t_down:.1f} s down, daemon recovered {t_ok - t_up:.1f} s after the "
          f"restart; {spooled_before_restore} frames in the spool at the restart, {len(replayed)} replayed, "
          f"drained in {drain_s:.1f} s; {len(live)} live frames during the drain, worst total latency "
          f"{worst_ms:.0f} ms (backlog age {backlog_age_ms / 1000:.0f} s); {cam}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_broker_kill9_twenty_times_loses_no_detection(make_rig):
    rig = make_rig(sample_fps=4, persistent=True)
    seed = random.randrange(2**32)
    report = fs.broker_loop(rig, 20, random.Random(seed))
    figures = f"seed {seed}: {report.line()}, delivered {report.delivered}, pending {report.pending}, " \
              f"duplicates {report.duplicates}"
    print(f"\nbroker kill -9: {figures}")
    assert report.kills == 20
    # Every frame is accounted for by a frame id: received by the subscriber or still in the spool.
    assert report.lost == 0, figures
    assert report.expected > report.kills, figures  # messages flowed throughout, not a vacuous pass
    # Duplicates come only from resending what was in flight when a connection died.
    assert report.duplicates <= report.kills * OUTBOX_WINDOW, figures


@pytest.mark.timeout(600)
def test_daemon_kill9_while_spooling_loses_no_spooled_frame(make_rig):
    # Three kills while inference is down (frames spooling), the fourth while the backlog drains.
    rig = make_rig(sample_fps=4, latency_s=0.2)  # the backlog drains in seconds: the kill lands mid-drain
    seed = random.randrange(2**32)
    report = fs.crash_loop(rig, 4, random.Random(seed), drain_every=4)
    figures = f"seed {seed}: {report.line()}, duplicates {report.duplicates}, " \
              f"restart->progress {[round(s, 1) for s in report.progress_s]} s"
    print(f"\ndaemon kill -9: {figures}")
    assert report.kills == 4
    assert report.integrity == ["ok"] * 5, figures
    assert report.spooled_frames, figures  # frames really waited in the spool
    assert not report.lost, (figures, sorted(report.lost))
    assert not report.not_replayed, (figures, sorted(report.not_replayed))
    assert report.spooled <= set(rig.seen_ids())


def test_final_stats_describe_what_the_daemon_leaves_behind(make_rig, tmp_path):
    """The last stats message before `offline` is the run's final account: `pending` is what the spool
    holds after the exit and `delivered` what the subscriber received."""
    # 1 s per request: whenever SIGTERM comes, requests are in flight and their results reach the
    # outbox during the shutdown, after the cameras stopped.
    rig = make_rig(sample_fps=2, latency_s=1.0)
    rig.inference_up()
    daemon = rig.start_daemon()
    rig.sub.wait_count(f"{fs.PREFIX}/+/detections", 3, fs.PROGRESS_TIMEOUT_S, watch=[daemon])
    final = rig.stop_daemon(daemon)["cameras"][fs.CAMERA]
    snap = fs.snapshot_spool(rig.spool_db, tmp_path / "final-spool")
    seen = rig.seen_ids()
    assert max(seen.values()) == 1
    assert (final["pending"], final["delivered"]) == (len(snap.ids), len(seen)), \
        (final, f"{len(snap.frames)} frames and {len(snap.outbox)} messages left in the spool, "
                f"{len(seen)} frames received")
    # A camera stopped by the shutdown is still configured: it is not "removed", and its counters stay.
    assert (final["state"], final["sampled"]) == ("offline", final["produced"]), final


def test_messages_that_waited_for_the_broker_are_marked_replayed(make_rig):
    """docs/mqtt.md: `replayed` is true when the frame *or this message* waited in the spool because
    the inference API *or the broker* was unreachable."""
    rig = make_rig(sample_fps=2, persistent=True)
    rig.inference_up()
    daemon = rig.start_daemon()
    rig.sub.wait_count(f"{fs.PREFIX}/+/detections", 3, fs.PROGRESS_TIMEOUT_S, watch=[daemon])
    t_kill = time.time()
    rig.broker.kill()
    fs.pause(5.0)
    t_restart = time.time()
    rig.broker.start()
    online = rig.sub.wait_for(lambda m: m.topic == f"{fs.PREFIX}/availability" and m.payload == "online"
                              and not m.retained and m.received_at > t_restart,
                              fs.PROGRESS_TIMEOUT_S, "the daemon back online", watch=[daemon])
    mark = rig.sub.count
    rig.wait_drained(mark, daemon)
    rig.stop_daemon(daemon)

    wrong = []
    for p in rig.detections():
        at_s = fs.captured_ns(p["frame_id"]) / 1e9
        waited = t_kill + EDGE_S <= at_s <= t_restart
        live = at_s < t_kill - EDGE_S or at_s > online.received_at + EDGE_S
        if (waited and not p["replayed"]) or (live and p["replayed"]):
            wrong.append((round(at_s - t_kill, 2), p["replayed"]))
    assert any(t_kill + EDGE_S <= fs.captured_ns(i) / 1e9 <= t_restart for i in rig.seen_ids())
    assert not wrong, f"(capture time after the broker kill, replayed): {wrong}"
