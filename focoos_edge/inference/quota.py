"""The account's inference quota (``GET {base}/user/``), checked at start and at most every 10 minutes.

A refused inference (401/403/429) looks like a bad key unless the quota says otherwise: with
``total_inferences >= max_inferences`` the uplink reports ``quota_exhausted``, keeps frames in
the spool and waits for the next check that shows room, instead of retrying. Only the quota
numbers are kept: the account's e-mail and key are never parsed, logged or published. An
account endpoint that is missing (404), slow or odd leaves the quota unknown; inference goes on.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from focoos_edge.delivery import iso_utc
from focoos_edge.inference.errors import AuthError, FocoosError, MalformedResponseError, RateLimitedError

log = logging.getLogger(__name__)

QUOTA_EXHAUSTED = "quota_exhausted"  # the inference state
REFUSALS = ("auth_failed", "rate_limited")  # states a used-up quota explains
CHECK_INTERVAL_S = 600.0  # never more often than this: the account endpoint is not ours to poll
LOW_FRACTION = 0.10  # warn when less than this share of the quota is left


@dataclass(frozen=True)
class AccountQuota:
    """The account's inference quota; ``checked_at`` is wall-clock seconds."""

    total_inferences: int
    max_inferences: int | None
    checked_at: float

    @property
    def exhausted(self) -> bool:
        """True when every inference of the quota is used."""
        return self.max_inferences is not None and self.total_inferences >= self.max_inferences

    @property
    def low(self) -> bool:
        """True when less than 10 % of the quota is left."""
        m = self.max_inferences
        if not m:
            return False
        return (m - self.total_inferences) < LOW_FRACTION * m

    def as_stats(self) -> dict:
        """The ``quota`` object of the stats message."""
        return {"total_inferences": self.total_inferences, "max_inferences": self.max_inferences,
                "checked_at": iso_utc(self.checked_at)}


def parse_account(body: bytes, now: float | None = None) -> AccountQuota:
    """The quota numbers of a ``GET user/`` reply (nothing else is read)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise MalformedResponseError("malformed account reply: invalid JSON") from None
    quotas = doc.get("quotas") if isinstance(doc, dict) else None
    total = quotas.get("total_inferences") if isinstance(quotas, dict) else None
    maximum = quotas.get("max_inferences") if isinstance(quotas, dict) else None
    if not _count(total) or not (maximum is None or _count(maximum)):
        raise MalformedResponseError("malformed account reply: no quotas.total_inferences / max_inferences")
    assert isinstance(total, int)  # checked by _count, for the type checker
    return AccountQuota(total, maximum if isinstance(maximum, int) else None, time.time() if now is None else now)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class QuotaWatch:
    """The last known quota; :meth:`refresh_if_due` fetches it at most every ``interval_s``."""

    def __init__(self, fetch: Callable[[], AccountQuota], interval_s: float = CHECK_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self._fetch = fetch
        self.interval_s = interval_s
        self._clock = clock
        self._next = 0.0
        self._last: AccountQuota | None = None
        self._lock = threading.Lock()

    @property
    def last(self) -> AccountQuota | None:
        """The quota of the last successful check, or None when unknown."""
        with self._lock:
            return self._last

    def exhausted(self) -> bool:
        """True when the last check showed the quota used up."""
        last = self.last
        return last is not None and last.exhausted

    def refresh_if_due(self) -> bool:
        """Check the account when due; True when a check was made."""
        if self._clock() < self._next:
            return False
        self._next = self._clock() + self.interval_s
        try:
            quota = self._fetch()
        except FocoosError as exc:  # 404 or a slow or odd endpoint: unknown, inference goes on
            log.info("account quota unknown (%s); inference goes on", exc.reason)
            quota = None
        if quota is not None and quota.low and not quota.exhausted:
            log.warning("account quota: %d of %d inferences used (less than 10 %% left)",
                        quota.total_inferences, quota.max_inferences)
        with self._lock:
            self._last = quota
        return True

    # -- what the uplink does with it ----------------------------------------------------------------
    def explains(self, exc: FocoosError) -> bool:
        """True when a refusal (401/403/429) comes while the last check showed the quota used up."""
        return isinstance(exc, (AuthError, RateLimitedError)) and self.exhausted()

    def detail(self) -> str:
        """The inference state's detail for quota_exhausted."""
        last = self.last
        used = f"{last.total_inferences} of {last.max_inferences}" if last else "all"
        return f"the account's inference quota is used up ({used}); frames are spooled until it resets"

    def report(self, health: Health, exc: FocoosError) -> None:
        """A refusal the quota explains: state quota_exhausted, uploads paused (frames spooled)."""
        if health.state != QUOTA_EXHAUSTED:
            log.error("inference: refused (%s) and %s", exc.reason, self.detail())
        health.set(QUOTA_EXHAUSTED, self.detail(), pause=True)

    def turn(self, health: Health) -> None:
        """One turn of the uplink's probe loop: check the account when due; a refusal state the
        quota explains becomes quota_exhausted, and a quota with room again lets the uplink try
        once more (the next frame is the probe)."""
        if not self.refresh_if_due():
            return
        exhausted = self.exhausted()
        if exhausted and health.state in REFUSALS:
            health.set(QUOTA_EXHAUSTED, self.detail(), pause=True)
        elif not exhausted and health.state == QUOTA_EXHAUSTED:
            log.info("inference: the account's quota has room again; trying the HUB again")
            health.reset()


class Health(Protocol):
    """The part of uplink.InferenceHealth used here."""

    state: str

    def set(self, state: str, detail: str | None = None, pause: bool = False) -> None: ...

    def reset(self) -> None: ...
