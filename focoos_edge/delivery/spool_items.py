"""What the spool hands out: a frame leased for an inference attempt, a message waiting for its PUBACK."""

from __future__ import annotations

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
