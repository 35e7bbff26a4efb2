"""The daemon-wide snapshot: every stage's own snapshot assembled into one `DaemonSnapshot`, per
camera with the accounting identity; the stats message, the status line, the shutdown summary
(report.py) and the Prometheus text (metrics.py) all read it. Also percentiles, CPU and memory.

`assemble` is pure: the daemon takes the stages' snapshots (`Daemon.snapshot`) and hands them in.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from focoos_edge.capture import CameraSnapshot
from focoos_edge.delivery import PublisherSnapshot, SpoolSnapshot
from focoos_edge.inference import UplinkCameraSnapshot, UplinkSnapshot
from focoos_edge.results import EventFigures, ResultsCameraSnapshot, ResultsSnapshot
from focoos_edge.service.control import ControlSnapshot
from focoos_edge.subscribers import FeaturesSnapshot

REMOVED = "removed"  # the state of a camera with no worker (removed by a reload, or only in the spool)


@dataclass(frozen=True)
class Account:
    """One camera's accounting: `produced = delivered + pending + evicted + dead_lettered`."""

    produced: int
    delivered: int
    pending: int
    evicted: int
    dead_lettered: int


@dataclass(frozen=True)
class CameraStats:
    """One camera's figures: its stages' snapshots and what is derived from them once, for every reader."""

    capture: CameraSnapshot
    uplink: UplinkCameraSnapshot
    events: EventFigures | None  # None: the camera is not in the config
    detect: str
    evicted_by_reason: Mapping[str, int]
    errors: Mapping[str, int]  # the uplink's and the results stage's, by reason
    dead_lettered_by_reason: Mapping[str, int]
    clamped_by_reason: Mapping[str, int]
    inference_ms_p50: float | None
    inference_ms_p95: float | None
    account: Account


@dataclass(frozen=True)
class Parts:
    """What `assemble` reads: each stage's snapshot and what the daemon keeps itself."""

    device_id: str
    at_s: float  # wall clock
    uptime_s: float
    cpu_percent: float
    rss_bytes: int
    workers: Mapping[str, CameraSnapshot]  # the cameras running now
    uplink: UplinkSnapshot
    results: ResultsSnapshot
    spool: SpoolSnapshot
    publisher: PublisherSnapshot
    control: ControlSnapshot
    features: FeaturesSnapshot
    retired_sampled: Mapping[str, int]  # frames sampled by workers a reload stopped
    recovered: Mapping[str, int]  # frames and messages found in the spool at start
    main_restarts: Mapping[str, int]  # the daemon's own loop, by thread name


@dataclass(frozen=True)
class DaemonSnapshot:
    """Everything the daemon reports, taken once."""

    device_id: str
    at_s: float
    uptime_s: float  # to 0.1 s
    cpu_percent: float
    rss_bytes: int
    uplink: UplinkSnapshot
    publisher: PublisherSnapshot
    spool: SpoolSnapshot
    cameras: Mapping[str, CameraStats]  # sorted by name, removed cameras whose items are accounted for too
    thread_restarts: Mapping[str, int]  # loops that restarted, by thread name (none: empty)


def assemble(p: Parts) -> DaemonSnapshot:
    """One snapshot of the daemon from its stages' (pure)."""
    return DaemonSnapshot(
        device_id=p.device_id, at_s=p.at_s, uptime_s=round(p.uptime_s, 1), cpu_percent=p.cpu_percent,
        rss_bytes=p.rss_bytes, uplink=p.uplink, publisher=p.publisher, spool=p.spool,
        cameras={camera: _camera(p, camera, account) for camera, account in camera_accounting(p).items()},
        thread_restarts=_restarts(p))


def frames_only(per_camera: Mapping[str, object]) -> dict:
    """Drop the outbox's event streams (`camera/events`): the accounting follows frames, one
    detections message each."""
    return {camera: v for camera, v in per_camera.items() if "/" not in camera}


def camera_accounting(p: Parts) -> dict[str, Account]:
    """Per camera: produced = delivered + pending + evicted + dead_lettered (exact when idle)."""
    sampled: Counter = Counter(p.retired_sampled)
    for name, camera in p.workers.items():
        sampled[name] += camera.sampled
    held = {name: r.events.held_for_order for name, r in p.results.cameras.items() if r.events}
    waiting: Counter = Counter(p.uplink.in_flight) + Counter(held)
    for camera, n in frames_only(p.spool.pending).items():
        waiting[camera] += n["frames"] + n["outbox"]
    for camera in sampled:
        waiting[camera] += p.uplink.queued.get(camera, 0)
    return accounting(sampled=sampled, recovered=p.recovered, delivered=frames_only(p.publisher.delivered),
                      waiting=waiting, evicted={k: n for k, n in p.spool.evicted.items() if "/" not in k[0]},
                      dead_lettered=_dead_lettered(p))


def _dead_lettered(p: Parts) -> Counter:
    """Per camera: frames the uplink gave up on and results the results stage could not store."""
    total: Counter = Counter()
    for camera, up in p.uplink.cameras.items():
        total[camera] += sum(up.dead_lettered.values())
    for camera, res in p.results.cameras.items():
        total[camera] += sum(res.dead_lettered.values())
    return total


def _camera(p: Parts, camera: str, account: Account) -> CameraStats:
    up = p.uplink.cameras.get(camera, UplinkCameraSnapshot())
    res = p.results.cameras.get(camera, ResultsCameraSnapshot())
    dropped = p.features.labels_dropped.get(camera, 0)
    return CameraStats(
        capture=p.workers.get(camera, CameraSnapshot(state=REMOVED)), uplink=up, events=res.events,
        detect=p.control.detect(camera),
        evicted_by_reason={reason: n for (c, reason), n in p.spool.evicted.items() if c == camera},
        errors=dict(Counter(up.errors) + Counter(res.errors)),
        dead_lettered_by_reason=dict(Counter(up.dead_lettered) + Counter(res.dead_lettered)),
        clamped_by_reason={**up.clamped, **({"count_label_cap": dropped} if dropped else {})},
        inference_ms_p50=percentile(up.round_trips_ms, 0.5), inference_ms_p95=percentile(up.round_trips_ms, 0.95),
        account=account)


def _restarts(p: Parts) -> dict[str, int]:
    """Loop restarts after an unexpected error, by thread name (only loops that restarted)."""
    counts = {**p.main_restarts, **p.uplink.restarts, **p.publisher.restarts}
    for camera in p.workers.values():
        counts.update(camera.restarts)
    return {name: n for name, n in counts.items() if n}


def accounting(*, sampled: Mapping[str, int], recovered: Mapping[str, int], delivered: Mapping[str, int],
               waiting: Mapping[str, int], evicted: Mapping[tuple[str, str], int],
               dead_lettered: Mapping[str, int]) -> dict[str, Account]:
    """Per camera: `produced = delivered + pending + evicted + dead_lettered`.

    `sampled`: frames sampled this run; `recovered`: frames and messages found in the spool at start;
    `waiting`: frames and messages anywhere in the pipeline now (live queue, in flight, spool, outbox);
    `evicted`: spool evictions by (camera, reason), where `dead_letter*` reasons are excluded because
    `dead_lettered` already counts them. Exact whenever no item is between two stages.
    """
    gone: Counter = Counter()
    for (camera, reason), n in evicted.items():
        if not reason.startswith("dead_letter"):
            gone[camera] += n
    cameras = set(sampled) | set(recovered) | set(waiting) | set(delivered) | set(gone)
    return {
        camera: Account(
            produced=sampled.get(camera, 0) + recovered.get(camera, 0),
            delivered=delivered.get(camera, 0),
            pending=waiting.get(camera, 0),
            evicted=gone[camera],
            dead_lettered=dead_lettered.get(camera, 0),
        )
        for camera in sorted(cameras)
    }


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-quantile (0..1) by nearest rank, rounded to 0.1; None when empty."""
    data = sorted(values)
    if not data:
        return None
    return round(data[min(len(data) - 1, int(q * len(data)))], 1)


def rss_bytes() -> int:
    """Resident set size of this process."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class CpuMeter:
    """Process CPU use in percent of one core since the previous reading."""

    def __init__(self):
        self._mark = (time.monotonic(), sum(os.times()[:2]))

    def percent(self) -> float:
        now, cpu = time.monotonic(), sum(os.times()[:2])
        then, cpu_then = self._mark
        self._mark = (now, cpu)
        return round(100.0 * (cpu - cpu_then) / max(now - then, 1e-6), 1)
