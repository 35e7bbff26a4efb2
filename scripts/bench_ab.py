#!/usr/bin/env python3
"""A/B CPU of two installs of the daemon, side by side on one RTSP camera, window after window.

    .venv/bin/python scripts/bench_ab.py --old /path/to/old/.venv/bin/python [--windows 8 --seconds 15]

Both daemons read the same 1080p25 stream at the same time (the bench's default case: 2 fps, 640 px,
a 1 s recording inference server each), so machine load hits both alike; the ratio new/old of each
window's CPU is printed, then the median and the spread. For a refactor, point --old at a venv with
the previous commit installed (pip install -e of a `git worktree` of it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import benchlib as lib
from benchlib import Bench, RecordingServer, cpu_s
from daemon_infra import daemon_config
from procs import ChildProcess


def start(b: Bench, name: str, python: str, url: str) -> tuple[ChildProcess, RecordingServer]:
    server = RecordingServer(1.0)
    server.start()
    work = b.logs / name
    work.mkdir(parents=True, exist_ok=True)
    cfg = daemon_config(work, api_url=server.url, mqtt_port=b.broker.port, api_key=lib.API_KEY,
                        cameras=[{"name": "cam0", "source": url, "sample_fps": 2, "max_side": 640}],
                        inference={"max_in_flight": 4, "timeout_s": 10}, log_level="warning",
                        stats_interval_s=5, device_id=name)
    # cwd: `python -m` puts the working directory first on sys.path; started from a checkout, both
    # daemons would import that checkout's focoos_edge instead of their own install's.
    return ChildProcess([python, "-m", "focoos_edge", "run", "-c", str(cfg)], name=name, log_dir=b.logs,
                        cwd=work), server


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=True, help="Python of the install to compare against")
    p.add_argument("--new", default=sys.executable, help="Python of the install under test (default: this one)")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--work-dir", default="/tmp/focoos-bench", help="media cache and logs")
    args = p.parse_args()
    b = Bench(Path(args.work_dir), measure_s=args.seconds)
    cam = b.camera(b.clip)
    runs = {name: start(b, name, py, cam.url) for name, py in (("old", args.old), ("new", args.new))}
    try:
        time.sleep(8.0)  # warm-up: both connected and sampling
        ratios, cpus = [], {"old": [], "new": []}
        for w in range(args.windows):
            c0, t0 = {n: cpu_s(proc.pid) for n, (proc, _) in runs.items()}, time.monotonic()
            time.sleep(args.seconds)
            wall = time.monotonic() - t0
            for n, (proc, _) in runs.items():
                cpus[n].append((cpu_s(proc.pid) - c0[n]) / wall)
            ratios.append(cpus["new"][-1] / cpus["old"][-1])
            rss = {n: proc.rss_bytes() / 1e6 for n, (proc, _) in runs.items()}
            print(f"window {w}: old {cpus['old'][-1] * 100:.1f}% new {cpus['new'][-1] * 100:.1f}% of a core, "
                  f"new/old {ratios[-1]:.3f}; RSS old {rss['old']:.0f} MB new {rss['new']:.0f} MB", flush=True)
        print(f"CPU new/old: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}); "
              f"old {statistics.median(cpus['old']) * 100:.1f}%, new {statistics.median(cpus['new']) * 100:.1f}% "
              f"of a core (medians)")
    finally:
        for proc, server in runs.values():
            proc.terminate(timeout_s=20)
            server.stop()
        cam.terminate()
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
