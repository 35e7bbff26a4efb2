"""The typed errors of the Focoos HUB client (raised by :mod:`focoos_edge.inference.client`).

Each has ``.retryable`` and a short ``.reason`` usable as an MQTT state::

    FocoosError
      AuthError               401/403                        auth_failed         not retryable
      ModelNotFoundError      404                            model_not_found     not retryable
      RateLimitedError        429 (+ retry_after_s)          rate_limited        retryable
      TransientError          5xx, 408, network, timeouts    unreachable / server_error / timeout
      MalformedResponseError  200 with an unusable body      malformed_response  retryable a few times
      PermanentError          any other non-200              rejected            not retryable
"""

from __future__ import annotations


class FocoosError(Exception):
    """Base of every error raised by :class:`FocoosClient`. Its message never contains the API key."""

    retryable: bool = False
    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class AuthError(FocoosError):
    """The API key was rejected (HTTP 401 or 403): retrying will not help until the key changes."""

    reason = "auth_failed"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class ModelNotFoundError(FocoosError):
    """The model reference is unknown to the server (HTTP 404)."""

    reason = "model_not_found"
    status = 404


class RateLimitedError(FocoosError):
    """HTTP 429; ``retry_after_s`` is the server's Retry-After in seconds, or None if absent/unparseable."""

    retryable = True
    reason = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TransientError(FocoosError):
    """5xx, 408, network failure or timeout; ``status`` is None when no response arrived."""

    retryable = True
    reason = "unreachable"

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.status = status


class MalformedResponseError(FocoosError):
    """HTTP 200 with an unusable body; retry only a few times (a proxy hiccup passes, a bad server not)."""

    retryable = True
    reason = "malformed_response"


class PermanentError(FocoosError):
    """Any other non-200 reply (400, 422, unexpected redirects...): the request itself is wrong."""

    reason = "rejected"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status
