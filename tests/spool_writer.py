"""Crash and disk-full drivers for the spool: a writer subprocess, and the harness that kills it.

As a script (run with the venv's python):
- ``spool_writer.py write DB RUN SEED [PHASE:PREFIX:N]`` puts frames and messages into a real Spool in
  a loop and prints one ledger line per operation *after* the call returned (that line is the
  "ack"; an intent line is printed *before* a consuming call). With ``PHASE:PREFIX:N`` it SIGKILLs
  itself when the N-th SQL statement starting with PREFIX begins inside PHASE (``any`` = every
  phase, empty PREFIX = every statement): a crash between two exact steps of a transaction.
- ``spool_writer.py diskfull DIR`` runs the disk-full scenario on DIR (a small tmpfs) and prints a
  JSON report.
Imported (tests/test_spool.py, scripts/spool_crash_stress.py) it offers `CrashHarness`: start a
writer, SIGKILL it, reopen the spool and check every acked item against the ledgers.

Ledger lines: ``F fid`` frame put; ``B fid`` about to store the frame's result
(``put_message(done_frame=...)``); ``M fid rid`` result stored; ``N key rid`` standalone message
stored; ``x rid..`` about to delete messages; ``X rid..`` deleted; ``d fid`` about to drop a frame;
``D fid`` dropped; ``R fid`` released.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:  # run as a script: the package from this tree unless one is installed
    sys.path.append(str(ROOT))

from focoos_edge.capture.encode import FrameJob  # noqa: E402
from focoos_edge.delivery.spool import Spool, SpoolError  # noqa: E402

CAMERAS = ("cam0", "cam1", "cam2")
WRITER_MAX_BYTES = 64 * 1024 * 1024  # never reached by the writer: nothing is evicted, so nothing may go missing
WRITER_MAX_OPS = 200_000  # a writer whose harness died stops by itself


def frame_payload(frame_id: str, max_size: int = 16 * 1024) -> bytes:
    """Deterministic content of a frame: a reader can check every byte it gets back."""
    size = 1 + zlib.crc32(frame_id.encode()) % max_size
    return random.Random(frame_id).randbytes(size)


def make_job(camera: str, frame_id: str, jpeg: bytes, captured_at_ns: int | None = None) -> FrameJob:
    """A FrameJob carrying `jpeg` (any bytes: the spool never decodes them)."""
    return FrameJob(camera=camera, frame_id=frame_id,
                    captured_at_ns=time.time_ns() if captured_at_ns is None else captured_at_ns,
                    captured_mono=0.0, width=640, height=360, scale=0.5, jpeg=jpeg)


def result_payload(frame_id: str) -> bytes:
    return b'{"result_of": "' + frame_id.encode() + b'"}'


def note_payload(key: str) -> bytes:
    return b'{"note": "' + key.encode() + b'"}'


# -- the writer (subprocess side) --------------------------------------------------------------
class _CrashPoint:
    """SQL trace hook: SIGKILL this process when the chosen statement starts."""

    def __init__(self, spec: str):
        phase, prefix, nth = spec.split(":")
        self.phase, self.prefix, self.left = phase, prefix.upper(), int(nth)
        self.current = ""

    def __call__(self, statement: str) -> None:
        if self.phase not in ("any", self.current):
            return
        if statement.lstrip().upper().startswith(self.prefix):
            self.left -= 1
            if self.left <= 0:
                os.kill(os.getpid(), signal.SIGKILL)


def _ack(line: str) -> None:
    print(line, flush=True)  # one write(2) per line into the ledger file


def _writer(db: str, run: str, seed: int, crash_spec: str | None) -> None:
    rng = random.Random(seed)
    spool = Spool(db, WRITER_MAX_BYTES, max_age_s=10 * 86400)
    crash = _CrashPoint(crash_spec) if crash_spec else None
    if crash:
        spool._db.set_trace_callback(crash)  # white-box: the only way to stop between two statements

    def phase(name: str) -> None:
        if crash:
            crash.current = name

    for n in range(WRITER_MAX_OPS):
        fid = f"{run}-{n}"
        phase("frame")
        spool.put_frame(make_job(CAMERAS[n % 3], fid, frame_payload(fid)))
        _ack(f"F {fid}")
        roll = rng.random()
        if roll < 0.70 and (taken := spool.take_frame()) is not None:
            taken_id = taken.job.frame_id
            _ack(f"B {taken_id}")
            phase("result")
            rid = spool.put_message(taken.job.camera, f"edge/{taken.job.camera}/detections",
                                    result_payload(taken_id), qos=1, done_frame=taken.row_id)
            _ack(f"M {taken_id} {rid}")
        elif roll < 0.80 and (taken := spool.take_frame()) is not None:
            _ack(f"d {taken.job.frame_id}")
            phase("drop")
            spool.drop_frame(taken.row_id, "dead_letter_test")
            _ack(f"D {taken.job.frame_id}")
        elif roll < 0.85 and (taken := spool.take_frame()) is not None:
            phase("release")
            spool.release_frame(taken.row_id, attempted=True)
            _ack(f"R {taken.job.frame_id}")
        elif roll < 0.92:
            phase("note")
            rid = spool.put_message(CAMERAS[n % 3], "edge/state", note_payload(fid), qos=1, retain=True)
            _ack(f"N {fid} {rid}")
        if rng.random() < 0.35 and (msgs := spool.peek_messages(0, rng.randint(1, 4))):
            ids = " ".join(str(m.row_id) for m in msgs)
            _ack(f"x {ids}")
            phase("delete")
            spool.delete_messages([m.row_id for m in msgs])
            _ack(f"X {ids}")


# -- the disk-full probe (runs inside `unshare -m` on a 2 MiB tmpfs) --------------------------------
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname, record.getMessage()))


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(path: Path) -> None:
    """Take every free byte of the filesystem (another program filling the card)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)


def _put_until_error(spool: Spool, report: dict, max_puts: int = 400) -> None:
    for n in range(max_puts):
        try:
            if n % 2:
                fid = f"full-{n}"
                spool.put_frame(make_job("cam", fid, random.Random(fid).randbytes(20 * 1024)))
            else:
                spool.put_message("cam", "edge/cam/detections", os.urandom(8000), qos=1)
        except SpoolError as exc:
            report.update(error=str(exc), error_type=type(exc).__name__, disk_full_flag=spool.disk_full)
            return
        except Exception as exc:  # untyped errors are a finding: report them instead of dying
            report.update(error=repr(exc), error_type=type(exc).__name__, disk_full_flag=spool.disk_full)
            return
        report["puts_after_fill"] += 1


def _attempt(report: dict, key: str, fn) -> object:
    try:
        value = fn()
        report[key] = "ok"
        return value
    except Exception as exc:
        report[key] = f"{type(exc).__name__}: {exc}"
        return None


def _diskfull(directory: str) -> None:
    d = Path(directory)
    records = _Records()
    logging.getLogger("focoos_edge").addHandler(records)
    logging.getLogger("focoos_edge").setLevel(logging.INFO)
    report: dict = {"fs_free_at_start": _free_bytes(d), "puts_after_fill": 0}
    spool = Spool(d / "spool.db", 64 * 1024 * 1024, 3600, outbox_max_bytes=1024 * 1024)
    report["budget_max_bytes"] = spool.budget.max_bytes
    msgs = [spool.put_message("cam", "edge/cam/detections", os.urandom(4000), qos=1) for _ in range(8)]
    for n in range(8):
        spool.put_frame(make_job("cam", f"pre-{n}", random.Random(n).randbytes(20 * 1024)))
    _fill(d / "filler")
    report["fs_free_after_fill"] = _free_bytes(d)
    _put_until_error(spool, report)
    deleted = _attempt(report, "delete_messages", lambda: spool.delete_messages(msgs[:3]))
    report["deleted"] = sum(deleted.values()) if deleted else 0
    taken = _attempt(report, "take_frame", spool.take_frame)
    if taken is not None:
        _attempt(report, "drop_frame", lambda: spool.drop_frame(taken.row_id, "dead_letter_test"))
    retry = _attempt(report, "take_frame_to_release", spool.take_frame)
    if retry is not None:  # a failed upload gives its frame back: that must not raise either
        _attempt(report, "release_frame", lambda: spool.release_frame(retry.row_id, attempted=True))
    (d / "filler").unlink()
    report["fs_free_after_unlink"] = _free_bytes(d)
    _attempt(report, "put_frame_after_free", lambda: spool.put_frame(make_job("cam", "after", b"\xff" * 20000)))
    _attempt(report, "put_message_after_free", lambda: spool.put_message("cam", "t", b"after", qos=1))
    report["disk_full_flag_after_free"] = spool.disk_full
    stats = spool.snapshot()
    report["stats"] = {"frames": asdict(stats.frames), "outbox": asdict(stats.outbox)}
    report["evicted"] = {f"{cam}/{why}": n for (cam, why), n in spool.evicted.items()}
    spool.close()
    report["integrity"], report["sum_bytes"] = integrity_and_sums(d / "spool.db")
    report["log"] = records.lines
    print(json.dumps(report))


# -- the harness (test side) ----------------------------------------------------------------------
@dataclass
class Ledger:
    """Everything the writers acknowledged (or announced), merged over every run."""

    frames: set[str] = field(default_factory=set)
    consuming: set[str] = field(default_factory=set)
    results: dict[str, int] = field(default_factory=dict)
    # Results committed but not acked (killed between commit and print), learnt after a kill: a later
    # writer may deliver and delete them.
    found: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    deleting: set[int] = field(default_factory=set)
    deleted: set[int] = field(default_factory=set)
    dropping: set[str] = field(default_factory=set)
    dropped: set[str] = field(default_factory=set)

    def feed(self, text: str) -> None:
        """Add a ledger file's complete lines (a line cut by the kill was never acked)."""
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            kind, *args = line.split()
            if kind == "F":
                self.frames.add(args[0])
            elif kind == "B":
                self.consuming.add(args[0])
            elif kind == "M":
                self.results[args[0]] = int(args[1])
            elif kind == "N":
                self.notes[args[0]] = int(args[1])
            elif kind in ("x", "X"):
                (self.deleting if kind == "x" else self.deleted).update(map(int, args))
            elif kind in ("d", "D"):
                (self.dropping if kind == "d" else self.dropped).add(args[0])

    @property
    def acked_items(self) -> int:
        return len(self.frames) + len(self.results) + len(self.notes)


def read_spool_rows(db_path: Path) -> tuple[dict[str, bytes], dict[int, bytes]]:
    """frame_id -> jpeg and message id -> payload, read with a separate plain connection."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        frames = {fid: bytes(blob) for fid, blob in db.execute("SELECT frame_id, jpeg FROM frames")}
        msgs = {rid: bytes(blob) for rid, blob in db.execute("SELECT id, payload FROM outbox")}
    finally:
        db.close()
    return frames, msgs


def integrity_and_sums(db_path: Path) -> tuple[str, list[int]]:
    """`PRAGMA integrity_check` and [SUM(bytes) of frames, of outbox], from a separate connection."""
    db = sqlite3.connect(db_path)
    try:
        check = "\n".join(row[0] for row in db.execute("PRAGMA integrity_check"))
        sums = [db.execute(f"SELECT COALESCE(SUM(bytes), 0) FROM {t}").fetchone()[0] for t in ("frames", "outbox")]
    finally:
        db.close()
    return check, sums


def check_ledger(ledger: Ledger, frames: dict[str, bytes], msgs: dict[int, bytes]) -> list[str]:
    """Every violation of "acked means durable" and "a result replaces its frame atomically".

    Also learns (into `ledger.found`) the results that were committed but never acked.
    """
    bad = []
    by_payload = {payload: rid for rid, payload in msgs.items()}
    for fid in sorted(ledger.frames | ledger.consuming):
        if fid in frames and frames[fid] != frame_payload(fid):
            bad.append(f"frame {fid}: content changed")
        result_rid = by_payload.get(result_payload(fid))
        if fid in ledger.consuming and fid in frames and result_rid is not None:
            bad.append(f"frame {fid} and its result (message {result_rid}) are both present")
        if result_rid is not None:
            ledger.found.setdefault(fid, result_rid)
        if fid in frames or fid in ledger.dropping or result_rid is not None:
            continue
        if fid in ledger.consuming and ledger.results.get(fid, ledger.found.get(fid)) in ledger.deleting:
            continue  # its result was delivered and acked
        what = "frame and its result are both missing" if fid in ledger.consuming else "acked frame lost"
        bad.append(f"frame {fid}: {what}")
    committed = (("result", ledger.results | ledger.found, result_payload), ("note", ledger.notes, note_payload))
    for kind, acked, payload_of in committed:
        for key, rid in sorted(acked.items()):
            if rid not in ledger.deleting and msgs.get(rid) != payload_of(key):
                bad.append(f"{kind} message {rid} ({key}): acked but missing or changed")
    bad += [f"message {rid}: deletion acked but still present" for rid in sorted(ledger.deleted & msgs.keys())]
    bad += [f"frame {fid}: drop acked but still present" for fid in sorted(ledger.dropped & frames.keys())]
    return bad


def check_reopened(db_path: Path) -> list[str]:
    """Reopen as the daemon would: integrity, byte counters and liveness (new items go in and out)."""
    bad = []
    spool = Spool(db_path, WRITER_MAX_BYTES, max_age_s=10 * 86400)
    try:
        if spool.quarantined:
            bad.append(f"the spool was quarantined after a kill: {spool.quarantined}")
        check, sums = integrity_and_sums(db_path)
        if check != "ok":
            bad.append(f"integrity_check: {check}")
        stats = spool.snapshot()
        if [stats.frames.bytes, stats.outbox.bytes] != sums:
            bad.append(f"byte counters {stats.frames.bytes}/{stats.outbox.bytes} != SUM(bytes) {sums}")
        bad += _liveness(spool)
    finally:
        spool.close()
    return bad


def _liveness(spool: Spool) -> list[str]:
    """A new frame can be put, taken and replaced by its result; the result can be peeked and acked."""
    fid = f"live-{time.time_ns()}"
    spool.put_frame(make_job("live", fid, b"live-frame"))
    taken = []
    while (sf := spool.take_frame()) is not None and sf.job.frame_id != fid:
        taken.append(sf)
    if sf is None:
        return [f"liveness: the frame just put ({fid}) never came out of take_frame"]
    last = max((m.row_id for m in spool.peek_messages(0, 1_000_000)), default=0)
    rid = spool.put_message("live", "edge/live", b"live-result", qos=1, done_frame=sf.row_id)
    fresh = spool.peek_messages(last, 10)
    if [m.row_id for m in fresh] != [rid] or fresh[0].payload != b"live-result":
        return [f"liveness: message {rid} not returned by peek_messages (got {fresh})"]
    if sum(spool.delete_messages([rid]).values()) != 1:
        return [f"liveness: message {rid} could not be deleted"]
    for other in taken:
        spool.release_frame(other.row_id, attempted=False)
    return []


class CrashHarness:
    """Runs writers against one spool file, SIGKILLs them, and verifies after each kill."""

    def __init__(self, work_dir: Path, seed: int, python: str = sys.executable, start_timeout_s: float = 120.0):
        self.dir = work_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = self.dir / "spool.db"
        self.rng = random.Random(seed)
        self.python = python
        self.timeout_s = start_timeout_s
        self.ledger = Ledger()
        self.kills = 0
        self.violations: list[str] = []
        self._runs = 0
        self._wait = threading.Event()  # never set: its wait() is an interruptible sleep

    def _start(self, crash_spec: str | None) -> tuple[subprocess.Popen, Path, Path]:
        self._runs += 1
        out = self.dir / f"ledger-{self._runs}.txt"
        err = self.dir / f"writer-{self._runs}.stderr"
        cmd = [self.python, str(HERE), "write", str(self.db), f"r{self._runs}", str(self.rng.randrange(2**32))]
        if crash_spec:
            cmd.append(crash_spec)
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=o, stderr=e, start_new_session=True)
        return proc, out, err

    def _finish(self, proc: subprocess.Popen, out: Path, err: Path, what: str) -> list[str]:
        try:
            code = proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = "timeout"
        if code != -signal.SIGKILL:
            return [f"{what}: writer ended with {code}, not SIGKILL; stderr: {err.read_text()[-2000:]}"]
        self.kills += 1
        self.ledger.feed(out.read_text())
        frames, msgs = read_spool_rows(self.db)
        bad = check_ledger(self.ledger, frames, msgs) + check_reopened(self.db)
        return [f"{what}: {b}" for b in bad]

    def external_kill(self, max_lines: int = 80) -> list[str]:
        """Start a writer, SIGKILL it after a random number of acks plus a random moment."""
        proc, out, err = self._start(None)
        want = self.rng.randint(0, max_lines)
        deadline = time.monotonic() + self.timeout_s
        try:
            while out.read_bytes().count(b"\n") < want and proc.poll() is None and time.monotonic() < deadline:
                self._wait.wait(0.002)
            self._wait.wait(self.rng.uniform(0, 0.01))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        return self._record(self._finish(proc, out, err, f"kill after >= {want} acks (run {self._runs})"))

    def crash_at(self, spec: str) -> list[str]:
        """Run a writer that SIGKILLs itself at an exact SQL statement (`PHASE:PREFIX:N`)."""
        proc, out, err = self._start(spec)
        return self._record(self._finish(proc, out, err, f"self-kill at {spec} (run {self._runs})"))

    def _record(self, bad: list[str]) -> list[str]:
        self.violations += bad
        return bad


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[0] == "write":
        _writer(argv[1], argv[2], int(argv[3]), argv[4] if len(argv) > 4 else None)
        return 0
    if len(argv) == 2 and argv[0] == "diskfull":
        _diskfull(argv[1])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
