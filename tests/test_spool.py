"""The on-disk spool against real SQLite files, real processes, real signals and a real full disk.

Sections: the contract of every public call; a Hypothesis state machine comparing the spool with an
in-memory model (contents, order, byte counters, eviction policy and the exact accounting
`produced == present + acked + evicted`); the disk budget measured on the files; SIGKILL of a writer
process at random moments and at exact SQL statements; corrupt files and rows; file modes; a full
tmpfs; the schema.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import spool_writer
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from spool_writer import CrashHarness, check_ledger, integrity_and_sums, make_job, read_spool_rows

from focoos_edge.capture.encode import FrameJob
from focoos_edge.delivery.spool import Spool, SpoolError
from focoos_edge.delivery.spool_files import Budget
from focoos_edge.delivery.spool_items import QueueSnapshot

KIB = 1024
MIB = 1024 * KIB
T0_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z: an injected clock needs no real time


class ManualClock:
    """A clock the test moves by hand (passed to Spool as `clock_ns`)."""

    def __init__(self, now_ns: int = T0_NS):
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1e9)


def payload(key: str, size: int) -> bytes:
    """Deterministic bytes: what comes back can be compared byte for byte."""
    return random.Random(key).randbytes(size)


def job(frame_id: str, size: int = 1000, camera: str = "cam", captured_at_ns: int = T0_NS) -> FrameJob:
    return make_job(camera, frame_id, payload(frame_id, size), captured_at_ns)


def rows(db_path: Path, sql: str, *args: object) -> list[tuple]:
    """Query the spool file through a separate plain connection (what is really on disk)."""
    db = sqlite3.connect(db_path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def spool_files_bytes(db_path: Path) -> int:
    """Size of every file the spool keeps next to its database (db, -wal, -shm and any other)."""
    return sum(os.path.getsize(p) for p in db_path.parent.iterdir() if p.name.startswith(db_path.name))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "spool.db"


@pytest.fixture
def spool(db_path: Path, clock: ManualClock):
    sp = Spool(db_path, max_bytes=16 * MIB, max_age_s=60, clock_ns=clock)
    yield sp
    sp.close()


# -- 1. the contract ---------------------------------------------------------------------------------
def test_take_frame_is_fifo_and_returns_every_field(spool: Spool) -> None:
    jobs = [job(f"f{i}", 500 + i, camera=f"cam{i % 2}", captured_at_ns=T0_NS + i) for i in range(5)]
    for j in jobs:
        spool.put_frame(j)
    taken = [spool.take_frame() for _ in jobs]
    assert [t.job for t in taken] == jobs  # camera, frame_id, captured_at, size, scale, jpeg: all kept
    assert [t.attempts for t in taken] == [0] * 5
    assert len({t.row_id for t in taken}) == 5
    assert spool.take_frame() is None  # every frame is leased now


def test_leases_exclude_and_release_brings_the_frame_back(spool: Spool) -> None:
    for i in range(3):
        spool.put_frame(job(f"f{i}"))
    first, second = spool.take_frame(), spool.take_frame()
    assert (first.job.frame_id, second.job.frame_id) == ("f0", "f1")
    spool.release_frame(first.row_id)  # attempted: counts
    again = spool.take_frame()
    assert (again.row_id, again.job.frame_id, again.attempts) == (first.row_id, "f0", 1)
    spool.release_frame(again.row_id)
    spool.release_frame(second.row_id, attempted=False)  # never sent: does not count
    retaken = [spool.take_frame() for _ in range(3)]
    assert [(t.job.frame_id, t.attempts) for t in retaken] == [("f0", 2), ("f1", 0), ("f2", 0)]
    assert spool.take_frame() is None
    assert spool.pending() == {"cam": {"frames": 3, "outbox": 0}}  # leased frames are still pending


def test_put_message_with_done_frame_replaces_the_frame(spool: Spool, db_path: Path) -> None:
    spool.put_frame(job("f0", 3000))
    spool.put_frame(job("f1", 2000))
    taken = spool.take_frame()
    rid = spool.put_message("cam", "edge/cam/detections", b'{"n": 1}', qos=1, done_frame=taken.row_id)
    assert rows(db_path, "SELECT frame_id FROM frames") == [("f1",)]
    assert rows(db_path, "SELECT id, camera, topic, qos, retain, payload FROM outbox") == [
        (rid, "cam", "edge/cam/detections", 1, 0, b'{"n": 1}')]
    assert spool.snapshot().frames.bytes == 2000
    assert spool.snapshot().outbox.bytes == len(b'{"n": 1}') + len("edge/cam/detections")
    assert spool.take_frame().job.frame_id == "f1"  # the done frame's lease is gone with it


def test_peek_and_delete_messages(spool: Spool) -> None:
    ids = [spool.put_message(f"cam{i % 2}", f"t/{i}", f"m{i}".encode(), qos=1, retain=i == 0) for i in range(5)]
    assert ids == sorted(ids)
    head = spool.peek_messages(0, 3)
    assert [(m.row_id, m.camera, m.topic, m.qos, m.retain, m.payload) for m in head] == [
        (ids[0], "cam0", "t/0", 1, True, b"m0"), (ids[1], "cam1", "t/1", 1, False, b"m1"),
        (ids[2], "cam0", "t/2", 1, False, b"m2")]
    assert [m.row_id for m in spool.peek_messages(ids[2], 10)] == ids[3:]
    assert spool.peek_messages(0, 10) == spool.peek_messages(0, 10)  # peeking does not consume
    assert spool.delete_messages([ids[0], ids[1], ids[1], 999_999]) == Counter({"cam0": 1, "cam1": 1})
    assert [m.row_id for m in spool.peek_messages(0, 10)] == ids[2:]
    assert spool.delete_messages([]) == Counter()
    assert spool.pending() == {"cam0": {"frames": 0, "outbox": 2}, "cam1": {"frames": 0, "outbox": 1}}


def test_expire_uses_the_injected_clock_and_spares_leased_frames(spool: Spool, clock: ManualClock) -> None:
    spool.put_frame(job("old-in-flight", captured_at_ns=T0_NS - 120 * 10**9))
    spool.put_frame(job("old", captured_at_ns=T0_NS - 120 * 10**9))
    spool.put_frame(job("new", captured_at_ns=T0_NS))
    spool.put_message("cam", "t", b"m-at-t0", qos=1)
    assert spool.take_frame().job.frame_id == "old-in-flight"
    assert spool.snapshot().frames.oldest_age_s == 120.0
    clock.advance(30)
    assert spool.expire() == 1  # "old" only: the rest is younger than 60 s or in flight
    assert rows(spool.path, "SELECT frame_id FROM frames ORDER BY id") == [("old-in-flight",), ("new",)]
    clock.advance(31)  # t0 + 61 s: "new" and the first message are now too old
    spool.put_message("cam", "t", b"m-at-t61", qos=1)
    assert spool.expire() == 2
    assert [m.payload for m in spool.peek_messages(0, 10)] == [b"m-at-t61"]
    assert rows(spool.path, "SELECT frame_id FROM frames") == [("old-in-flight",)]
    assert spool.evicted == Counter({("cam", "max_age"): 3})
    assert spool.expire() == 0


def test_pending_and_snapshot_figures(spool: Spool, clock: ManualClock) -> None:
    assert spool.pending() == {}
    spool.put_frame(job("a1", 1000, camera="a", captured_at_ns=T0_NS - 5 * 10**9))
    spool.put_frame(job("a2", 2000, camera="a"))
    spool.put_frame(job("b1", 4000, camera="b"))
    spool.put_message("b", "tt", b"x" * 98, qos=1)
    clock.advance(2.5)
    assert spool.pending() == {"a": {"frames": 2, "outbox": 0}, "b": {"frames": 1, "outbox": 1}}
    stats = spool.snapshot()
    assert stats.frames == QueueSnapshot(count=3, bytes=7000, oldest_age_s=7.5)
    assert stats.outbox == QueueSnapshot(count=1, bytes=100, oldest_age_s=2.5)
    assert stats.max_bytes == 16 * MIB and stats.disk_full is False
    assert stats.disk_bytes == spool.disk_bytes() == spool_files_bytes(spool.path) > 7000
    assert stats.pending == spool.pending() and stats.evicted == {}


def test_duplicate_frame_id_is_ignored_and_counted_once(spool: Spool, db_path: Path) -> None:
    spool.put_frame(job("dup", 5000))
    spool.put_frame(job("dup", 5000))
    assert rows(db_path, "SELECT COUNT(*), SUM(bytes) FROM frames") == [(1, 5000)]
    assert spool.snapshot().frames == QueueSnapshot(count=1, bytes=5000, oldest_age_s=0.0)


def test_duplicate_put_into_a_full_spool_evicts_nothing(db_path: Path) -> None:
    """A put that inserts nothing must not make room: it would drop a frame for nothing."""
    spool = Spool(db_path, max_bytes=2 * MIB, max_age_s=3600)
    try:
        n = 0
        while not spool.evicted:  # fill until the budget starts evicting
            spool.put_frame(job(f"f{n}", 50 * KIB))
            n += 1
        kept = rows(db_path, "SELECT frame_id FROM frames ORDER BY id")
        evicted = Counter(spool.evicted)
        spool.put_frame(job(f"f{n - 1}", 50 * KIB))  # the newest frame again
        assert rows(db_path, "SELECT frame_id FROM frames ORDER BY id") == kept
        assert spool.evicted == evicted
    finally:
        spool.close()


def test_reopen_keeps_everything_and_counters_match_the_rows(db_path: Path, clock: ManualClock) -> None:
    spool = Spool(db_path, max_bytes=16 * MIB, max_age_s=60, clock_ns=clock)
    for i in range(6):
        spool.put_frame(job(f"f{i}", 1000 * (i + 1), camera=f"c{i % 3}"))
    ids = [spool.put_message(f"c{i}", "t", b"p" * (10 + i), qos=1) for i in range(3)]
    leased = spool.take_frame()
    spool.release_frame(spool.take_frame().row_id)  # f1: one attempt, persisted
    before = (spool.pending(), spool.snapshot().frames, spool.snapshot().outbox)
    spool.close()
    spool = Spool(db_path, max_bytes=16 * MIB, max_age_s=60, clock_ns=clock)
    try:
        assert (spool.pending(), spool.snapshot().frames, spool.snapshot().outbox) == before
        frames_sum, outbox_sum = integrity_and_sums(db_path)[1]
        assert (spool.snapshot().frames.bytes, spool.snapshot().outbox.bytes) == (frames_sum, outbox_sum)
        again = spool.take_frame()  # a lease does not survive a restart: at-least-once
        assert (again.row_id, again.job) == (leased.row_id, leased.job)
        f1 = spool.take_frame()
        assert (f1.job.frame_id, f1.attempts) == ("f1", 1)
        assert [m.row_id for m in spool.peek_messages(0, 10)] == ids
    finally:
        spool.close()


def test_failed_put_changes_neither_rows_nor_counters(db_path: Path) -> None:
    """A put that cannot be stored (a result bigger than the whole spool) is rolled back entirely: its
    frame survives, and the eviction counts and byte counters describe the rows that are really there."""
    spool = Spool(db_path, max_bytes=2 * MIB, max_age_s=3600)
    try:
        for i in range(5):
            spool.put_frame(job(f"f{i}", 20 * KIB))
        done = spool.take_frame()
        with pytest.raises(SpoolError):
            spool.put_message("cam", "t", b"\0" * (3 * MIB), qos=1, done_frame=done.row_id)
        present = {fid for (fid,) in rows(db_path, "SELECT frame_id FROM frames")}
        assert done.job.frame_id in present  # the frame and its result are never both missing
        assert sum(spool.evicted.values()) == 5 - len(present)  # every removal counted, nothing more
        frames_sum, outbox_sum = integrity_and_sums(db_path)[1]
        assert (spool.snapshot().frames.bytes, spool.snapshot().outbox.bytes) == (frames_sum, outbox_sum)
    finally:
        spool.close()


# -- 2. the spool against a model ----------------------------------------------------------------------
@dataclass
class ModelFrame:
    frame_id: str
    camera: str
    size: int
    crc: int
    captured_at_ns: int
    attempts: int = 0


@dataclass
class ModelMessage:
    camera: str
    topic: str
    payload: bytes
    created_at_ns: int

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.topic)


class SpoolModel:
    """The documented policy, written as plainly as possible.

    Frames are evicted oldest first (never one in flight) to keep frames + messages within the
    payload budget; messages are evicted only beyond their own budget, and a message evicts frames
    before any message. A duplicate frame_id (still present) is ignored. Acked = consumed as
    `done_frame` or deleted after a PUBACK; everything else that leaves is counted in `evicted`.
    """

    def __init__(self, budget: Budget, max_age_ns: int):
        self.budget = budget
        self.max_age_ns = max_age_ns
        self.frames: dict[str, ModelFrame] = {}  # insertion order == row id order
        self.messages: dict[int, ModelMessage] = {}
        self.leased: set[str] = set()
        self.evicted: Counter = Counter()
        self.produced = 0
        self.acked = 0

    def frame_bytes(self) -> int:
        return sum(f.size for f in self.frames.values())

    def outbox_bytes(self) -> int:
        return sum(m.size for m in self.messages.values())

    def _evict_oldest_frame(self, reason: str) -> bool:
        victim = next((f for f in self.frames.values() if f.frame_id not in self.leased), None)
        if victim is None:
            return False
        del self.frames[victim.frame_id]
        self.evicted[(victim.camera, reason)] += 1
        return True

    def put_frame(self, frame: ModelFrame) -> None:
        if frame.frame_id in self.frames:
            return
        self.produced += 1
        if frame.size > self.budget.payload_bytes - self.budget.outbox_bytes:
            self.evicted[(frame.camera, "too_large")] += 1
            return
        while self.frame_bytes() + frame.size > self.budget.payload_bytes - self.outbox_bytes():
            if not self._evict_oldest_frame("budget"):
                break
        self.frames[frame.frame_id] = frame

    def take(self) -> ModelFrame | None:
        frame = next((f for f in self.frames.values() if f.frame_id not in self.leased), None)
        if frame is not None:
            self.leased.add(frame.frame_id)
        return frame

    def put_message(self, row_id: int, msg: ModelMessage, done_frame: str | None) -> None:
        self.produced += 1
        if done_frame is not None:
            del self.frames[done_frame]
            self.leased.discard(done_frame)
            self.acked += 1
        while self.outbox_bytes() + msg.size > self.budget.outbox_bytes and self.messages:
            oldest = next(iter(self.messages))
            self.evicted[(self.messages.pop(oldest).camera, "outbox_budget")] += 1
        while self.frame_bytes() + self.outbox_bytes() + msg.size > self.budget.payload_bytes:
            if not self._evict_oldest_frame("budget"):
                break
        self.messages[row_id] = msg

    def expire(self, now_ns: int) -> int:
        cutoff = now_ns - self.max_age_ns
        old_frames = [f for f in self.frames.values() if f.captured_at_ns < cutoff and f.frame_id not in self.leased]
        old_msgs = [rid for rid, m in self.messages.items() if m.created_at_ns < cutoff]
        for f in old_frames:
            del self.frames[f.frame_id]
            self.evicted[(f.camera, "max_age")] += 1
        for rid in old_msgs:
            self.evicted[(self.messages.pop(rid).camera, "max_age")] += 1
        return len(old_frames) + len(old_msgs)

    def pending(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for f in self.frames.values():
            out.setdefault(f.camera, {"frames": 0, "outbox": 0})["frames"] += 1
        for m in self.messages.values():
            out.setdefault(m.camera, {"frames": 0, "outbox": 0})["outbox"] += 1
        return out


HYP_MAX_BYTES = 1 * MIB  # the smallest the config allows: the budgets evict within a few steps
HYP_MAX_AGE_S = 300
MAX_IN_FLIGHT = 4  # leases at once, as the daemon's uplink workers hold them: leased frames cannot be evicted
CAMERA_NAMES = st.sampled_from(["cam1", "cam2", "cam3"])


class SpoolMachine(RuleBasedStateMachine):
    """Random sequences of every public call, checked against SpoolModel after each step."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="spool-model-"))
        self.path = self.dir / "spool.db"
        self.clock = ManualClock()
        self.spool = self._open()
        self.model = SpoolModel(self.spool.budget, HYP_MAX_AGE_S * 10**9)
        self.closed_evicted: Counter = Counter()  # `.evicted` of the instances closed so far
        self.jobs: list[FrameJob] = []
        self.taken: dict[str, int] = {}  # leased frame_id -> row id
        self.n = 0

    def _open(self) -> Spool:
        return Spool(self.path, HYP_MAX_BYTES, HYP_MAX_AGE_S, clock_ns=self.clock)

    def teardown(self) -> None:
        self.spool.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _put(self, fj: FrameJob) -> None:
        self.spool.put_frame(fj)
        self.model.put_frame(ModelFrame(fj.frame_id, fj.camera, len(fj.jpeg), zlib.crc32(fj.jpeg), fj.captured_at_ns))

    @initialize(count=st.integers(0, 40), seed=st.integers(0, 2**32 - 1))
    def prefill(self, count: int, seed: int) -> None:
        """Start anywhere between empty and over budget."""
        self.put_frames(count, seed)

    @rule(count=st.integers(1, 16), seed=st.integers(0, 2**32 - 1))
    def put_frames(self, count: int, seed: int) -> None:
        """A burst of frames of 1..60 KiB, some captured up to 150 s ago. Sizes come from a seeded
        generator: Hypothesis's own integers favour tiny values, which would never fill the budget."""
        rng = random.Random(seed)
        for _ in range(count):
            self.n += 1
            camera, size, age_s = rng.choice(["cam1", "cam2", "cam3"]), rng.randint(1, 60 * KIB), rng.randint(0, 150)
            fj = make_job(camera, f"f{self.n}", payload(f"f{self.n}", size), self.clock() - age_s * 10**9)
            self.jobs.append(fj)
            self._put(fj)

    @precondition(lambda self: self.jobs)
    @rule(index=st.integers(0, 10**6))
    def put_frame_again(self, index: int) -> None:
        """The same frame_id again (present, or already gone)."""
        self._put(self.jobs[index % len(self.jobs)])

    @rule(camera=CAMERA_NAMES)
    def put_too_large_frame(self, camera: str) -> None:
        self.n += 1
        size = self.spool.budget.payload_bytes - self.spool.budget.outbox_bytes + 1
        self._put(make_job(camera, f"f{self.n}", b"\x01" * size, self.clock()))

    @precondition(lambda self: len(self.taken) < MAX_IN_FLIGHT)
    @rule()
    def take_frame(self) -> None:
        got, want = self.spool.take_frame(), self.model.take()
        assert (got and got.job.frame_id) == (want and want.frame_id)
        if got is not None:
            assert (got.attempts, zlib.crc32(got.job.jpeg)) == (want.attempts, want.crc)
            self.taken[want.frame_id] = got.row_id

    @precondition(lambda self: self.taken)
    @rule(data=st.data(), attempted=st.booleans())
    def release_frame(self, data: st.DataObject, attempted: bool) -> None:
        fid = data.draw(st.sampled_from(sorted(self.taken)))
        self.spool.release_frame(self.taken.pop(fid), attempted)
        self.model.leased.discard(fid)
        self.model.frames[fid].attempts += attempted

    @precondition(lambda self: self.taken)
    @rule(data=st.data())
    def drop_frame(self, data: st.DataObject) -> None:
        fid = data.draw(st.sampled_from(sorted(self.taken)))
        self.spool.drop_frame(self.taken.pop(fid), "dead_letter_test")
        frame = self.model.frames.pop(fid)
        self.model.leased.discard(fid)
        self.model.evicted[(frame.camera, "dead_letter_test")] += 1

    @rule(data=st.data(), camera=CAMERA_NAMES, size=st.integers(1, 20 * KIB), with_frame=st.booleans())
    def put_message(self, data: st.DataObject, camera: str, size: int, with_frame: bool) -> None:
        done = data.draw(st.sampled_from(sorted(self.taken))) if with_frame and self.taken else None
        if done is not None:
            camera = self.model.frames[done].camera
        self.n += 1
        msg = ModelMessage(camera, f"edge/{camera}/detections", payload(f"m{self.n}", size), self.clock())
        rid = self.spool.put_message(msg.camera, msg.topic, msg.payload, qos=1,
                                     done_frame=self.taken.pop(done) if done else None)
        self.model.put_message(rid, msg, done)

    @precondition(lambda self: self.model.messages)
    @rule(data=st.data())
    def ack_messages(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(list(self.model.messages)), min_size=1, max_size=5, unique=True))
        done = self.spool.delete_messages(ids + [10**9])  # an unknown id is ignored
        expected = Counter(self.model.messages.pop(rid).camera for rid in ids)
        assert done == expected
        self.model.acked += len(ids)

    @rule(seconds=st.integers(0, 120))
    def expire(self, seconds: int) -> None:
        self.clock.advance(seconds)
        assert self.spool.expire() == self.model.expire(self.clock())

    @rule()
    def close_and_reopen(self) -> None:
        self.closed_evicted += self.spool.evicted
        self.spool.close()
        self.spool = self._open()
        self.model.leased.clear()  # leases are in memory: after a restart every frame is due again
        self.taken.clear()

    @invariant()
    def same_contents(self) -> None:
        frames = rows(self.path, "SELECT frame_id, camera, attempts, bytes, crc32, jpeg FROM frames ORDER BY id")
        assert [(f[0], f[1], f[2], f[3], f[4]) for f in frames] == [
            (f.frame_id, f.camera, f.attempts, f.size, f.crc) for f in self.model.frames.values()]
        assert all(zlib.crc32(f[5]) == f[4] for f in frames)
        msgs = rows(self.path, "SELECT id, camera, topic, payload FROM outbox ORDER BY id")
        assert msgs == [(rid, m.camera, m.topic, m.payload) for rid, m in self.model.messages.items()]
        assert self.spool.pending() == self.model.pending()

    @invariant()
    def same_bytes(self) -> None:
        want = [self.model.frame_bytes(), self.model.outbox_bytes()]
        stats = self.spool.snapshot()
        assert [stats.frames.bytes, stats.outbox.bytes] == want
        assert integrity_and_sums(self.path)[1] == want
        assert spool_files_bytes(self.path) <= HYP_MAX_BYTES + 64 * KIB  # the files, not the counters

    @invariant()
    def exact_accounting(self) -> None:
        evicted = +(self.closed_evicted + self.spool.evicted)
        for camera_reason in evicted:
            event(f"evicted: {camera_reason[1]}")
        assert evicted == +self.model.evicted
        present = len(self.model.frames) + len(self.model.messages)
        assert self.model.produced == present + self.model.acked + sum(evicted.values())


SpoolMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=60, deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
test_spool_matches_its_model = SpoolMachine.TestCase


# -- 3. the disk budget, measured on the files ------------------------------------------------------------
def test_files_stay_within_max_bytes_and_the_newest_frames_are_kept(db_path: Path) -> None:
    max_bytes, size, puts = 4 * MIB, 50 * KIB, 240
    spool = Spool(db_path, max_bytes=max_bytes, max_age_s=3600)
    try:
        biggest = 0
        for i in range(puts):
            spool.put_frame(job(f"f{i:04d}", size))
            biggest = max(biggest, spool_files_bytes(db_path))
            assert biggest <= max_bytes + size, f"after put {i}: {biggest} bytes on disk"
        kept = [fid for (fid,) in rows(db_path, "SELECT frame_id FROM frames ORDER BY id")]
        assert kept == [f"f{i:04d}" for i in range(puts - len(kept), puts)]  # the newest, in order
        assert len(kept) * size >= max_bytes // 2  # the budget is used, not just respected
        assert spool.evicted == Counter({("cam", "budget"): puts - len(kept)})
        assert spool.take_frame().job.frame_id == kept[0]  # still making progress
    finally:
        spool.close()
    assert spool_files_bytes(db_path) <= max_bytes


def test_messages_evict_older_messages_only_beyond_their_budget(db_path: Path) -> None:
    spool = Spool(db_path, max_bytes=4 * MIB, max_age_s=3600, outbox_max_bytes=256 * KIB)
    try:
        for i in range(20):
            spool.put_frame(job(f"f{i}", 50 * KIB))
        frames_before = rows(db_path, "SELECT frame_id FROM frames ORDER BY id")
        ids = [spool.put_message("cam", "t", payload(f"m{i}", 10 * KIB - 1), qos=1) for i in range(60)]
        kept = [m.row_id for m in spool.peek_messages(0, 100)]
        assert kept == ids[-len(kept):] and len(kept) == 256 * KIB // (10 * KIB)
        assert spool.evicted == Counter({("cam", "outbox_budget"): 60 - len(kept)})
        assert rows(db_path, "SELECT frame_id FROM frames ORDER BY id") == frames_before
        assert spool_files_bytes(db_path) <= 4 * MIB + 10 * KIB
    finally:
        spool.close()


# -- 4. crash safety: SIGKILL of a real writer process -------------------------------------------------------
def _no_violations(bad: list[str]) -> None:
    __tracebackhide__ = True
    assert not bad, "\n".join(bad[:20])


def test_acked_items_survive_sigkill_at_random_moments(tmp_path: Path) -> None:
    harness = CrashHarness(tmp_path / "crash", seed=20260101)
    for _ in range(8):
        _no_violations(harness.external_kill())
    assert harness.kills == 8 and harness.ledger.acked_items > 0


@pytest.mark.parametrize("crash_at", [
    "result:DELETE FROM FRAMES:1",  # inside put_message(done_frame): before the frame's delete
    "result:INSERT INTO OUTBOX:2",  # after the delete, before the insert
    "result:COMMIT:3",  # everything done but the commit
    "frame:COMMIT:4",
    "delete:COMMIT:1",  # an ack (delete_messages) being committed
    "drop:COMMIT:1",
    "any:BEGIN:25",  # the next transaction after whatever the 24th one was
])
def test_kill_between_two_steps_of_a_transaction(tmp_path: Path, crash_at: str) -> None:
    """The writer SIGKILLs itself when the chosen statement starts: the frame and its result are never
    both missing (nor both present), and everything acked before is still there."""
    harness = CrashHarness(tmp_path / "crash", seed=zlib.crc32(crash_at.encode()))
    _no_violations(harness.external_kill(max_lines=40))
    _no_violations(harness.crash_at(crash_at))
    _no_violations(harness.external_kill(max_lines=40))  # and the next run carries on


def test_the_crash_checker_notices_a_lost_item(tmp_path: Path) -> None:
    """The checks above can fail: remove one acked frame and one acked message by hand."""
    harness = CrashHarness(tmp_path / "crash", seed=7)
    for _ in range(20):
        _no_violations(harness.external_kill(max_lines=80))
        frames, msgs = read_spool_rows(harness.db)
        ledger = harness.ledger
        lost_frames = sorted((ledger.frames - ledger.consuming - ledger.dropping) & frames.keys())
        # A note whose deletion was announced (not yet acked) may go missing legitimately.
        lost_notes = sorted(rid for rid in ledger.notes.values() if rid in msgs and rid not in ledger.deleting)
        if lost_frames and lost_notes:
            break
    db = sqlite3.connect(harness.db)
    db.execute("DELETE FROM frames WHERE frame_id = ?", (lost_frames[0],))
    db.execute("DELETE FROM outbox WHERE id = ?", (lost_notes[0],))
    db.commit()
    db.close()
    bad = check_ledger(harness.ledger, *read_spool_rows(harness.db))
    assert f"frame {lost_frames[0]}: acked frame lost" in bad
    assert any(b.startswith(f"note message {lost_notes[0]} ") for b in bad)


# -- 5. corrupt files and rows --------------------------------------------------------------------------------
def _filled_spool(db_path: Path) -> None:
    spool = Spool(db_path, max_bytes=16 * MIB, max_age_s=3600)
    for i in range(40):
        spool.put_frame(job(f"f{i}", 20 * KIB))
    for i in range(10):
        spool.put_message("cam", "t", payload(f"m{i}", 2000), qos=1)
    spool.close()


def _garbage(db_path: Path) -> None:
    db_path.write_bytes(random.Random(1).randbytes(db_path.stat().st_size))


def _garbage_after_header(db_path: Path) -> None:
    with open(db_path, "r+b") as f:
        f.seek(4096)  # page 1 (header and schema) intact: SQLite opens it, quick_check must catch it
        f.write(random.Random(2).randbytes(16 * 4096))


def _truncated(db_path: Path) -> None:
    os.truncate(db_path, db_path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [_garbage, _garbage_after_header, _truncated], ids=lambda f: f.__name__[1:])
def test_a_corrupt_database_is_moved_aside_and_a_fresh_one_used(db_path: Path, damage, caplog) -> None:
    _filled_spool(db_path)
    damage(db_path)
    damaged = db_path.read_bytes()
    with caplog.at_level(logging.ERROR, logger="focoos_edge.delivery.spool"):
        spool = Spool(db_path, max_bytes=16 * MIB, max_age_s=3600)
    try:
        assert spool.pending() == {} and spool.snapshot().frames.bytes == 0
        assert spool.quarantined, "nothing reported as quarantined"
        moved = [Path(p) for p in spool.quarantined]
        assert all(p.exists() for p in moved)
        assert [p.read_bytes() for p in moved if not p.name.endswith(("-wal", "-shm"))] == [damaged]
        errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "focoos_edge.delivery.spool"]
        assert errors and "moved aside" in errors[0].getMessage() and str(moved[0]) in errors[0].getMessage()
        spool.put_frame(job("fresh"))  # and it works
        assert spool.take_frame().job.frame_id == "fresh"
    finally:
        spool.close()
    assert integrity_and_sums(db_path)[0] == "ok"


def test_quarantine_never_overwrites_an_earlier_one(db_path: Path) -> None:
    """Two corrupt starts in the same second must keep both bad files (evidence for a post-mortem)."""
    quarantined = []
    for _ in range(3):
        _filled_spool(db_path)
        _garbage(db_path)
        spool = Spool(db_path, max_bytes=16 * MIB, max_age_s=3600)
        spool.close()
        quarantined += spool.quarantined
    main_files = [p for p in quarantined if not p.endswith(("-wal", "-shm"))]
    assert len(main_files) == 3 and len(set(main_files)) == 3, main_files
    assert all(Path(p).exists() for p in main_files)


def test_a_row_altered_in_place_is_skipped_deleted_and_counted(db_path: Path, caplog) -> None:
    spool = Spool(db_path, max_bytes=16 * MIB, max_age_s=3600)
    try:
        for i in range(3):
            spool.put_frame(job(f"f{i}", 5000))
        ids = [spool.put_message("cam", "t", payload(f"m{i}", 300), qos=1) for i in range(3)]
        db = sqlite3.connect(db_path)  # bit rot: the blob changes, its stored CRC does not
        db.execute("UPDATE frames SET jpeg = ? WHERE frame_id = 'f1'", (payload("rot", 5000),))
        db.execute("UPDATE outbox SET payload = ? WHERE id = ?", (payload("rot", 300), ids[1]))
        db.commit()
        db.close()
        with caplog.at_level(logging.ERROR, logger="focoos_edge.delivery.spool"):
            assert [spool.take_frame().job.frame_id for _ in range(2)] == ["f0", "f2"]
            assert spool.take_frame() is None
            assert [m.row_id for m in spool.peek_messages(0, 10)] == [ids[0], ids[2]]
        assert rows(db_path, "SELECT frame_id FROM frames ORDER BY id") == [("f0",), ("f2",)]
        assert [r for (r,) in rows(db_path, "SELECT id FROM outbox ORDER BY id")] == [ids[0], ids[2]]
        assert spool.evicted == Counter({("cam", "corrupt"): 2})
        assert sum("CRC" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR) == 2
        assert integrity_and_sums(db_path)[1] == [spool.snapshot().frames.bytes, spool.snapshot().outbox.bytes]
    finally:
        spool.close()


class _Exploit:
    """Unpickling this creates the file `marker`: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_in_a_blob_is_only_bytes(db_path: Path, tmp_path: Path) -> None:
    proof = tmp_path / "the-exploit-works"
    pickle.loads(pickle.dumps(_Exploit(proof))).close()
    assert proof.exists()  # the payload is live: unpickling it anywhere would run code
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Exploit(marker))
    spool = Spool(db_path, max_bytes=16 * MIB, max_age_s=3600)
    try:
        spool.put_frame(make_job("cam", "evil", evil))
        rid = spool.put_message("cam", "t", evil, qos=1)
        db = sqlite3.connect(db_path)  # and one planted by an attacker, with a CRC that does not match
        db.execute("INSERT INTO outbox (camera, topic, qos, retain, created_at_ns, bytes, crc32, payload) "
                   "VALUES ('cam', 't', 1, 0, 0, ?, 0, ?)", (len(evil) + 1, evil))
        db.commit()
        db.close()
        spool.close()
        spool = Spool(db_path, max_bytes=16 * MIB, max_age_s=3600)
        assert spool.take_frame().job.jpeg == evil
        assert [(m.row_id, m.payload) for m in spool.peek_messages(0, 10)] == [(rid, evil)]
        assert spool.evicted == Counter({("cam", "corrupt"): 1})
    finally:
        spool.close()
    assert not marker.exists()


# -- 6. file modes ------------------------------------------------------------------------------------------
def test_state_dir_is_0700_and_files_0600_whatever_the_umask(tmp_path: Path) -> None:
    db_path = tmp_path / "state" / "spool.db"
    old_umask = os.umask(0)  # the most permissive: the spool must not rely on the caller's umask
    try:
        spool = Spool(db_path, max_bytes=16 * MIB, max_age_s=3600)
        spool.put_frame(job("f0"))
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in db_path.parent.iterdir()}
        spool.close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    assert {"spool.db", "spool.db-wal", "spool.db-shm"} <= modes.keys()
    assert modes == dict.fromkeys(modes, 0o600), {name: oct(mode) for name, mode in modes.items()}


# -- 7. a full disk (a real 2 MiB tmpfs in a private mount namespace) ----------------------------------------------
def _in_small_tmpfs(directory: Path, command: str) -> subprocess.CompletedProcess:
    script = f"mount -t tmpfs -o size=2m tmpfs '{directory}' && {command}"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300)


def _run_in_small_tmpfs(directory: Path) -> dict:
    for tool, package in (("unshare", "util-linux"), ("mount", "mount")):
        if shutil.which(tool) is None:
            pytest.fail(f"`{tool}` is missing: apt-get install {package}", pytrace=False)
    directory.mkdir()
    probe = _in_small_tmpfs(directory, "echo mounted")
    if probe.returncode != 0 or probe.stdout.strip() != "mounted":
        pytest.fail("the disk-full test needs root, `unshare -m` and `mount -t tmpfs` (CI runs as root); here: "
                    f"status {probe.returncode}, {probe.stderr.strip()[-800:]}", pytrace=False)
    proc = _in_small_tmpfs(directory, f"exec '{sys.executable}' '{spool_writer.HERE}' diskfull '{directory}'")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(directory.iterdir()), "the tmpfs leaked out of its mount namespace"
    return json.loads(proc.stdout)


def test_disk_full_fails_puts_clearly_keeps_acks_working_and_recovers(tmp_path: Path) -> None:
    report = _run_in_small_tmpfs(tmp_path / "small")
    summary = json.dumps({k: v for k, v in report.items() if k != "log"}, indent=1)
    # At start the budget is cut to half the free space (the card is shared), with a warning.
    assert report["budget_max_bytes"] <= report["fs_free_at_start"] // 2 < 64 * MIB, summary
    assert any(level == "WARNING" and "budget lowered" in text for level, text in report["log"]), report["log"]
    # Another program then fills the disk: puts fail with a typed, clear error and the flag is set ...
    assert report["fs_free_after_fill"] < 64 * KIB, summary
    assert report.get("error_type") == "SpoolError", summary
    assert "full" in report["error"] and "cannot rollback" not in report["error"], summary
    assert report["disk_full_flag"] is True, summary
    # ... but acks still work, so that the spool can drain ...
    assert (report["delete_messages"], report["deleted"]) == ("ok", 3), summary
    assert (report["take_frame"], report["drop_frame"]) == ("ok", "ok"), summary
    assert (report["take_frame_to_release"], report["release_frame"]) == ("ok", "ok"), summary
    # ... and once space is back, puts succeed again and nothing is damaged.
    assert (report["put_frame_after_free"], report["put_message_after_free"]) == ("ok", "ok"), summary
    assert report["disk_full_flag_after_free"] is False, summary
    assert report["integrity"] == "ok", summary
    assert report["sum_bytes"] == [report["stats"]["frames"]["bytes"], report["stats"]["outbox"]["bytes"]], summary


# -- 8. what the spool stores ------------------------------------------------------------------------------------
EXPECTED_COLUMNS = {
    "meta": {"key": "TEXT", "value": "TEXT"},
    "frames": {"id": "INTEGER", "frame_id": "TEXT", "camera": "TEXT", "captured_at_ns": "INTEGER",
               "width": "INTEGER", "height": "INTEGER", "scale": "REAL", "attempts": "INTEGER",
               "bytes": "INTEGER", "crc32": "INTEGER", "jpeg": "BLOB", "offset_x": "REAL", "offset_y": "REAL"},
    "outbox": {"id": "INTEGER", "camera": "TEXT", "topic": "TEXT", "qos": "INTEGER", "retain": "INTEGER",
               "created_at_ns": "INTEGER", "bytes": "INTEGER", "crc32": "INTEGER", "payload": "BLOB"},
}


def test_schema_has_only_the_listed_columns_and_no_secrets(spool: Spool) -> None:
    spool.put_frame(job("f0"))
    spool.put_message("cam", "t", b"{}", qos=1)
    tables = {name for (name,) in rows(spool.path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == set(EXPECTED_COLUMNS) | {"sqlite_sequence"}
    for table, columns in EXPECTED_COLUMNS.items():
        assert {name: kind for _, name, kind, *_ in rows(spool.path, f"PRAGMA table_info({table})")} == columns
    assert rows(spool.path, "SELECT key, value FROM meta") == [("schema_version", "1")]
    # The only BLOBs are the frame and the message: bytes in, the same bytes out, never deserialised.
    blobs = {(t, c) for t, cols in EXPECTED_COLUMNS.items() for c, kind in cols.items() if kind == "BLOB"}
    assert blobs == {("frames", "jpeg"), ("outbox", "payload")}


def test_a_put_is_committed_durably_before_it_returns(spool: Spool) -> None:
    """A put returns once committed with the WAL fsynced: another connection sees the row at once, and
    the connection runs WAL with synchronous=FULL (NORMAL may lose acked puts on a power loss)."""
    spool.put_frame(job("f0"))
    rid = spool.put_message("cam", "t", b"m", qos=1)
    assert rows(spool.path, "SELECT frame_id FROM frames") == [("f0",)]
    assert rows(spool.path, "SELECT id FROM outbox") == [(rid,)]
    assert rows(spool.path, "PRAGMA journal_mode") == [("wal",)]
    assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL; per connection, so white-box
    assert spool._db.execute("PRAGMA max_page_count").fetchone()[0] == spool.budget.max_pages


def test_crop_offsets_survive_the_spool_and_old_spools_gain_the_columns(db_path: Path) -> None:
    """A spool written before crops existed (no offset columns) opens, gains them (0 = no crop), and a
    cropped frame's offsets come back with it, so its boxes map to the right place after a replay."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    legacy = sqlite3.connect(db_path)
    legacy.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE frames (id INTEGER PRIMARY KEY AUTOINCREMENT, frame_id TEXT NOT NULL UNIQUE,
            camera TEXT NOT NULL, captured_at_ns INTEGER NOT NULL, width INTEGER NOT NULL,
            height INTEGER NOT NULL, scale REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            bytes INTEGER NOT NULL, crc32 INTEGER NOT NULL, jpeg BLOB NOT NULL);""")
    legacy.execute("INSERT INTO frames (frame_id, camera, captured_at_ns, width, height, scale, bytes, crc32, jpeg) "
                   "VALUES ('old', 'cam', 1, 1920, 1080, 0.5, 3, ?, ?)", (zlib.crc32(b"abc"), b"abc"))
    legacy.commit()
    legacy.close()
    spool = Spool(db_path, 8 * 1024 * 1024, 3600)
    try:
        cropped = FrameJob(camera="cam", frame_id="new", captured_at_ns=2, captured_mono=0.0, width=1920,
                           height=1080, scale=0.5, jpeg=b"xyz", offset_x=960.0, offset_y=12.5)
        spool.put_frame(cropped)
        old, new = spool.take_frame(), spool.take_frame()
    finally:
        spool.close()
    assert (old.job.frame_id, old.job.offset_x, old.job.offset_y) == ("old", 0.0, 0.0)
    assert (new.job.frame_id, new.job.offset_x, new.job.offset_y) == ("new", 960.0, 12.5)
