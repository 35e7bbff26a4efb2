"""The stats message, the status line and the shutdown summary: pure functions of one
`DaemonSnapshot` (service/stats.py), which the daemon assembles from each stage's own snapshot.

The stats message is a public contract: docs/mqtt.md documents it, delivery/schemas/stats.json
validates it; its keys and their order stay as they are.
"""

from __future__ import annotations

from dataclasses import asdict

from focoos_edge.delivery import PublisherSnapshot, SpoolSnapshot, iso_utc
from focoos_edge.service.stats import REMOVED, CameraStats, DaemonSnapshot


def stats_message(s: DaemonSnapshot) -> dict:
    """The stats message: per camera and process-wide figures."""
    up = s.uplink
    return {
        "v": 1, "device_id": s.device_id, "at": iso_utc(s.at_s), "uptime_s": s.uptime_s,
        "cpu_percent": s.cpu_percent, "rss_bytes": s.rss_bytes,
        "inference": {"state": up.state, "queue_depth": up.queue_depth, "in_flight": up.busy},
        "mqtt": _mqtt(s.publisher),
        "spool": _spool(s.spool),
        "cameras": {camera: _camera(c) for camera, c in s.cameras.items()},
        **({"thread_restarts": dict(s.thread_restarts)} if s.thread_restarts else {}),
        **({"quota": up.quota.as_stats()} if up.quota else {}),  # whenever the account endpoint answered (v1.1)
    }


def _mqtt(p: PublisherSnapshot) -> dict:
    return {"connected": p.connected, "sent": p.sent, "acked": p.acked, "resent": p.resent,
            "dropped": p.dropped_queue_full, "connects": p.connects, "connect_failures": p.connect_failures}


def _spool(sp: SpoolSnapshot) -> dict:
    return {"frames": asdict(sp.frames), "outbox": asdict(sp.outbox), "disk_bytes": sp.disk_bytes,
            "max_bytes": sp.max_bytes, "disk_full": sp.disk_full}


def _camera(c: CameraStats) -> dict:
    cap, up = c.capture, c.uplink
    return {
        "state": cap.state, "fps": cap.fps, "grabbed": cap.grabbed, "sampled": cap.sampled,
        "reconnects": cap.reconnects, "grab_failures": cap.grab_failures, "open_failures": cap.open_failures,
        "uploaded": up.uploaded, "bytes_uploaded": up.bytes_uploaded, "results": up.results,
        "inferences_last_hour": up.inferences_last_hour, "bytes_uploaded_last_hour": up.bytes_uploaded_last_hour,
        "skipped_static": cap.skipped_static, "skipped_budget": cap.skipped_budget,
        "skipped_paused": cap.skipped_paused, "detect": c.detect,
        "spooled": up.spooled, "evicted_by_reason": dict(c.evicted_by_reason), "errors": dict(c.errors),
        "dead_lettered_by_reason": dict(c.dead_lettered_by_reason), "clamped_by_reason": dict(c.clamped_by_reason),
        "inference_ms": {"p50": c.inference_ms_p50, "p95": c.inference_ms_p95},
        "events": asdict(c.events) if c.events else {},
        **asdict(c.account),
    }


def status_line(s: DaemonSnapshot) -> str:
    """One short line for `systemctl status`."""
    running = [c.capture.state for c in s.cameras.values() if c.capture.state != REMOVED]
    return (f"{running.count('streaming')}/{len(running)} cameras streaming, inference {s.uplink.state}, "
            f"{sum(s.publisher.delivered.values())} results delivered, backlog {s.uplink.queue_depth} live + "
            f"{s.spool.frames.count} spooled, mqtt {'connected' if s.publisher.connected else 'disconnected'}")


def summary(s: DaemonSnapshot) -> str:
    """One line for people, per camera: the accounting identity's terms."""
    return "; ".join(
        f"{camera}: produced {a.produced}, delivered {a.delivered}, pending {a.pending}, "
        f"evicted {a.evicted}, dead-lettered {a.dead_lettered}"
        for camera, a in ((camera, c.account) for camera, c in s.cameras.items())) or "no cameras"
