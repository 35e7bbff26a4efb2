"""The local server's account (``GET user/``) and its inference quota.

The answer has the full shape the Focoos SDK (v0.25.0) validates when ``FocoosHUB()`` is created:
e-mail, dates, company, ``api_key.key`` and every ``quotas`` field. The key is a placeholder: the
server never echoes the key it was given.
"""

from __future__ import annotations

import threading

UNLIMITED = 2**31 - 1  # the SDK wants an int: "no quota" is a number never reached


class Quota:
    """Inferences used and allowed, thread-safe; ``spend()`` refuses once ``used >= max``."""

    def __init__(self, used: int = 0, maximum: int = UNLIMITED):
        if used < 0 or maximum < 0:
            raise ValueError("quota numbers must be >= 0")
        self.used, self.maximum = used, maximum
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, text: str) -> Quota:
        """``USED:MAX``, e.g. ``1000:1000``."""
        used, sep, maximum = text.partition(":")
        if not sep or not used.strip().isdigit() or not maximum.strip().isdigit():
            raise ValueError(f"--quota must be USED:MAX (two whole numbers), not {text!r}")
        return cls(int(used), int(maximum))

    def spend(self) -> bool:
        """Count one inference; False (nothing counted) when the quota is used up."""
        with self._lock:
            if self.used >= self.maximum:
                return False
            self.used += 1
            return True

    def reset(self, used: int = 0, maximum: int | None = None) -> None:
        """A new billing period (tests and the demo)."""
        with self._lock:
            self.used = used
            self.maximum = self.maximum if maximum is None else maximum

    def snapshot(self) -> tuple[int, int]:
        """(used, max)."""
        with self._lock:
            return self.used, self.maximum


def account_payload(quota: Quota, created_at: str) -> dict:
    """The ``GET user/`` answer."""
    used, maximum = quota.snapshot()
    return {
        "email": "local@localhost", "created_at": created_at, "updated_at": created_at, "company": None,
        "api_key": {"key": "local-key-not-shown"},
        "quotas": {"total_inferences": used, "max_inferences": maximum, "used_storage_gb": 0.0,
                   "max_storage_gb": 0.0, "active_training_jobs": [], "max_active_training_jobs": 0,
                   "used_mlg4dnxlarge_training_jobs_hours": 0.0, "max_mlg4dnxlarge_training_jobs_hours": 0.0},
    }
