#!/usr/bin/env python3
"""Fault stress: SIGKILL the daemon (or the MQTT broker) again and again, and count what is lost.

Run from the repository root with the project's venv:

    .venv/bin/python scripts/fault_stress.py --kills 50             # daemon crash loop
    .venv/bin/python scripts/fault_stress.py --kills 0 --broker-kills 20   # broker kill loop
    .venv/bin/python scripts/fault_stress.py --kills 0 --broker-restarts 20 --api-restarts 20  # resume times
    .venv/bin/python scripts/fault_stress.py --kills 0 --hostile-minutes 3   # hostile-reply soak

Resume times and the hostile soak are in scripts/fault_resume.py (see its docstring).

Each loop ends with one line "N faults, M items, L lost" (plus duplicates) and the exit status is 1
if anything was lost. Everything is real and on 127.0.0.1: the daemon (`python -m focoos_edge run`),
Mosquitto, a mosquitto_sub subscriber, the local inference server and a generated clip as camera.
tests/test_outages.py imports this module and runs the same loops at a small scale.

Crash loop: inference is down, so frames wait in the spool; the daemon is killed at a random moment
after it made progress, and the spool is read (through a copy, the daemon being dead) before the next
start with the same state_dir. Every `drain_every`-th cycle runs with inference up, so the kill lands
while the backlog drains (the frame -> outbox -> PUBACK path). At the end inference is restored,
the spool drains, and every frame id ever seen in the spool must have reached the subscriber.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The real-process helpers (brokers, subscribers, media) live with the tests; make them importable
# when this file runs as a script.
_TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"
if str(_TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(_TESTS_DIR))

import media  # noqa: E402
from daemon_infra import daemon_command, daemon_config  # noqa: E402
from mqtt_infra import Mosquitto, MqttSubscriber  # noqa: E402
from procs import ChildProcess, ProcessRegistry, WaitTimeout, wait_until  # noqa: E402

from focoos_edge.tools.localserver import LocalServer  # noqa: E402

KEY = "stress-key-0123"
DEVICE = "box1"
PREFIX = f"focoos/{DEVICE}"
CAMERA = "cam"
PROGRESS_TIMEOUT_S = 60.0  # 2 cores shared with other test runs: generous, never a figure under test
DRAIN_TIMEOUT_S = 240.0
PERSISTENT_BROKER = {"persistence": True, "autosave_interval_s": 1,
                     # save after every change: otherwise the broker itself loses acked messages on kill -9
                     "extra_config": ["autosave_on_changes true"]}


class FaultCheckError(AssertionError):
    """A fault run broke a guarantee (an AssertionError, so pytest reports a failure)."""


def make_clip(path: Path) -> Path:
    """The camera: a small looping clip (640x360, 25 fps, 20 s, one ArUco marker), cheap to decode."""
    return media.make_marker_clip(path, 640, 360, fps=25, seconds=20,
                                  markers=[media.Marker(id=7, x=60, y=60, size=120)])


def stable_port(host: str = "127.0.0.1") -> int:
    """A free port below the ephemeral range, for a server stopped and started again on it: while it is
    down, no other test's `free_port()` and no outgoing connection can take it (both draw from that range)."""
    try:
        first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768
    pick = random.SystemRandom()
    for _ in range(200):
        port = pick.randrange(20000, max(first_ephemeral, 20001))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise FaultCheckError("no free port found between 20000 and the ephemeral range")


def captured_ns(frame_id: str) -> int:
    """The capture time the daemon encodes in every frame id (`camera-<time_ns>`)."""
    return int(frame_id.rsplit("-", 1)[1])


def check_accounted(stats: dict) -> None:
    """produced == delivered + pending + evicted + dead_lettered, exactly, for every camera."""
    for name, cam in stats["cameras"].items():
        terms = cam["delivered"] + cam["pending"] + cam["evicted"] + cam["dead_lettered"]
        if cam["produced"] != terms:
            raise FaultCheckError(f"accounting identity broken for camera {name}: {cam}")


@dataclass(frozen=True)
class SpoolSnapshot:
    """What a stopped daemon's spool holds: frame ids waiting for inference or for their PUBACK."""

    integrity: str
    frames: frozenset[str]
    outbox: frozenset[str]

    @property
    def ids(self) -> frozenset[str]:
        return self.frames | self.outbox


def snapshot_spool(db: Path, copy_dir: Path) -> SpoolSnapshot:
    """Read the spool through a copy of the database and its WAL, leaving the daemon's files as the
    crash left them (opening them would run WAL recovery before the daemon does)."""
    copy_dir.mkdir(parents=True)
    if not db.exists():
        return SpoolSnapshot("ok", frozenset(), frozenset())
    for suffix in ("", "-wal"):
        if Path(f"{db}{suffix}").exists():
            shutil.copyfile(f"{db}{suffix}", copy_dir / f"spool.db{suffix}")
    con = sqlite3.connect(copy_dir / "spool.db")
    try:
        integrity = "; ".join(row[0] for row in con.execute("PRAGMA integrity_check"))
        frames = frozenset(row[0] for row in con.execute("SELECT frame_id FROM frames"))
        # Event rows (camera key "<camera>/events") carry no frame: only detections messages count here.
        outbox = frozenset(json.loads(row[0])["frame_id"] for row in
                           con.execute("SELECT payload FROM outbox WHERE camera NOT LIKE '%/%'"))
    finally:
        con.close()
    return SpoolSnapshot(integrity, frames, outbox)


@dataclass
class Rig:
    """The real processes of one fault run. `spawn(cmd, name=...)` starts and tracks a child."""

    work_dir: Path
    clip: Path
    broker: Mosquitto
    sub: MqttSubscriber
    inference: LocalServer  # on a fixed port, so it can be stopped and started again
    spawn: Callable[..., ChildProcess]
    sample_fps: float = 2.0
    inference_up_now: bool = False
    config_path: Path | None = None

    @property
    def spool_db(self) -> Path:
        return self.work_dir / "state" / "spool.db"

    def start_daemon(self) -> ChildProcess:
        """Start the daemon (the same config and state_dir every time)."""
        if self.config_path is None:
            self.config_path = daemon_config(
                self.work_dir, api_url=self.inference.url, mqtt_port=self.broker.port, api_key=KEY,
                device_id=DEVICE,
                cameras=[{"name": CAMERA, "source": f"file://{self.clip}", "sample_fps": self.sample_fps}])
        return self.spawn(daemon_command(self.config_path), name="daemon")

    def inference_up(self) -> None:
        if not self.inference_up_now:
            self.inference.start()  # on a stable_port(): nobody else can have taken it meanwhile
            self.inference_up_now = True

    def inference_down(self) -> None:
        if self.inference_up_now:
            self.inference.stop()
            self.inference_up_now = False

    def detections(self, since: int = 0) -> list[dict]:
        """Detections payloads received so far, in arrival order."""
        return [m.json() for m in self.sub.messages(f"{PREFIX}/+/detections", since)]

    def seen_ids(self) -> Counter:
        """frame_id -> how many times the subscriber received it."""
        return Counter(p["frame_id"] for p in self.detections())

    def wait_detection(self, since: int, daemon: ChildProcess, after_ns: int = 0,
                       timeout_s: float = PROGRESS_TIMEOUT_S) -> dict:
        """The first detections message received after index `since`, of a frame captured after `after_ns`."""
        return self.sub.wait_for(
            lambda m: m.topic.endswith("/detections") and captured_ns(m.json()["frame_id"]) > after_ns,
            timeout_s, "a new detections message", since=since, watch=[daemon]).json()

    def wait_stats(self, predicate: Callable[[dict], bool], what: str, since: int, daemon: ChildProcess,
                   timeout_s: float = PROGRESS_TIMEOUT_S) -> dict:
        """The first stats message after index `since` satisfying `predicate`."""
        return self.sub.wait_for(lambda m: m.topic == f"{PREFIX}/stats" and predicate(m.json()),
                                 timeout_s, what, since=since, watch=[daemon]).json()

    def wait_drained(self, since: int, daemon: ChildProcess) -> dict:
        """Stats saying that the spool holds no frame and no unacknowledged message."""
        return self.wait_stats(lambda s: s["spool"]["frames"]["count"] == 0 and s["spool"]["outbox"]["count"] == 0,
                               "an empty spool", since, daemon, DRAIN_TIMEOUT_S)

    def stop_daemon(self, daemon: ChildProcess) -> dict:
        """SIGTERM: exit 0 and `offline` are required; returns the final stats, identity checked."""
        mark = self.sub.count
        daemon.signal(signal.SIGTERM)
        if (code := daemon.wait(60)) != 0:
            raise FaultCheckError(f"daemon exited with {code}\n{daemon.describe()}")
        self.sub.wait_for(lambda m: m.topic == f"{PREFIX}/availability" and m.payload == "offline", 30,
                          "availability offline", since=mark)
        final = [m.json() for m in self.sub.messages(f"{PREFIX}/stats", since=mark)][-1]
        check_accounted(final)
        return final


def pause(seconds: float) -> None:
    """Wait without a loop to wake (the fault's timing is the point)."""
    threading.Event().wait(seconds)


# -- daemon crash loop -----------------------------------------------------------------------------
@dataclass
class CrashReport:
    """Figures of a crash loop; `spooled` holds every frame id found in the spool after a kill."""

    kills: int = 0
    spooled: set[str] = field(default_factory=set)
    spooled_frames: set[str] = field(default_factory=set)  # waited for inference: must come back replayed
    lost: set[str] = field(default_factory=set)
    not_replayed: set[str] = field(default_factory=set)
    duplicates: int = 0
    integrity: list[str] = field(default_factory=list)
    progress_s: list[float] = field(default_factory=list)  # restart -> progress, per run
    at_kill: list[tuple[int, int]] = field(default_factory=list)  # (frames, outbox rows) found after each kill
    final: dict | None = None
    drain_s: float = 0.0

    def line(self) -> str:
        return f"{self.kills} faults, {len(self.spooled)} items, {len(self.lost)} lost"


def crash_loop(rig: Rig, kills: int, rng: random.Random, drain_every: int = 0, max_kill_delay_s: float = 2.0,
               note: Callable[[str], None] = lambda text: None) -> CrashReport:
    """SIGKILL the daemon `kills` times (see the module docstring), then drain; returns the figures.

    The kill comes up to `max_kill_delay_s` after the run's first progress; a quarter of that while
    draining, because the backlog of a few cycles drains in about a second.
    """
    report = CrashReport()
    for i in range(kills):
        draining = drain_every > 0 and (i + 1) % drain_every == 0
        delay_s = rng.uniform(0.0, max_kill_delay_s / 4 if draining else max_kill_delay_s)
        _crash_cycle(rig, report, i, draining, delay_s)
        frames, outbox = report.at_kill[-1]
        note(f"kill {i + 1}/{kills} ({'draining' if draining else 'outage'}): {frames} frames and {outbox} "
             f"messages in the spool; {len(report.spooled)} items so far, {len(report.lost)} lost")
    _final_drain(rig, report)
    return report


def _crash_cycle(rig: Rig, report: CrashReport, i: int, draining: bool, kill_delay_s: float) -> None:
    (rig.inference_up if draining else rig.inference_down)()
    mark = rig.sub.count
    started = time.monotonic()
    daemon = rig.start_daemon()
    if draining:  # progress: results flow again
        rig.wait_detection(mark, daemon)
    else:  # progress: new frames committed to the spool (nothing can leave it while inference is down)
        rig.wait_stats(lambda s: s["cameras"].get(CAMERA, {}).get("spooled", 0) > 0, "frames spooled",
                       mark, daemon)
    report.progress_s.append(time.monotonic() - started)
    pause(kill_delay_s)
    daemon.kill()
    snap = snapshot_spool(rig.spool_db, rig.work_dir / "snapshots" / f"kill-{i:03d}")
    report.integrity.append(snap.integrity)
    report.at_kill.append((len(snap.frames), len(snap.outbox)))
    if snap.integrity != "ok":
        raise FaultCheckError(f"kill {i + 1}: integrity_check says {snap.integrity}")
    if not draining and not snap.frames - report.spooled:
        raise FaultCheckError(f"kill {i + 1}: the run spooled no new frame (no progress)\n{daemon.describe()}")
    report.lost |= _unaccounted(rig, report.spooled, snap)
    report.spooled |= snap.ids
    report.spooled_frames |= snap.frames
    report.kills += 1


def _unaccounted(rig: Rig, known: set[str], snap: SpoolSnapshot, timeout_s: float = 20.0) -> set[str]:
    """Ids spooled before that are neither in the spool now nor at the subscriber (which may lag)."""
    def missing() -> set[str]:
        return known - snap.ids - set(rig.seen_ids())
    try:
        wait_until(lambda: not missing(), timeout_s, interval_s=0.25)
    except WaitTimeout:
        pass
    return missing()


def _final_drain(rig: Rig, report: CrashReport) -> None:
    rig.inference_up()
    mark = rig.sub.count
    started = time.monotonic()
    daemon = rig.start_daemon()
    rig.wait_detection(mark, daemon)
    report.progress_s.append(time.monotonic() - started)
    rig.wait_drained(mark, daemon)
    report.drain_s = time.monotonic() - started
    report.final = rig.stop_daemon(daemon)
    snap = snapshot_spool(rig.spool_db, rig.work_dir / "snapshots" / "final")
    report.integrity.append(snap.integrity)
    if snap.integrity != "ok":
        raise FaultCheckError(f"after the drain: integrity_check says {snap.integrity}")
    report.lost |= _unaccounted(rig, report.spooled, SpoolSnapshot("ok", frozenset(), frozenset()))
    seen = rig.seen_ids()
    report.duplicates = sum(n - 1 for n in seen.values())
    replayed = {p["frame_id"] for p in rig.detections() if p["replayed"]}
    report.not_replayed = (report.spooled_frames & set(seen)) - replayed


# -- broker kill loop ------------------------------------------------------------------------------
@dataclass
class BrokerReport:
    """Figures of a broker kill loop, from the final stats, the subscriber and the final spool."""

    kills: int = 0
    expected: int = 0  # produced - evicted - dead_lettered: frames that must be delivered or pending
    accounted: int = 0  # distinct frame ids seen at the subscriber or still in the spool
    delivered: int = 0
    pending: int = 0
    duplicates: int = 0
    final: dict | None = None

    @property
    def lost(self) -> int:
        return self.expected - self.accounted

    def line(self) -> str:
        return f"{self.kills} faults, {self.expected} items, {self.lost} lost"


def broker_loop(rig: Rig, kills: int, rng: random.Random, max_kill_delay_s: float = 1.0,
                max_down_s: float = 1.0, note: Callable[[str], None] = lambda text: None) -> BrokerReport:
    """`kill -9` the broker `kills` times while detections flow, restart it on the same port after a
    short random delay, let things settle and stop the daemon cleanly; returns the figures."""
    report = BrokerReport()
    rig.inference_up()
    daemon = rig.start_daemon()
    restarted_ns = 0
    for i in range(kills):
        # A frame captured after the restart and received now proves the daemon and the subscriber
        # are both connected to the new broker process (a queued old message would not).
        rig.wait_detection(0, daemon, after_ns=restarted_ns)
        pause(rng.uniform(0.0, max_kill_delay_s))
        rig.broker.kill()
        pause(rng.uniform(0.1, max_down_s))
        rig.broker.start()
        restarted_ns = time.time_ns()
        report.kills += 1
        note(f"broker kill {i + 1}/{kills}")
    mark = rig.sub.count
    rig.wait_detection(0, daemon, after_ns=restarted_ns)
    rig.wait_drained(mark, daemon)
    report.final = rig.stop_daemon(daemon)
    snap = snapshot_spool(rig.spool_db, rig.work_dir / "snapshots" / "broker-final")
    if snap.integrity != "ok":
        raise FaultCheckError(f"integrity_check says {snap.integrity}")
    cam = report.final["cameras"][CAMERA]
    report.expected = cam["produced"] - cam["evicted"] - cam["dead_lettered"]
    report.delivered, report.pending = cam["delivered"], cam["pending"]

    def accounted() -> int:  # the broker may still be handing queued messages to the subscriber
        return len(set(rig.seen_ids()) | snap.ids)
    try:
        wait_until(lambda: accounted() >= report.expected, 60, interval_s=0.25)
    except WaitTimeout:
        pass
    report.accounted = accounted()
    if report.accounted > report.expected:
        raise FaultCheckError(f"{report.accounted} distinct frame ids for {report.expected} frames produced")
    report.duplicates = sum(n - 1 for n in rig.seen_ids().values())
    return report


# -- command line -------------------------------------------------------------------------------------
def build_rig(registry: ProcessRegistry, work_dir: Path, clip: Path, *, persistent: bool,
              sample_fps: float, latency_s: float = 0.0) -> Rig:
    """Broker, subscriber and (stopped) inference server for one loop, tracked by `registry`."""
    broker = Mosquitto(work_dir / "mosquitto", port=stable_port(), **(PERSISTENT_BROKER if persistent else {}))
    registry.add(broker, broker.kill)
    broker.start()
    sub = MqttSubscriber(broker.port, work_dir / "mqtt-sub", topic="focoos/#", qos=1,
                         client_id="sub1" if persistent else None)
    registry.add(sub, sub.stop)
    sub.start()
    inference = LocalServer(port=stable_port(), api_key=KEY, latency_s=latency_s)
    registry.add(inference, inference.stop)

    def spawn(cmd: list[str], *, name: str) -> ChildProcess:
        proc = ChildProcess(cmd, name=name, log_dir=work_dir / "logs")
        registry.add(proc, proc.terminate)
        return proc

    return Rig(work_dir, clip, broker, sub, inference, spawn, sample_fps)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _run(args: argparse.Namespace, work: Path, registry: ProcessRegistry) -> int:
    rng = random.Random(args.seed)
    clip = make_clip(work / "clip.mp4")
    lost = 0
    if args.kills:
        # A little inference latency, so that a kill while draining lands in the middle of the drain.
        rig = build_rig(registry, work / "crash", clip, persistent=False, sample_fps=args.sample_fps,
                        latency_s=0.2)
        started = time.monotonic()
        crash = crash_loop(rig, args.kills, rng, drain_every=args.drain_every, note=_say)
        print(f"daemon kill -9: {crash.line()} (duplicates {crash.duplicates}, "
              f"not replayed {len(crash.not_replayed)}, integrity {set(crash.integrity)}, "
              f"max restart->progress {max(crash.progress_s):.1f} s, final drain {crash.drain_s:.1f} s, "
              f"{time.monotonic() - started:.0f} s in all)", flush=True)
        lost += len(crash.lost) + len(crash.not_replayed)
    if args.broker_kills:
        rig = build_rig(registry, work / "broker", clip, persistent=True, sample_fps=args.sample_fps)
        started = time.monotonic()
        broker = broker_loop(rig, args.broker_kills, rng, note=_say)
        print(f"broker kill -9: {broker.line()} (delivered {broker.delivered}, pending {broker.pending}, "
              f"duplicates {broker.duplicates}, {time.monotonic() - started:.0f} s in all)", flush=True)
        lost += broker.lost
    _run_resume(args, work, registry, clip, rng)
    return 1 if lost else 0


def _run_resume(args: argparse.Namespace, work: Path, registry: ProcessRegistry, clip: Path,
                rng: random.Random) -> None:
    import fault_resume  # scripts/ is on sys.path when this file runs as a script

    if args.broker_restarts:
        rig = build_rig(registry, work / "broker-restarts", clip, persistent=True, sample_fps=args.sample_fps)
        print(fault_resume.broker_restarts(rig, args.broker_restarts, args.down_s, rng, note=_say).line(), flush=True)
    if args.api_restarts:
        rig = build_rig(registry, work / "api-restarts", clip, persistent=False, sample_fps=args.sample_fps)
        print(fault_resume.api_restarts(rig, args.api_restarts, args.down_s, rng, note=_say).line(), flush=True)
    if args.hostile_minutes:
        rig = build_rig(registry, work / "hostile", clip, persistent=False, sample_fps=args.sample_fps)

        def spawn(cmd: list[str], *, name: str) -> ChildProcess:
            proc = ChildProcess(cmd, name=name, log_dir=work / "hostile" / "logs")
            registry.add(proc, proc.terminate)
            return proc

        (work / "hostile" / "daemon").mkdir(parents=True, exist_ok=True)
        report = fault_resume.hostile_soak(rig, args.hostile_minutes, work / "hostile" / "daemon", spawn, rng,
                                           note=_say)
        print(report.line(), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="daemon SIGKILLs (0 = skip the crash loop)")
    parser.add_argument("--drain-every", type=int, default=5,
                        help="every Nth daemon kill happens while the backlog drains (0 = never)")
    parser.add_argument("--broker-kills", type=int, default=0, help="broker SIGKILLs (0 = skip the broker loop)")
    parser.add_argument("--broker-restarts", type=int, default=0,
                        help="broker stops (SIGTERM / kill -9) with the daemon running: resume times")
    parser.add_argument("--api-restarts", type=int, default=0, help="inference outages: resume times")
    parser.add_argument("--down-s", type=float, default=10.0, help="outage length for the restart loops")
    parser.add_argument("--hostile-minutes", type=float, default=0,
                        help="minutes of hostile replies mixed at random (0 = skip)")
    parser.add_argument("--sample-fps", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=None, help="random seed of the fault timings")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, snapshots)")
    args = parser.parse_args(argv)
    args.seed = args.seed if args.seed is not None else random.randrange(2**32)
    _say(f"seed {args.seed}")
    work = Path(tempfile.mkdtemp(prefix="fault-stress-"))
    registry = ProcessRegistry()
    try:
        return _run(args, work, registry)
    except (FaultCheckError, WaitTimeout) as exc:
        print(f"FAILED: {exc}", flush=True)
        return 1
    finally:
        for error in registry.stop_all():
            _say(f"cleanup: {error}")
        if args.keep:
            _say(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
