"""Figures for the stats topic: accounting (pure), percentiles, CPU and memory of the process."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping


def accounting(*, sampled: Mapping[str, int], recovered: Mapping[str, int], delivered: Mapping[str, int],
               waiting: Mapping[str, int], evicted: Mapping[tuple[str, str], int],
               dead_lettered: Mapping[str, int]) -> dict[str, dict[str, int]]:
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
        camera: {
            "produced": sampled.get(camera, 0) + recovered.get(camera, 0),
            "delivered": delivered.get(camera, 0),
            "pending": waiting.get(camera, 0),
            "evicted": gone[camera],
            "dead_lettered": dead_lettered.get(camera, 0),
        }
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
