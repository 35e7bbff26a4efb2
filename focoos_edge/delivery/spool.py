"""The on-disk spool: frames waiting for inference and MQTT messages waiting for their PUBACK.

One SQLite database in WAL mode (`state_dir/spool.db`), two tables with byte budgets:
- `frames`: sampled JPEGs with their metadata, kept until a 2xx inference reply parsed;
- `outbox`: QoS >= 1 messages, kept until the broker acknowledged them.

Guarantees (see docs/reliability.md):
- "handed over" means committed: `put_*` returns only after the transaction committed with
  `synchronous=FULL` (the WAL is fsynced on every commit, so it survives power loss on storage that
  honours flushes, and `kill -9` always);
- a result replaces its frame atomically: the outbox row is inserted and the frame row deleted in one
  transaction, so a crash leaves one or the other, never neither (`put_message(done_frame=)`);
- every byte budget has a policy and a counter: oldest frames are evicted first, messages only when
  their own budget is full, and each eviction is counted per camera and reason;
- the files on disk stay within `max_bytes`: `max_page_count` caps the database file, and the WAL is
  checkpointed and truncated at a fixed size.
Rows carry a CRC32 of their blob; a row that fails it is deleted and counted as corrupt. A database
SQLite cannot open or check is moved aside at start, never crash-looped on. The schema, the
settings and budget that bound the files, the reserve file and the quarantine are in spool_files.py.

Leases: `take_frame` leases a frame to one inference attempt (a leased frame is neither handed out
again nor evicted). The uplink (inference/uplink.py) alone takes, gives back (`release_frame`) and
drops (`drop_frame`) leases. The one lease that ends elsewhere is the one whose result is stored:
`put_message(done_frame=row)`, reached through the publisher's `publish_durable`, deletes the frame
row in the outbox insert's transaction and discards the lease with it. That consumption stays here,
inside one transaction, because it is what makes the hand-over atomic.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

from focoos_edge.capture import FrameJob
from focoos_edge.delivery.spool_files import DB_SUFFIXES, Budget, ReserveFile, connect, quarantine
from focoos_edge.delivery.spool_items import OutboxMessage, QueueSnapshot, SpooledFrame, SpoolSnapshot

log = logging.getLogger(__name__)

class SpoolError(RuntimeError):
    """An item could not be stored (disk full even after evicting, or an I/O error)."""


def _crc(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


class Spool:
    """Thread-safe: one connection behind a lock (writes are serialised by SQLite anyway)."""

    def __init__(self, path: str | os.PathLike, max_bytes: int, max_age_s: float,
                 outbox_max_bytes: int | None = None, clock_ns=time.time_ns):
        """Open (or create) the spool at `path`; SpoolError when its folder or file cannot be used."""
        try:
            self._init(path, max_bytes, max_age_s, outbox_max_bytes, clock_ns)
        except (OSError, sqlite3.Error) as exc:  # storage errors stay inside the spool
            raise SpoolError(f"cannot use {Path(path).parent} for the spool: {exc}") from None

    def _init(self, path: str | os.PathLike, max_bytes: int, max_age_s: float,
              outbox_max_bytes: int | None, clock_ns) -> None:
        self.path = Path(path)
        self.budget = Budget.derive(self._fit_to_disk(max_bytes), outbox_max_bytes)
        self.max_age_ns = int(max_age_s * 1e9)
        self.evicted: Counter = Counter()  # (camera, reason) -> frames or messages removed unsent
        self.quarantined: list[str] = []
        self._clock_ns = clock_ns
        self._lock = threading.RLock()
        self._leased: set[int] = set()
        # Bumped whenever a frame may have become available to take_frame(): a worker that found
        # the spool empty queries SQLite again only after it changed.
        self.frames_generation = 0
        self._frame_bytes = 0
        self._outbox_bytes = 0
        self.disk_full = False
        self._reserve = ReserveFile(Path(f"{self.path}-reserve"), self.budget.wal_bytes)
        self._db = self._open()
        self._reserve.keep()

    def _fit_to_disk(self, max_bytes: int) -> int:
        """At most half the free space (plus what the spool already holds): the card is shared."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.statvfs(self.path.parent)
        allowed = st.f_bavail * st.f_frsize // 2 + self.disk_bytes()
        if allowed < max_bytes:
            log.warning("spool: budget lowered from %d to %d bytes (half the free space of %s)",
                        max_bytes, allowed, self.path.parent)
            return max(allowed, 1024 * 1024)
        return max_bytes

    # -- opening and recovery --------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            db = connect(self.path, self.budget)
        except sqlite3.DatabaseError as exc:
            self._quarantine(f"cannot be opened ({exc})")
            db = connect(self.path, self.budget)
        self._frame_bytes = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM frames").fetchone()[0]
        self._outbox_bytes = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM outbox").fetchone()[0]
        return db

    def _quarantine(self, why: str) -> None:
        base, moved = quarantine(self.path)
        self.quarantined += moved
        log.error("spool %s %s: moved aside as %s*, starting an empty spool", self.path, why, base)

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.warning("spool: final checkpoint failed: %s", exc)
            self._db.close()

    # -- transactions ------------------------------------------------------------------------
    def _write(self, fn, frees: bool = False):
        """Run `fn(db)` in one IMMEDIATE transaction; on SQLITE_FULL evict a frame and retry.

        `frees`: `fn` only deletes or updates rows (an ack, a drop, an eviction): on a full disk it
        may use the reserve, so that the spool can always drain."""
        with self._lock:
            for _ in range(8):
                evicted = self.evicted.copy()
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        result = fn(self._db)
                        self._db.execute("COMMIT")
                    except BaseException:
                        self._undo(evicted)
                        raise
                    self.disk_full = False
                    if not self._reserve.held:
                        self._reserve.keep()
                    return result
                except sqlite3.OperationalError as exc:
                    if "full" not in str(exc):
                        raise SpoolError(f"spool write failed: {exc}") from None
                    if frees and self._release_reserve():
                        continue
                    if frees or not self._evict_one_frame_for_space():
                        break
            self.disk_full = True
            raise SpoolError("spool is full: the disk has no space left for it")

    def _release_reserve(self) -> bool:
        if not self._reserve.release():
            return False
        log.warning("spool: the disk is full; released the %d-byte reserve so that acks can proceed",
                    self.budget.wal_bytes)
        return True

    def _undo(self, evicted: Counter) -> None:
        """After a failed transaction: roll back (unless SQLite already did, as it does on some
        SQLITE_FULL and I/O errors) and make the counters describe the rows again."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self.evicted.clear()
        self.evicted.update(evicted)
        self._recount()

    def _recount(self) -> None:
        db = self._db
        self._frame_bytes = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM frames").fetchone()[0]
        self._outbox_bytes = db.execute("SELECT COALESCE(SUM(bytes), 0) FROM outbox").fetchone()[0]

    def _evict_one_frame_for_space(self) -> bool:
        """Outside a transaction, after SQLITE_FULL: drop the oldest frame to make room."""
        try:
            return self._evict_oldest(self._db, "frames", "disk_full")
        except sqlite3.OperationalError:
            return False

    def _unleased(self) -> str:
        """A WHERE clause that skips frames leased to a worker."""
        return f"WHERE id NOT IN ({','.join(map(str, self._leased))})" if self._leased else ""

    # -- frames ------------------------------------------------------------------------------
    def put_frame(self, job: FrameJob) -> None:
        """Store a frame durably, evicting the oldest frames beyond the budget."""
        size = len(job.jpeg)
        self.frames_generation += 1  # a frame may be there to take: idle workers look again

        def insert(db: sqlite3.Connection) -> None:
            if db.execute("SELECT 1 FROM frames WHERE frame_id = ?", (job.frame_id,)).fetchone():
                return  # already spooled: nothing to store, so nothing to evict either
            if size > self.budget.payload_bytes - self.budget.outbox_bytes:
                self.evicted[(job.camera, "too_large")] += 1
                return
            self._make_room_for_frame(db, size)
            db.execute(
                "INSERT OR IGNORE INTO frames (frame_id, camera, captured_at_ns, width, height, scale, "
                "bytes, crc32, jpeg, offset_x, offset_y) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.frame_id, job.camera, job.captured_at_ns, job.width, job.height, job.scale, size,
                 _crc(job.jpeg), job.jpeg, job.offset_x, job.offset_y))
            if db.execute("SELECT changes()").fetchone()[0]:
                self._frame_bytes += size

        self._write(insert)

    def _make_room_for_frame(self, db: sqlite3.Connection, size: int) -> None:
        limit = self.budget.payload_bytes - self._outbox_bytes
        while self._frame_bytes + size > limit:
            if not self._evict_oldest(db, "frames", "budget"):
                break

    def _evict_oldest(self, db: sqlite3.Connection, table: str, reason: str) -> bool:
        exclude = self._unleased() if table == "frames" else ""
        row = db.execute(f"SELECT id, camera, bytes FROM {table} {exclude} ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return False
        db.execute(f"DELETE FROM {table} WHERE id = ?", (row[0],))
        if table == "frames":
            self._frame_bytes -= row[2]
        else:
            self._outbox_bytes -= row[2]
        self.evicted[(row[1], reason)] += 1
        return True

    def take_frame(self) -> SpooledFrame | None:
        """Lease the oldest frame not already leased (None when there is none)."""
        with self._lock:
            while True:
                row = self._db.execute(
                    "SELECT id, frame_id, camera, captured_at_ns, width, height, scale, attempts, crc32, jpeg, "
                    f"offset_x, offset_y FROM frames {self._unleased()} ORDER BY id LIMIT 1").fetchone()
                if row is None:
                    return None
                if _crc(row[9]) != row[8]:
                    self._drop_corrupt("frames", row[0], row[2])
                    continue
                self._leased.add(row[0])
                job = FrameJob(camera=row[2], frame_id=row[1], captured_at_ns=row[3], captured_mono=0.0,
                               width=row[4], height=row[5], scale=row[6], jpeg=bytes(row[9]),
                               offset_x=row[10], offset_y=row[11])
                return SpooledFrame(row[0], job, row[7])

    def _drop_corrupt(self, table: str, row_id: int, camera: str) -> None:
        log.error("spool: %s row %d failed its CRC check; deleted", table, row_id)
        self._write(lambda db: self._delete_row(db, table, row_id), frees=True)
        self.evicted[(camera, "corrupt")] += 1

    def _delete_row(self, db: sqlite3.Connection, table: str, row_id: int) -> str | None:
        row = db.execute(f"DELETE FROM {table} WHERE id = ? RETURNING camera, bytes", (row_id,)).fetchone()
        if row is None:
            return None
        if table == "frames":
            self._frame_bytes -= row[1]
        else:
            self._outbox_bytes -= row[1]
        return row[0]

    def release_frame(self, row_id: int, attempted: bool = True) -> None:
        """Give a leased frame back (the attempt failed, or its result could not be stored); it stays
        in the spool. `attempted`: count it against the frame's attempts."""
        with self._lock:
            self._leased.discard(row_id)
            self.frames_generation += 1
            if attempted:
                self._write(lambda db: db.execute(
                    "UPDATE frames SET attempts = attempts + 1 WHERE id = ?", (row_id,)), frees=True)

    def drop_frame(self, row_id: int, reason: str) -> None:
        """Remove a frame without a result (dead letter), counting it under `reason`."""
        with self._lock:
            self._leased.discard(row_id)
            camera = self._write(lambda db: self._delete_row(db, "frames", row_id), frees=True)
            if camera is not None:
                self.evicted[(camera, reason)] += 1

    # -- outbox ------------------------------------------------------------------------------
    def put_message(self, camera: str, topic: str, payload: bytes, qos: int, retain: bool = False,
                    done_frame: int | None = None) -> int:
        """Store a message durably; if `done_frame` is set, delete that (leased) frame in the same
        transaction and end its lease: the result replaces its frame atomically."""
        size = len(payload) + len(topic)

        def insert(db: sqlite3.Connection) -> int:
            if done_frame is not None:
                self._delete_row(db, "frames", done_frame)
            while self._outbox_bytes + size > self.budget.outbox_bytes:
                if not self._evict_oldest(db, "outbox", "outbox_budget"):
                    break
            while self._frame_bytes + self._outbox_bytes + size > self.budget.payload_bytes:
                if not self._evict_oldest(db, "frames", "budget"):  # frames go before results
                    break
            row_id = db.execute(
                "INSERT INTO outbox (camera, topic, qos, retain, created_at_ns, bytes, crc32, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (camera, topic, qos, int(retain), self._clock_ns(), size, _crc(payload), payload)).lastrowid
            if row_id is None:  # never after an INSERT; typed Optional by sqlite3
                raise SpoolError("the outbox insert returned no row id")
            self._outbox_bytes += size
            return row_id

        with self._lock:
            row_id = self._write(insert)
            if done_frame is not None:
                self._leased.discard(done_frame)
            return row_id

    def peek_messages(self, after_id: int, limit: int) -> list[OutboxMessage]:
        """Up to `limit` messages with ids above `after_id`, oldest first (corrupt ones dropped)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, camera, topic, qos, retain, crc32, payload FROM outbox WHERE id > ? "
                "ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
            out = []
            for row in rows:
                if _crc(row[6]) != row[5]:
                    self._drop_corrupt("outbox", row[0], row[1])
                    continue
                out.append(OutboxMessage(row[0], row[1], row[2], row[3], bool(row[4]), bytes(row[6])))
            return out

    def delete_messages(self, row_ids: list[int]) -> Counter:
        """Delete acknowledged messages; returns how many were deleted per camera."""
        if not row_ids:
            return Counter()

        def delete(db: sqlite3.Connection) -> Counter:
            done: Counter = Counter()
            for row_id in row_ids:
                camera = self._delete_row(db, "outbox", row_id)
                if camera is not None:
                    done[camera] += 1
            return done

        return self._write(delete, frees=True)

    # -- age limit and figures -------------------------------------------------------------------
    def expire(self) -> int:
        """Evict frames and messages older than `max_age_s`; returns how many."""
        cutoff = self._clock_ns() - self.max_age_ns

        def expire(db: sqlite3.Connection) -> int:
            n = 0
            leased = ",".join(map(str, self._leased)) or "-1"
            for table, column in (("frames", "captured_at_ns"), ("outbox", "created_at_ns")):
                extra = f"AND id NOT IN ({leased})" if table == "frames" else ""
                rows = db.execute(f"DELETE FROM {table} WHERE {column} < ? {extra} RETURNING camera, bytes",
                                  (cutoff,)).fetchall()
                for camera, size in rows:
                    self.evicted[(camera, "max_age")] += 1
                    if table == "frames":
                        self._frame_bytes -= size
                    else:
                        self._outbox_bytes -= size
                n += len(rows)
            return n

        return self._write(expire, frees=True)

    def pending(self) -> dict[str, dict[str, int]]:
        """Per camera: frames and messages waiting."""
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for table in ("frames", "outbox"):
                for camera, n in self._db.execute(f"SELECT camera, COUNT(*) FROM {table} GROUP BY camera"):
                    out.setdefault(camera, {"frames": 0, "outbox": 0})[table] = n
            return out

    def snapshot(self) -> SpoolSnapshot:
        """Depth, bytes and oldest age of each table, what waits per camera, the evictions and the
        on-disk size, read together under the lock."""
        now = self._clock_ns()
        with self._lock:
            f = self._db.execute("SELECT COUNT(*), MIN(captured_at_ns) FROM frames").fetchone()
            o = self._db.execute("SELECT COUNT(*), MIN(created_at_ns) FROM outbox").fetchone()
            return SpoolSnapshot(
                frames=QueueSnapshot(f[0], self._frame_bytes, round((now - f[1]) / 1e9, 1) if f[1] else None),
                outbox=QueueSnapshot(o[0], self._outbox_bytes, round((now - o[1]) / 1e9, 1) if o[1] else None),
                disk_bytes=self.disk_bytes(), max_bytes=self.budget.max_bytes, disk_full=self.disk_full,
                pending=self.pending(), evicted=dict(self.evicted))

    def disk_bytes(self) -> int:
        """Bytes the spool's files take on disk now."""
        return sum(os.path.getsize(p) for p in (f"{self.path}{s}" for s in (*DB_SUFFIXES, "-reserve"))
                   if os.path.exists(p))
