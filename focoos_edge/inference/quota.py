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

from focoos_edge.delivery.messages import iso_utc
from focoos_edge.inference.errors import FocoosError, MalformedResponseError

log = logging.getLogger(__name__)

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
