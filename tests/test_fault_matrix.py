"""Fault matrix: the real daemon against an inference API that fails in scripted ways.

Each test runs `python -m focoos_edge run` as a subprocess with a `file://` camera, a real Mosquitto
and a mosquitto_sub subscriber. The Focoos API is a FaultServer whose behaviour the test switches
while the daemon runs (FakeFocoos: model info on GET, inference on POST, every reply logged with its
time and the digest of the uploaded JPEG). What is checked is the observable contract: the retained
inference state, what the server received and when, what the subscriber received (`replayed`,
frame ids), the stats, the spool files on disk, and the accounting identity
`produced == delivered + pending + evicted + dead_lettered` on the final stats of every run.

"Draining" stops the camera by deleting its (short, looping) clip: the file cannot be reopened at
its next loop, no new frame is produced, and the backlog can be waited out exactly.

Measurements (requests during a fault, recovery time, frames spooled, replayed, dead-lettered) are
printed with a `[fault-matrix]` prefix: run with `-s` to see them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpfault
import media
import pytest
from daemon_infra import daemon_command, daemon_config, stop_daemon
from mqtt_infra import MqttSubscriber
from procs import ChildProcess, wait_until

KEY = "fault-key-0123"
CAM = "cam"
TOPIC = "focoos/box1"
DETECTIONS = f"{TOPIC}/{CAM}/detections"
INFERENCE = f"{TOPIC}/inference"
STATS = f"{TOPIC}/stats"
CAMERA_STATE = f"{TOPIC}/{CAM}/state"
SAMPLE_FPS = 4
BURST_S = 4.0
MIB = 1024 * 1024

MODEL_INFO = {"ref": "local-aruco", "name": "fault-model", "task": "detection",
              "status": "TRAINING_COMPLETED", "classes": ["person", "car"], "im_size": 640}
GOOD = httpfault.json(200, {"detections": [{"bbox": [10, 20, 110, 220], "conf": 0.9, "cls_id": 0,
                                            "label": "person"}],
                            "latency": {"inference": 0.004}})

Behaviour = httpfault.Behaviour
Picker = Callable[[str], tuple[str, Behaviour]]  # JPEG digest -> (label, behaviour)


# -- the fake API -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """One request the fake API answered: when its behaviour ran (monotonic s), what it did, and
    the digest and size of the uploaded JPEG (POST only)."""

    at: float
    method: str
    label: str
    digest: str | None = None
    jpeg_bytes: int = 0


def constant(label: str, behaviour: Behaviour) -> Picker:
    """The same reply for every frame."""
    return lambda digest: (label, behaviour)


class FakeFocoos:
    """A FaultServer behaviour: model info on GET, inference on POST, both switchable at run time."""

    def __init__(self, server: httpfault.FaultServer):
        self._server = server
        self._lock = threading.Lock()
        self._info: tuple[str, Behaviour] = ("ok", httpfault.json(200, MODEL_INFO))
        self._infer: Picker = constant("ok", GOOD)
        self._once: list[tuple[str, Behaviour]] = []
        self._log: list[Reply] = []

    def inference(self, label: str, behaviour: Behaviour) -> None:
        """Answer every upload from now on with `behaviour`."""
        self.inference_picker(constant(label, behaviour))

    def inference_picker(self, picker: Picker) -> None:
        """Choose each upload's reply from its JPEG's digest."""
        with self._lock:
            self._infer = picker

    def model_info(self, label: str, behaviour: Behaviour) -> None:
        with self._lock:
            self._info = (label, behaviour)

    def fail_all(self, label: str, behaviour: Behaviour) -> None:
        """Model info and inference both answer with `behaviour`."""
        self.model_info(label, behaviour)
        self.inference(label, behaviour)

    def heal(self) -> None:
        self.model_info("ok", httpfault.json(200, MODEL_INFO))
        self.inference("ok", GOOD)

    def once(self, label: str, behaviour: Behaviour) -> None:
        """Answer the next upload only with `behaviour`."""
        with self._lock:
            self._once.append((label, behaviour))

    def replies(self, method: str | None = None, label: str | None = None, since: float = 0.0) -> list[Reply]:
        with self._lock:
            return [r for r in self._log if (method is None or r.method == method)
                    and (label is None or r.label == label) and r.at >= since]

    def __call__(self, h) -> None:
        at = time.monotonic()
        digest, size = (None, 0) if h.command == "GET" else self._upload(h.client_address[1])
        with self._lock:
            if h.command == "GET":
                label, behaviour = self._info
            elif self._once:
                label, behaviour = self._once.pop(0)
            else:
                label, behaviour = self._infer(digest)
            self._log.append(Reply(at, h.command, label, digest, size))
        behaviour(h)

    def _upload(self, client_port: int) -> tuple[str, int]:
        # The handler has read and recorded the body; a connection serves one request at a time,
        # so the last record from this client port is this request.
        rec = next(r for r in reversed(self._server.requests) if r.client_port == client_port)
        jpeg = httpfault.multipart_parts(rec)[0].data
        return hashlib.sha256(jpeg).hexdigest(), len(jpeg)


class PoisonFrames:
    """Gives each of the first frames uploaded (one per entry of `plan`, told apart by their JPEG)
    a faulty reply, the same on every retry of that frame; every other frame gets a good reply."""

    def __init__(self, plan: list[tuple[str, Behaviour]]):
        self._plan = list(plan)
        self._lock = threading.Lock()
        self.assigned: dict[str, tuple[str, Behaviour]] = {}

    def __call__(self, digest: str) -> tuple[str, Behaviour]:
        with self._lock:
            if digest not in self.assigned and self._plan:
                self.assigned[digest] = self._plan.pop(0)
            return self.assigned.get(digest, ("ok", GOOD))


# -- the rig: fake API + broker + subscriber + daemon -----------------------------------------
@dataclass(frozen=True)
class Instant:
    """A moment on both clocks: monotonic (server logs) and wall (payload timestamps)."""

    mono: float
    wall: float


def now() -> Instant:
    return Instant(time.monotonic(), time.time())


@dataclass
class Rig:
    """The fake API, the subscriber and what is needed to (re)start the daemon under test."""

    api: FakeFocoos
    server: httpfault.FaultServer
    sub: MqttSubscriber
    mqtt_port: int
    tmp_path: Path
    spawn: Callable[..., ChildProcess]
    config: Path | None = None

    @property
    def state_dir(self) -> Path:
        return self.tmp_path / "state"

    def copy_clip(self, clip: Path) -> Path:
        """A private copy of a clip, which the test may delete to stop the camera."""
        return Path(shutil.copy(clip, self.tmp_path / clip.name))

    def start(self, clip: Path, *, camera: dict | None = None, **top) -> ChildProcess:
        cam = {"name": CAM, "source": f"file://{clip}", "sample_fps": SAMPLE_FPS, "max_side": 640,
               **(camera or {})}
        self.config = daemon_config(self.tmp_path, api_url=self.server.url, mqtt_port=self.mqtt_port,
                                    api_key=KEY, cameras=[cam], **top)
        return self.restart()

    def restart(self) -> ChildProcess:
        """Start the daemon again with the last config (same state_dir, so the same spool)."""
        return self.spawn(daemon_command(self.config), name="daemon")


@pytest.fixture
def rig(mosquitto, mqtt_sub, spawn, tmp_path):
    with httpfault.FaultServer() as server:
        api = FakeFocoos(server)
        server.default = api
        yield Rig(api, server, mqtt_sub(mosquitto.port, "focoos/#"), mosquitto.port, tmp_path, spawn)


def _clip(tmp_path_factory, name: str, width: int, height: int, seconds: int) -> Path:
    # 8 fps keeps the daemon's decoding cheap on a shared 2-core machine; sampling is 4 fps.
    return media.make_test_clip(tmp_path_factory.mktemp("fault-media") / name, width, height, 8, seconds)


@pytest.fixture(scope="session")
def short_clip(ffmpeg_tool, tmp_path_factory) -> Path:
    """3 s at 640x360: it loops often, so deleting a copy stops the camera within 3 s."""
    return _clip(tmp_path_factory, "short-360p.mp4", 640, 360, 3)


@pytest.fixture(scope="session")
def long_clip(ffmpeg_tool, tmp_path_factory) -> Path:
    """60 s at 640x360: every sampled frame of a test's run is a different picture (a different JPEG)."""
    return _clip(tmp_path_factory, "long-360p.mp4", 640, 360, 60)


@pytest.fixture(scope="session")
def large_clip(ffmpeg_tool, tmp_path_factory) -> Path:
    """30 s at 1280x720: about 105 KB per frame at max_side 1280 and jpeg_quality 95."""
    return _clip(tmp_path_factory, "large-720p.mp4", 1280, 720, 30)


# -- observing the daemon ---------------------------------------------------------------------
def report(what: str, **figures) -> None:
    print(f"[fault-matrix] {what}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def cam(stats: dict) -> dict:
    return stats["cameras"][CAM]


def wall(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def states(rig: Rig, since: int = 0) -> list[str]:
    return [m.json()["state"] for m in rig.sub.messages(INFERENCE, since)]


def payloads(rig: Rig, since: int = 0) -> list[dict]:
    return [m.json() for m in rig.sub.messages(DETECTIONS, since)]


def wait_state(rig: Rig, state: str, since: int, daemon: ChildProcess, timeout_s: float = 30) -> dict:
    return rig.sub.wait_for(lambda m: m.topic == INFERENCE and m.json()["state"] == state, timeout_s,
                            f"inference state {state}", since=since, watch=[daemon]).json()


def wait_stats(rig: Rig, pred: Callable[[dict], bool], timeout_s: float, what: str, daemon: ChildProcess,
               since: int | None = None) -> dict:
    """The first stats message (published after `since`, default: from now on) satisfying `pred`."""
    return rig.sub.wait_for(lambda m: m.topic == STATS and pred(m.json()), timeout_s, what,
                            since=rig.sub.count if since is None else since, watch=[daemon]).json()


def fresh_stats(rig: Rig, daemon: ChildProcess) -> dict:
    return wait_stats(rig, lambda s: True, 15, "a stats message", daemon)


def wait_steady(rig: Rig, daemon: ChildProcess) -> dict:
    """Inference ok, results flowing, nothing waiting in the spool."""
    wait_state(rig, "ok", 0, daemon, timeout_s=60)
    rig.sub.wait_count(DETECTIONS, 2, 60, watch=[daemon])
    return wait_stats(rig, lambda s: s["spool"]["frames"]["count"] == 0 and s["spool"]["outbox"]["count"] == 0,
                      30, "an empty spool before the fault", daemon)


def hold_until(deadline_mono: float) -> None:
    """Let a fault last until `deadline_mono` (the daemon works meanwhile; nothing to wait on)."""
    remaining = deadline_mono - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


def stop_camera_and_drain(rig: Rig, clip: Path, daemon: ChildProcess) -> dict:
    """Delete the camera's clip, wait until the backlog is empty, stop the daemon: its final stats."""
    mark = rig.sub.count
    clip.unlink()
    rig.sub.wait_for(lambda m: m.topic == CAMERA_STATE and m.json()["state"] != "streaming", 30,
                     "camera stopped (clip deleted)", since=mark, watch=[daemon])
    wait_stats(rig, lambda s: cam(s)["pending"] == 0, 60, "backlog drained", daemon)
    return stop_daemon(daemon, rig.sub)


def assert_all_delivered_once(rig: Rig, final: dict) -> list[dict]:
    """Exact accounting after draining: every produced frame reached the subscriber, once; the
    frames that waited in the spool, and only those, say `replayed`."""
    c = cam(final)
    assert (c["produced"], c["pending"], c["evicted"], c["dead_lettered"]) == (c["delivered"], 0, 0, 0), c
    msgs = payloads(rig)
    ids = [p["frame_id"] for p in msgs]
    assert len(ids) == len(set(ids)) == c["delivered"], (len(ids), len(set(ids)), c)
    assert sum(p["replayed"] for p in msgs) == c["spooled"], c
    return msgs


# -- transient faults: retried, spooled, replayed -----------------------------------------------
TRANSIENT_FAULTS = [
    pytest.param(httpfault.json(500, {"detail": "internal error"}), "server_error", {}, id="http-500"),
    pytest.param(httpfault.json(503, {"detail": "overloaded"}), "server_error", {}, id="http-503"),
    pytest.param(httpfault.reset(), "unreachable", {}, id="connection-reset"),
    pytest.param(httpfault.hang(5), "timeout", {"timeout_s": 1}, id="hang-past-timeout"),
    # Network trouble, not bad frames (issue 12): a redirect and a captive portal's login page.
    pytest.param(httpfault.raw(302, b"", headers={"Location": "http://127.0.0.1:9/login"}), "unreachable", {},
                 id="redirect-302"),
    pytest.param(httpfault.raw(200, b"<html><body>Sign in to the guest Wi-Fi</body></html>", "text/html"),
                 "unreachable", {}, id="captive-portal-html-200"),
]


@pytest.mark.parametrize("fault, state, inference", TRANSIENT_FAULTS)
def test_transient_burst_is_spooled_then_replayed(rig, short_clip, fault, state, inference):
    """A burst of transient failures: no retry storm (circuit breaker), the state says why, and
    once the API is healthy again every frame is published, the ones that waited as replayed."""
    clip = rig.copy_clip(short_clip)
    daemon = rig.start(clip, inference=inference)
    before = wait_steady(rig, daemon)
    mark = rig.sub.count
    rig.api.inference("fault", fault)
    t0 = now()
    wait_state(rig, state, mark, daemon)
    hold_until(t0.mono + BURST_S)
    wait_stats(rig, lambda s: cam(s)["spooled"] >= cam(before)["spooled"] + 3, 30, "frames spooled", daemon)
    t1 = now()
    rig.api.inference("ok", GOOD)
    wait_state(rig, "ok", mark, daemon, timeout_s=60)
    recovered = rig.api.replies("POST", "ok", since=t1.mono)[0].at - t1.mono

    seen = states(rig, mark)
    assert seen[0] == state and seen[-1] == "ok" and set(seen) == {state, "ok"}, seen
    during = rig.api.replies(label="fault")
    burst_s = t1.mono - t0.mono
    assert during and not rig.api.replies("GET", since=t0.mono), rig.api.replies(since=t0.mono)
    # Without a breaker every frame would be tried 3 times (4 fps -> 12 requests/s).
    assert len(during) < 3 * burst_s, (len(during), burst_s)

    final = stop_camera_and_drain(rig, clip, daemon)
    msgs = assert_all_delivered_once(rig, final)
    c = cam(final)
    assert c["errors"].get(state, 0) >= 1, c["errors"]
    waited = [p for p in msgs if p["replayed"]]
    assert c["spooled"] > cam(before)["spooled"] and waited
    assert any(t0.wall <= wall(p["captured_at"]) <= t1.wall for p in waited), [p["captured_at"] for p in waited]
    report(state, burst_s=round(burst_s, 1), requests_during_burst=len(during),
           requests_per_s=round(len(during) / burst_s, 2), recovered_after_s=round(recovered, 2),
           produced=c["produced"], spooled=c["spooled"], replayed=len(waited))


def test_retry_after_is_honoured(rig, short_clip):
    """429 with Retry-After: 3: nothing is sent for 3 s, frames wait in the spool, then all go."""
    retry_after_s, in_flight_grace_s = 3.0, 0.5
    clip = rig.copy_clip(short_clip)
    daemon = rig.start(clip)
    before = wait_steady(rig, daemon)
    mark = rig.sub.count
    rig.api.once("429", httpfault.json(429, {"detail": "slow down"}, {"Retry-After": "3"}))
    limited = wait_until(lambda: rig.api.replies(label="429"), 30, message="the 429 was served")[0]
    wait_state(rig, "rate_limited", mark, daemon)
    wait_state(rig, "ok", mark, daemon, timeout_s=60)

    later = rig.api.replies(since=limited.at + 1e-6)
    quiet = [r for r in later if limited.at + in_flight_grace_s < r.at < limited.at + retry_after_s]
    assert not quiet, [(round(r.at - limited.at, 3), r.method, r.label) for r in quiet]
    resumed = next(r.at for r in later if r.at > limited.at + in_flight_grace_s) - limited.at
    assert resumed >= retry_after_s
    assert states(rig, mark) == ["rate_limited", "ok"]

    final = stop_camera_and_drain(rig, clip, daemon)
    msgs = assert_all_delivered_once(rig, final)
    c = cam(final)
    assert c["errors"] == {"rate_limited": 1}
    assert c["spooled"] > cam(before)["spooled"]
    report("rate_limited", first_request_after_429_s=round(resumed, 2),
           requests_within_grace=sum(r.at <= limited.at + in_flight_grace_s for r in later),
           spooled=c["spooled"], replayed=sum(p["replayed"] for p in msgs))


# -- auth / unknown model: uploads paused, frames kept ------------------------------------------
PAUSE_FAULTS = [
    pytest.param(401, "auth_failed", 10.0, id="http-401", marks=pytest.mark.slow),
    pytest.param(403, "auth_failed", 5.0, id="http-403"),
    pytest.param(404, "model_not_found", 5.0, id="http-404"),
]


@pytest.mark.parametrize("status, state, window_s", PAUSE_FAULTS)
def test_auth_and_unknown_model_pause_uploads(rig, long_clip, status, state, window_s):
    """401/403/404 pause uploads: a couple of requests, not one per frame; frames are kept in the
    spool; one error line. The daemon re-checks the model only every 60 s (uplink's
    probe_interval_s, not configurable), so resuming is checked across a restart: the kept frames
    are then published as replayed."""
    daemon = rig.start(long_clip)
    wait_steady(rig, daemon)
    mark = rig.sub.count
    rig.api.fail_all("fault", httpfault.json(status, {"detail": f"nope ({status})"}))
    detail = wait_state(rig, state, mark, daemon)["detail"]
    assert str(status) in detail and KEY not in detail
    first = rig.api.replies(label="fault")[0]
    stats_a = fresh_stats(rig, daemon)
    hold_until(first.at + window_s)
    stats_b = fresh_stats(rig, daemon)

    window = [r for r in rig.api.replies(since=first.at) if r.at <= first.at + window_s]
    methods = Counter(r.method for r in window)
    # The upload that failed (maybe one more already in flight) and one model check.
    assert methods["POST"] <= 2 and methods["GET"] <= 1, window
    grown = stats_b["spool"]["frames"]["count"] - stats_a["spool"]["frames"]["count"]
    assert grown >= window_s - 2, (stats_a["spool"], stats_b["spool"])  # 4 fps sampled; >= ~1/s kept
    assert stats_b["inference"]["state"] == state and cam(stats_b)["state"] == "streaming"
    assert states(rig, mark) == [state]

    final = stop_daemon(daemon, rig.sub)
    kept = final["spool"]["frames"]["count"]
    assert kept > 0 and cam(final)["pending"] == kept + final["spool"]["outbox"]["count"]
    paused_lines = [line for line in daemon.stderr_text().splitlines() if "uploads paused" in line]
    assert len(paused_lines) == 1, paused_lines

    rig.api.heal()
    mark, restart = rig.sub.count, now()
    daemon = rig.restart()
    wait_state(rig, "ok", mark, daemon)
    old = lambda: [p for p in payloads(rig, mark) if wall(p["captured_at"]) < restart.wall]  # noqa: E731
    wait_until(lambda: len(old()) >= kept, 60, message=lambda: f"{len(old())} of {kept} kept frames published",
               watch=[daemon])
    assert all(p["replayed"] for p in old()) and len({p["frame_id"] for p in old()}) == kept
    final2 = stop_daemon(daemon, rig.sub)
    assert f"recovered {kept} frames" in daemon.stderr_text()
    report(state, status=status, window_s=window_s, requests_in_window=dict(methods),
           frames_kept_in_window=grown, kept_at_stop=kept, replayed_after_restart=len(old()),
           produced_run2=cam(final2)["produced"])


# -- replies that cannot be used: dead-lettered, never retried for ever ---------------------------
POISON = [
    ("invalid_json", httpfault.raw(200, b'{"detections": [{"bbox": [1, 2', "application/json")),
    ("top_level_list", httpfault.json(200, [])),
    ("detections_not_a_list", httpfault.json(200, {"detections": "x"})),
    ("http_400", httpfault.json(400, {"detail": "image could not be decoded"})),
    ("http_422", httpfault.json(422, {"detail": [{"loc": ["body", "file"], "msg": "Field required"}]})),
]
MALFORMED = {"invalid_json", "top_level_list", "detections_not_a_list"}
MAX_ATTEMPTS = 3  # uplink's max_attempts for malformed replies


def test_malformed_and_rejected_replies_are_dead_lettered(rig, long_clip):
    daemon = rig.start(long_clip)
    wait_steady(rig, daemon)
    mark = rig.sub.count
    poison = PoisonFrames(POISON)
    rig.api.inference_picker(poison)
    wait_stats(rig, lambda s: cam(s)["dead_lettered"] >= len(POISON), 60, "poisoned frames dead-lettered",
               daemon, since=mark)
    # The daemon keeps going: later (good) frames are still published.
    published = len(payloads(rig))
    rig.sub.wait_count(DETECTIONS, published + 3, 30, watch=[daemon])
    final = stop_daemon(daemon, rig.sub)

    c = cam(final)
    assert c["dead_lettered_by_reason"] == {"malformed_response": 3, "rejected": 2}, c
    assert c["dead_lettered"] == 5 and c["evicted"] == 0
    assert c["errors"] == {"malformed_response": 3 * MAX_ATTEMPTS, "rejected": 2}, c["errors"]
    tries = Counter(r.label for r in rig.api.replies("POST") if r.label != "ok")
    assert tries == {**{label: MAX_ATTEMPTS for label in MALFORMED}, "http_400": 1, "http_422": 1}, tries
    seen = states(rig, mark)
    assert {"malformed_response", "rejected"} <= set(seen) and seen[-1] == "ok", seen
    report("dead_letter", requests_per_poisoned_frame=dict(tries), dead_lettered=c["dead_lettered_by_reason"],
           produced=c["produced"], delivered=c["delivered"], pending=c["pending"])


# -- long outage with a small spool ------------------------------------------------------------
class DiskSampler:
    """Samples the spool's on-disk footprint (db + WAL + shm) every `interval_s` in a thread."""

    def __init__(self, db: Path, interval_s: float = 0.2):
        self.paths = [Path(f"{db}{suffix}") for suffix in ("", "-wal", "-shm")]
        self.interval_s = interval_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="disk-sampler", daemon=True)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _size(self, path: Path) -> int:
        try:
            return os.path.getsize(path)
        except FileNotFoundError:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(sum(self._size(p) for p in self.paths))


@pytest.mark.slow
def test_long_outage_keeps_newest_frames_within_spool_budget(rig, large_clip):
    outage_s, max_bytes = 10.0, 2 * MIB
    daemon = rig.start(large_clip, camera={"max_side": 1280, "jpeg_quality": 95}, spool={"max_bytes": "2MiB"})
    with DiskSampler(rig.state_dir / "spool.db") as disk:
        wait_steady(rig, daemon)
        mark = rig.sub.count
        rig.api.fail_all("outage", httpfault.json(503, {"detail": "down for maintenance"}))
        t0 = now()
        hold_until(t0.mono + outage_s / 2)
        mid = fresh_stats(rig, daemon)
        hold_until(t0.mono + outage_s)
        end = fresh_stats(rig, daemon)
        t1 = now()
        rig.api.heal()
        wait_state(rig, "ok", mark, daemon, timeout_s=90)
        recovered = rig.api.replies("POST", "ok", since=t1.mono)[0].at - t1.mono
        wait_stats(rig, lambda s: s["spool"]["frames"]["count"] == 0, 60, "backlog drained", daemon)
        final = stop_daemon(daemon, rig.sub)

    frame_bytes = max(r.jpeg_bytes for r in rig.api.replies("POST"))
    assert len(disk.samples) > 2 * outage_s
    assert max(disk.samples) <= max_bytes + frame_bytes, (max(disk.samples), frame_bytes)
    assert 0 < cam(mid)["evicted"] < cam(end)["evicted"], (cam(mid), cam(end))
    assert cam(end)["evicted_by_reason"].get("budget", 0) > 0, cam(end)
    # Oldest first: what is kept is always recent, however long the outage lasts.
    # (About 11 frames fit: under 3 s at 4 fps; kept oldest-first, they would be over 10 s old.)
    assert end["spool"]["frames"]["oldest_age_s"] < 0.75 * outage_s, end["spool"]
    # The outage ends, for the daemon, with its first successful request (the breaker's probe):
    # frames produced until then waited in the spool; only the newest of them fit in it.
    back_wall = t1.wall + recovered
    replayed = [p for p in payloads(rig, mark) if p["replayed"]]
    outage_frames = [p for p in replayed if wall(p["captured_at"]) < back_wall]
    assert outage_frames, replayed
    assert min(wall(p["captured_at"]) for p in outage_frames) > back_wall - 0.75 * outage_s
    during = rig.api.replies(label="outage")
    # Circuit breaker: a probe now and then. Without it, 3 tries per frame at 4 fps: 12 requests/s.
    assert len(during) < 2 * outage_s, len(during)
    report("long_outage", outage_s=outage_s, requests_during_outage=len(during),
           recovered_after_s=round(recovered, 2), max_disk_bytes=max(disk.samples), max_bytes=max_bytes,
           frame_bytes=frame_bytes, evicted=cam(final)["evicted"], replayed_from_outage=len(outage_frames),
           oldest_kept_age_s=end["spool"]["frames"]["oldest_age_s"])


# -- recovery with no live frame to probe the API ---------------------------------------------------
def test_backlog_drains_after_recovery_with_camera_stopped(rig, short_clip):
    """Frames spooled during an outage are sent once the API is back, even when the camera has
    stopped meanwhile and no new frame comes to probe the API (the circuit breaker must let a
    backlog frame through as its probe)."""
    clip = rig.copy_clip(short_clip)
    daemon = rig.start(clip)
    wait_steady(rig, daemon)
    mark = rig.sub.count
    rig.api.inference("fault", httpfault.json(503, {"detail": "overloaded"}))
    wait_state(rig, "server_error", mark, daemon)
    clip.unlink()
    rig.sub.wait_for(lambda m: m.topic == CAMERA_STATE and m.json()["state"] != "streaming", 30,
                     "camera stopped (clip deleted)", since=mark, watch=[daemon])
    stuck = wait_stats(rig, lambda s: s["spool"]["frames"]["count"] > 0, 30, "frames spooled", daemon)
    t1 = now()
    rig.api.inference("ok", GOOD)
    try:
        wait_stats(rig, lambda s: cam(s)["pending"] == 0, 45, "backlog drained with no live frames", daemon)
    finally:
        report("backlog_without_live_frames", spooled=stuck["spool"]["frames"]["count"],
               requests_after_recovery=len(rig.api.replies(since=t1.mono)))
    final = stop_daemon(daemon, rig.sub)
    assert_all_delivered_once(rig, final)
