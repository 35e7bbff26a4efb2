"""The spool's files: the SQLite schema and settings that cap them, the byte budget, the reserve file.

:class:`~focoos_edge.delivery.spool.Spool` does the transactions and the accounting; this module holds what
decides how much disk it takes (see the guarantees in spool.py's docstring) and how its files are
opened, held and moved aside. No logging here: the spool reports what happened.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
PAGE_SIZE = 4096
# Share of the database pages the payload budget may fill: B-tree pages, row headers and free-list
# slack need the rest (measured: 50 KiB blobs use ~1.02 pages per 4 KiB of payload).
PAYLOAD_SHARE = 0.85
# The database's files next to `path`; a corrupt database is moved aside with all of them.
DB_SUFFIXES = ("", "-wal", "-shm")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    frame_id TEXT NOT NULL UNIQUE,
    camera TEXT NOT NULL,
    captured_at_ns INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    scale REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL,
    crc32 INTEGER NOT NULL,
    jpeg BLOB NOT NULL,
    offset_x REAL NOT NULL DEFAULT 0,
    offset_y REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    camera TEXT NOT NULL,
    topic TEXT NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_at_ns INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    crc32 INTEGER NOT NULL,
    payload BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class Budget:
    """Byte limits derived from `max_bytes` (the whole on-disk footprint)."""

    max_bytes: int
    wal_bytes: int
    max_pages: int
    payload_bytes: int
    outbox_bytes: int

    @classmethod
    def derive(cls, max_bytes: int, outbox_max_bytes: int | None = None) -> Budget:
        # The WAL is truncated back to this size after each checkpoint. A reserve file of the same
        # size is the headroom that lets acks and evictions proceed on a full filesystem.
        wal = max(64 * 1024, min(4 * 1024 * 1024, max_bytes // 8))
        shm = 32 * 1024
        pages = max(16, (max_bytes - 2 * wal - shm) // PAGE_SIZE)
        payload = int(pages * PAGE_SIZE * PAYLOAD_SHARE)
        outbox = min(outbox_max_bytes or payload // 4, payload // 2)
        return cls(max_bytes, wal, pages, payload, outbox)


def connect(path: Path, budget: Budget) -> sqlite3.Connection:
    """Open (or create) the database at `path` with private files, the budget's caps and the schema.

    Raises ``sqlite3.DatabaseError`` (after closing the connection) if SQLite cannot open or check it.
    """
    old_umask = os.umask(0o077)  # the database, WAL and shm files are private (0600)
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    finally:
        os.umask(old_umask)
    try:
        _configure(db, budget)
        check = db.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {check}")
        db.executescript(SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        check_schema(db)
        _add_crop_offsets(db)  # after the check: never ALTER another program's table
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


_COLUMNS = {
    "frames": {"id", "frame_id", "camera", "captured_at_ns", "width", "height", "scale", "attempts", "bytes",
               "crc32", "jpeg"},
    "outbox": {"id", "camera", "topic", "qos", "retain", "created_at_ns", "bytes", "crc32", "payload"},
}


def check_schema(db: sqlite3.Connection) -> None:
    """Raise ``sqlite3.DatabaseError`` unless this is a spool of this schema version: a valid SQLite
    file with other tables (another program's, or a future version's) is moved aside, not used."""
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None or row[0] != str(SCHEMA_VERSION):
        raise sqlite3.DatabaseError(f"schema_version {row[0] if row else None!r}, expected {SCHEMA_VERSION}")
    for table, expected in _COLUMNS.items():
        found = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
        if not expected <= found:
            raise sqlite3.DatabaseError(f"table {table} lacks {sorted(expected - found)}: not a focoos-edge spool")


def _add_crop_offsets(db: sqlite3.Connection) -> None:
    """Spools written before crops existed lack the offset columns: add them (0 = no crop)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(frames)")}
    for name in ("offset_x", "offset_y"):
        if name not in columns:
            db.execute(f"ALTER TABLE frames ADD COLUMN {name} REAL NOT NULL DEFAULT 0")


def _configure(db: sqlite3.Connection, b: Budget) -> None:
    db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # only effective on a new database
    db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; one fsync per commit
    db.execute("PRAGMA synchronous=FULL")  # a committed put survives power loss, not only crashes
    db.execute(f"PRAGMA max_page_count={b.max_pages}")  # hard cap on the database file
    db.execute(f"PRAGMA wal_autocheckpoint={max(16, b.wal_bytes // PAGE_SIZE // 2)}")
    db.execute(f"PRAGMA journal_size_limit={b.wal_bytes}")  # truncate the WAL after checkpoints
    db.execute("PRAGMA temp_store=MEMORY")
    db.execute("PRAGMA secure_delete=OFF")  # no zero-fill: fewer writes on SD cards


def quarantine(path: Path) -> tuple[str, list[str]]:
    """Move the database at `path` and its WAL and shm aside; return their new base name and paths."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    base, n = f"{path}.corrupt-{stamp}", 1
    while any(os.path.exists(f"{base}{suffix}") for suffix in DB_SUFFIXES):
        base, n = f"{path}.corrupt-{stamp}.{n}", n + 1  # never overwrite an earlier one
    moved = []
    for suffix in DB_SUFFIXES:
        src = Path(f"{path}{suffix}")
        if src.exists():
            dst = Path(f"{base}{suffix}")
            src.rename(dst)
            moved.append(str(dst))
    return base, moved


class ReserveFile:
    """`size_bytes` of disk held in a file only the spool frees: on a full disk, deleting it lets
    acks, evictions and the checkpoint (which may have to grow the database file) complete."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.held = False

    def keep(self) -> None:
        """Allocate the file; with no room for it now, :attr:`held` stays False (try again later)."""
        old_umask = os.umask(0o077)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        finally:
            os.umask(old_umask)
        try:
            os.posix_fallocate(fd, 0, self.size_bytes)
            self.held = True
        except OSError:  # no room for it now: tried again after the next successful write
            self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)

    def release(self) -> bool:
        """Delete the file, freeing its space; False if it was not held."""
        if not self.held:
            return False
        self.path.unlink(missing_ok=True)
        self.held = False
        return True
