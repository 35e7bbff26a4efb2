"""The stats message, the status line and the shutdown summary, read from the running stages.

Each figure comes from the component that owns it (camera workers, uplink, results stage, spool,
publisher, control); `accounting()` (service/stats.py) checks the identity per camera.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

from focoos_edge.delivery import iso_utc
from focoos_edge.service.stats import CpuMeter, accounting, percentile, rss_bytes

if TYPE_CHECKING:
    from focoos_edge.service.daemon import Daemon


def frames_only(per_camera: dict) -> dict:
    """Drop the outbox's event streams (`camera/events`): the accounting follows frames, one
    detections message each."""
    return {camera: v for camera, v in per_camera.items() if "/" not in camera}


def camera_accounting(d: Daemon) -> dict[str, dict[str, int]]:
    """Per camera: produced = delivered + pending + evicted + dead_lettered (exact when idle)."""
    sampled = Counter(d.retired_sampled)
    for name, w in d.workers.items():
        sampled[name] += w.counters.sampled
    waiting: Counter = Counter(d.uplink.in_flight_snapshot()) + Counter(d.results.held())
    for camera, n in frames_only(d.spool.pending()).items():
        waiting[camera] += n["frames"] + n["outbox"]
    for camera in sampled:
        waiting[camera] += d.queue.count(camera)
    # dict() copies are taken in one step under the GIL: other threads may add cameras meanwhile.
    return accounting(
        sampled=sampled, recovered=d.recovered, delivered=frames_only(dict(d.publisher.delivered)),
        waiting=waiting, evicted={k: n for k, n in dict(d.spool.evicted).items() if "/" not in k[0]},
        dead_lettered=dead_lettered_total(d))

def dead_lettered_total(d: Daemon) -> Counter:
    """Per camera: frames the uplink gave up on and results the results stage could not store."""
    total: Counter = Counter()
    for camera, counters in dict(d.uplink.counters).items():
        total[camera] += sum(dict(counters.dead_lettered).values())
    for camera, reasons in d.results.dead_lettered().items():
        total[camera] += sum(reasons.values())
    return total

def camera_stats(d: Daemon, camera: str, account: dict) -> dict:
    w = d.workers.get(camera)
    up = d.uplink.counters[camera]
    evicted = {reason: n for (c, reason), n in dict(d.spool.evicted).items() if c == camera}
    hour = up.last_hour.last_hour()
    return {
        "state": w.state if w else "removed", "fps": round(w.fps(), 2) if w else 0.0,
        "grabbed": w.counters.grabbed if w else 0, "sampled": w.counters.sampled if w else 0,
        "reconnects": w.counters.reconnects if w else 0,
        "grab_failures": w.counters.grab_failures if w else 0,
        "open_failures": w.counters.open_failures if w else 0,
        "uploaded": up.uploaded, "bytes_uploaded": up.bytes_uploaded, "results": up.results,
        "inferences_last_hour": hour[0], "bytes_uploaded_last_hour": hour[1],
        "skipped_static": w.counters.skipped_static if w else 0,
        "skipped_budget": w.counters.skipped_budget if w else 0,
        "skipped_paused": w.counters.skipped_paused if w else 0, "detect": d.control.state(camera),
        "spooled": up.spooled, "evicted_by_reason": evicted,
        "errors": dict(Counter(up.errors) + Counter(d.results.errors(camera))),
        "dead_lettered_by_reason": dict(Counter(up.dead_lettered)
                                        + Counter(d.results.dead_lettered().get(camera, {}))),
        "clamped_by_reason": {**up.clamped, **({"count_label_cap": n} if (n := d.features.labels_dropped(camera))
                                               else {})},
        "inference_ms": {"p50": percentile(up.round_trips_ms, 0.5),
                         "p95": percentile(up.round_trips_ms, 0.95)},
        "events": d.results.stats(camera),
        **account,
    }

def stats(d: Daemon, cpu: CpuMeter | None = None) -> dict:
    """The stats message: per camera and process-wide figures (CPU since `cpu`'s last reading)."""
    pc = d.publisher.counters
    return {
        "v": 1, "device_id": d.config.device_id, "at": iso_utc(time.time()),
        "uptime_s": round(time.monotonic() - d.started_mono, 1),
        "cpu_percent": (cpu or d.cpu).percent(), "rss_bytes": rss_bytes(),
        "inference": {"state": d.health.state, "queue_depth": len(d.queue),
                      "in_flight": d.uplink.busy},
        "mqtt": {"connected": d.publisher.connected.is_set(), "sent": pc.sent, "acked": pc.acked,
                 "resent": pc.resent, "dropped": pc.dropped_queue_full,
                 "connects": pc.connects, "connect_failures": pc.connect_failures},
        "spool": d.spool.stats(),
        "cameras": {cam: camera_stats(d, cam, acc) for cam, acc in camera_accounting(d).items()},
        **({"thread_restarts": restarts} if (restarts := d.restarts()) else {}),
        **quota_stats(d),
    }

def quota_stats(d: Daemon) -> dict:
    """`quota` whenever the account endpoint answered (v1.1)."""
    last = d.uplink.quota.last if d.uplink.quota else None
    return {"quota": last.as_stats()} if last else {}

def status_line(d: Daemon) -> str:
    """One short line for `systemctl status`."""
    streaming = sum(w.state == "streaming" for w in d.workers.values())
    delivered = sum(d.publisher.delivered.values())
    return (f"{streaming}/{len(d.workers)} cameras streaming, inference {d.health.state}, "
            f"{delivered} results delivered, backlog {len(d.queue)} live + "
            f"{d.spool.stats()['frames']['count']} spooled, mqtt "
            f"{'connected' if d.publisher.connected.is_set() else 'disconnected'}")

def summary(d: Daemon) -> str:
    """One line for people, per camera: the accounting identity's terms."""
    return "; ".join(
        f"{cam}: produced {a['produced']}, delivered {a['delivered']}, pending {a['pending']}, "
        f"evicted {a['evicted']}, dead-lettered {a['dead_lettered']}"
        for cam, a in camera_accounting(d).items()) or "no cameras"
