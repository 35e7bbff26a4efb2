#!/usr/bin/env python3
"""SIGKILL a spool writer many times and check that nothing it acknowledged was lost.

    .venv/bin/python scripts/spool_crash_stress.py [--kills 50] [--seed N] [--dir DIR] [--write-amp]

Each round starts tests/spool_writer.py on the same spool file. The writer puts frames, replaces
them by their results (`put_message(done_frame=...)`), drops some and acks messages. It prints every
item only after the call returned. The round then kills the writer, either from outside after a
random number of acks plus a random delay, or from inside at an exact SQL statement (the N-th one).
After each kill the spool is reopened and checked: `integrity_check`, every acked item present
unless its deletion was announced, a frame and its result never both missing nor both present,
byte counters equal to SUM(bytes), and liveness (a new frame and message go in and come out).
The last line reads "N kills, M acked items, L lost"; the exit status is 1 if anything was lost.

--write-amp also measures write amplification: /proc/self/io write_bytes per payload byte for
1000 frames of 50 KiB, once through the daemon's backlog path (put, take, result replaces the
frame, ack) and once into a full 4 MiB spool (every put evicts the oldest frame).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from spool_writer import CrashHarness, make_job  # noqa: E402

TARGETED = ("result:DELETE FROM FRAMES", "result:INSERT INTO OUTBOX", "result:COMMIT",
            "frame:INSERT OR IGNORE", "frame:COMMIT", "delete:COMMIT", "drop:COMMIT", "release:COMMIT")


def _round(harness: CrashHarness, rng: random.Random) -> list[str]:
    """One kill: from outside (half the rounds) or at a chosen statement (the other half)."""
    roll = rng.random()
    if roll < 0.5:
        return harness.external_kill(max_lines=rng.choice((5, 40, 150)))
    if roll < 0.75:
        return harness.crash_at(f"{rng.choice(TARGETED)}:{rng.randint(1, 20)}")
    return harness.crash_at(f"any::{rng.randint(1, 600)}")


def crash_stress(kills: int, seed: int, work_dir: Path) -> int:
    harness = CrashHarness(work_dir, seed)
    rng = random.Random(seed)
    started = time.monotonic()
    while harness.kills < kills:
        for line in _round(harness, rng):
            print(f"LOST: {line}", flush=True)
        if harness.kills % 10 == 0:
            print(f"... {harness.kills} kills, {harness.ledger.acked_items} acked items, "
                  f"{len(harness.violations)} lost ({time.monotonic() - started:.0f} s)", flush=True)
    print(f"{harness.kills} kills, {harness.ledger.acked_items} acked items, {len(harness.violations)} lost")
    return 1 if harness.violations else 0


def _write_bytes() -> tuple[int, int]:
    """(write_bytes, wchar) of this process: what reached the block layer, what went through write()."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["write_bytes"]), int(fields["wchar"])


def write_amplification(work_dir: Path, frames: int = 1000, size: int = 50 * 1024) -> None:
    from focoos_edge.delivery.spool import Spool

    jpeg = os.urandom(size)
    scenarios = (("backlog: put, take, result replaces frame, ack", 64 * 1024 * 1024, True),
                 ("full 4 MiB spool: every put evicts", 4 * 1024 * 1024, False))
    for name, max_bytes, consume in scenarios:
        path = work_dir / f"amp-{int(consume)}" / "spool.db"
        spool = Spool(path, max_bytes, max_age_s=3600)
        before, before_w = _write_bytes()
        started = time.monotonic()
        for n in range(frames):
            spool.put_frame(make_job("cam", f"amp-{n}", jpeg))
            if consume:
                taken = spool.take_frame()
                rid = spool.put_message("cam", "edge/cam/detections", b'{"detections": []}', 1, done_frame=taken.row_id)
                spool.delete_messages([rid])
        spool.close()  # includes the final checkpoint
        written, wchar = (a - b for a, b in zip(_write_bytes(), (before, before_w), strict=True))
        payload = frames * size
        print(f"write amplification, {name}: {frames} x {size // 1024} KiB frames, "
              f"write_bytes/payload = {written / payload:.2f}, wchar/payload = {wchar / payload:.2f}, "
              f"{frames / (time.monotonic() - started):.0f} frames/s")
        if written == 0:
            print("  (write_bytes is 0: the directory is probably on tmpfs; use --dir on a real disk)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs to survive (default 50)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time-based, printed)")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a new temporary one)")
    parser.add_argument("--write-amp", action="store_true", help="also measure write amplification")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else time.time_ns() % 2**32
    work_dir = args.dir or Path(tempfile.mkdtemp(prefix="spool-crash-", dir="/var/tmp"))
    print(f"seed {seed}, work directory {work_dir}", flush=True)
    status = crash_stress(args.kills, seed, work_dir / "crash")
    if args.write_amp:
        write_amplification(work_dir)
    return status


if __name__ == "__main__":
    sys.exit(main())
