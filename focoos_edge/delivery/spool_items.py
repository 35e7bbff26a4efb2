"""What the spool hands out (a frame leased for an inference attempt, a message waiting for its
PUBACK) and the figures it reports (`SpoolSnapshot`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from focoos_edge.capture import FrameJob


@dataclass(frozen=True)
class SpooledFrame:
    """A frame taken from the spool for an inference attempt."""

    row_id: int
    job: FrameJob
    attempts: int


@dataclass(frozen=True)
class OutboxMessage:
    """A message waiting for its PUBACK."""

    row_id: int
    camera: str
    topic: str
    qos: int
    retain: bool
    payload: bytes


@dataclass(frozen=True)
class QueueSnapshot:
    """One of the spool's tables: items waiting, their bytes, the oldest one's age (None when empty)."""

    count: int
    bytes: int
    oldest_age_s: float | None


@dataclass(frozen=True)
class SpoolSnapshot:
    """The spool's figures at one moment (`Spool.snapshot`, read under its lock).

    `pending` and `evicted` are keyed by the rows' camera column, which for the outbox is also a
    camera's event stream (`camera/events`)."""

    frames: QueueSnapshot
    outbox: QueueSnapshot
    disk_bytes: int
    max_bytes: int
    disk_full: bool
    pending: Mapping[str, Mapping[str, int]]  # per camera column: {"frames": n, "outbox": n}
    evicted: Mapping[tuple[str, str], int]  # (camera column, reason) -> rows removed unsent
