"""The local server's key check: ``X-API-Key`` (or the legacy ``Authorization: Bearer``) compared in
constant time with the one configured key; without a configured key any non-blank key is accepted."""

from __future__ import annotations

import hmac
import os
from email.message import Message

from focoos_edge.tools import LOCAL_SERVER_KEY_ENV


def configured_key(cli_key: str | None) -> str | None:
    """The key to check: ``--api-key``, else the ``FOCOOS_LOCAL_API_KEY`` environment variable;
    None (keys not checked) when both are unset or blank."""
    return (cli_key or os.environ.get(LOCAL_SERVER_KEY_ENV) or "").strip() or None


class KeyCheck:
    """Accepts requests carrying ``api_key`` (any non-blank key when it is None)."""

    def __init__(self, api_key: str | None) -> None:
        self._api_key = api_key.encode("utf-8") if api_key else None

    def accepts(self, headers: Message) -> bool:
        """True if ``headers`` carry an accepted key (``X-API-Key`` or legacy ``Bearer``)."""
        key = (headers.get("X-API-Key") or "").strip()
        if not key:
            scheme, _, token = (headers.get("Authorization") or "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else ""
        if not key:
            return False
        if self._api_key is None:
            return True
        return hmac.compare_digest(key.encode("utf-8"), self._api_key)
