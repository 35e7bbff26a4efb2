"""Focoos HUB remote-inference client.

Speaks the Focoos HUB wire format (``X-API-Key`` header, one multipart part named
``file``), parses replies tolerantly and turns every failure into one typed error, so the uplink's
retry policy can tell a 503 from a 401 without looking at strings.

The errors (``FocoosError`` and its subclasses, each with ``.retryable`` and ``.reason``) live in
:mod:`focoos_edge.inference.errors`; the reply types and their parsing in :mod:`focoos_edge.inference.parse`.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import logging
import math
import socket
import ssl
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import urllib3.exceptions
from urllib3.util.retry import Retry

from focoos_edge import __version__
from focoos_edge.inference.deadline import Deadline, DeadlineAdapter, DeadlineWatch
from focoos_edge.inference.errors import (
    AuthError,
    FocoosError,
    MalformedResponseError,
    ModelNotFoundError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from focoos_edge.inference.parse import (
    InferenceResult,
    ModelInfo,
    error_detail,
    parse_inference,
    parse_model_info,
    parse_retry_after,
)
from focoos_edge.inference.quota import AccountQuota, parse_account

log = logging.getLogger(__name__)

DEFAULT_USER_AGENT = f"focoos-edge/{__version__}"
# A detection reply is a few KiB; the cap only stops a broken proxy from filling an edge box's RAM.
MAX_REPLY_BYTES = 8 * 1024 * 1024


class FocoosClient:
    """Client for the Focoos HUB inference API.

    One instance is safe to share across the uplink threads: it owns one ``requests.Session`` whose
    connection pool (``pool_size`` keep-alive connections) is thread-safe, and nothing else in the
    client is mutated after construction (cookies are refused, so the jar stays empty).
    Requests are never retried here: retry and backoff belong to the uplink.
    """

    def __init__(
        self,
        api_url: str,
        api_key: str,
        timeout_s: float = 10.0,
        connect_timeout_s: float | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
        pool_size: int = 4,
    ) -> None:
        key = _check_api_key(api_key)
        parts = urlsplit(api_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("inference api_url must be an http:// or https:// URL with a host")
        if not (timeout_s > 0 and math.isfinite(timeout_s)) or pool_size < 1:
            raise ValueError("timeout_s must be a positive number and pool_size at least 1")
        self._api_key = key
        self._base = api_url.rstrip("/")
        # host:port without any user:password@ that may sit in the URL.
        self._peer = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        self._timeout_s = float(timeout_s)
        self._connect_timeout_s = float(connect_timeout_s or min(timeout_s, 5.0))
        self._session = _make_session(key, user_agent, pool_size, api_url)
        self._deadlines = DeadlineWatch()

    def __repr__(self) -> str:
        return f"FocoosClient({self._peer})"

    def __enter__(self) -> FocoosClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections and stop the deadline thread."""
        self._session.close()
        self._deadlines.close()

    def model_info(self, model_ref: str) -> ModelInfo:
        """``GET models/{ref}``; raises a :class:`FocoosError` subclass on any failure."""
        status, body, headers = self._request("GET", f"models/{_quote_ref(model_ref)}")
        if status != 200:
            raise self._status_error(status, body, headers, model_ref)
        _check_json_reply(headers, body)
        return parse_model_info(body, model_ref)

    def account_quota(self) -> AccountQuota:
        """``GET user/``: the account's inference quota (its e-mail and key are not read)."""
        status, body, headers = self._request("GET", "user/")
        if status != 200:
            raise self._status_error(status, body, headers, "user/")
        return parse_account(body)

    def infer(self, model_ref: str, jpeg: bytes, threshold: float) -> InferenceResult:
        """Upload one JPEG for inference; boxes come back in the uploaded image's pixels."""
        if not isinstance(jpeg, (bytes, bytearray, memoryview)) or len(jpeg) == 0:
            raise ValueError("jpeg must be non-empty bytes")
        path = f"models/{_quote_ref(model_ref)}/inference"
        params = {"confidence_threshold": format_threshold(threshold)}
        files = {"file": ("image", bytes(jpeg), "image/jpeg")}
        started = time.monotonic()
        status, body, headers = self._request("POST", path, params=params, files=files)
        round_trip_s = time.monotonic() - started
        if status != 200:
            raise self._status_error(status, body, headers, model_ref)
        _check_json_reply(headers, body)
        return parse_inference(body, round_trip_s)

    def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes, Mapping[str, str]]:
        """The one boundary where requests/urllib3 exceptions become typed errors."""
        started = time.monotonic()
        # timeout_s bounds the whole exchange, connect to last byte (a trickled status line too).
        deadline = Deadline(self._timeout_s, self._deadlines)
        try:
            with deadline:
                # Redirects are refused: requests would resend X-API-Key to whatever host a 30x names.
                resp = self._session.request(
                    method, f"{self._base}/{path}", allow_redirects=False, stream=True,
                    timeout=(self._connect_timeout_s, self._timeout_s), **kwargs,
                )
                try:
                    body = _read_body(resp, MAX_REPLY_BYTES, started + self._timeout_s)
                finally:
                    resp.close()  # returns a fully read connection to the pool, drops a partial one
                if deadline.expired:  # the cut can look like a reply that ended early: it is not one
                    raise TimeoutError("request deadline passed")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            error = TransientError(f"Focoos API timed out after {self._timeout_s} s", reason="timeout") \
                if deadline.expired else self._translate(exc)
            log.debug("%s %s failed after %.3f s: %s", method, path, time.monotonic() - started, error)
            raise error from None  # the chained exception would only add noise (and the URL)
        log.debug("%s %s -> %d (%d bytes) in %.3f s", method, path, resp.status_code, len(body),
                  time.monotonic() - started)
        return resp.status_code, body, resp.headers

    def _translate(self, exc: BaseException) -> TransientError:
        """Name the network failure precisely; str(exc) is never used (it may carry proxy URLs)."""
        chain = list(_exception_chain(exc))
        for types, template, reason in _NETWORK_FAILURES:  # first match wins: the order matters
            if any(isinstance(e, types) for e in chain):
                return TransientError(template.format(peer=self._peer, host=self._peer.rsplit(":", 1)[0],
                                                      connect_s=self._connect_timeout_s, read_s=self._timeout_s),
                                      reason=reason)
        return TransientError(f"request to {self._peer} failed ({type(exc).__name__})")

    def _status_error(self, status: int, body: bytes, headers: Mapping[str, str], model_ref: str) -> FocoosError:
        detail = error_detail(body, self._api_key)
        tail = f": {detail}" if detail else ""
        if status in (401, 403):
            return AuthError(f"Focoos API rejected the API key (HTTP {status}){tail}", status=status)
        if status == 404:
            return ModelNotFoundError(f"model {model_ref!r} not found (HTTP 404){tail}")
        if status == 429:
            retry_after_s = parse_retry_after(headers.get("Retry-After"))
            wait = f", retry after {retry_after_s:.1f} s" if retry_after_s is not None else ""
            return RateLimitedError(f"Focoos API rate limit reached (HTTP 429){wait}{tail}",
                                    retry_after_s=retry_after_s)
        if status == 408:
            return TransientError(f"Focoos API timed out the request (HTTP 408){tail}", status=408, reason="timeout")
        if status >= 500:
            return TransientError(f"Focoos API server error (HTTP {status}){tail}", status=status,
                                  reason="server_error")
        if 300 <= status < 400 or not (detail and _is_json(headers, body)):
            # A redirect or a reply that is not a Focoos error (an HTML page): something on the path
            # (captive portal, proxy) answered, not the API. Network trouble: the frame is kept.
            what = "a redirect" if 300 <= status < 400 else "a reply that is not a Focoos error"
            return TransientError(f"Focoos API address answered with {what} (HTTP {status}), not followed: a "
                                  "captive portal or proxy in the way? (if the API moved, set inference.api_url)",
                                  status=status, reason="unreachable")
        return PermanentError(f"Focoos API rejected the request (HTTP {status}){tail}", status=status)


# (exception types found anywhere in the chain, message template, reason); the first match wins.
# Only requests' ConnectTimeout means a connect timeout: urllib3's NewConnectionError (refused, DNS,
# unreachable) subclasses ConnectTimeoutError. Generic timeouts go last: many failures wrap one.
_NETWORK_FAILURES: tuple[tuple[tuple[type[BaseException], ...], str, str], ...] = (
    ((requests.ConnectTimeout,), "connection to {peer} timed out after {connect_s} s", "timeout"),
    ((ssl.SSLError, requests.exceptions.SSLError), "TLS handshake with {peer} failed", "unreachable"),
    ((urllib3.exceptions.NameResolutionError, socket.gaierror), "cannot resolve host {host!r}", "unreachable"),
    ((ConnectionRefusedError,), "connection to {peer} refused", "unreachable"),
    ((ConnectionResetError, ConnectionAbortedError, BrokenPipeError),
     "connection to {peer} reset by peer", "unreachable"),
    ((http.client.RemoteDisconnected, http.client.IncompleteRead, requests.exceptions.ChunkedEncodingError),
     "{peer} closed the connection before a complete reply", "unreachable"),
    ((requests.exceptions.ProxyError, urllib3.exceptions.ProxyError),
     "HTTP proxy failed while connecting to {peer}", "unreachable"),
    ((urllib3.exceptions.NewConnectionError,), "cannot connect to {peer}", "unreachable"),
    ((requests.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError),
     "Focoos API timed out after {read_s} s", "timeout"),
)


def _is_json(headers: Mapping[str, str], body: bytes) -> bool:
    """Does the reply claim or look like JSON? (A truncated JSON body still does: that is malformed.)"""
    return "json" in (headers.get("Content-Type") or "").lower() or body.lstrip()[:1] in (b"{", b"[")


def _check_json_reply(headers: Mapping[str, str], body: bytes) -> None:
    """A 200 that is not JSON at all (a captive portal's HTML login page) is network trouble."""
    if not _is_json(headers, body):
        raise TransientError("Focoos API address answered HTTP 200 with a reply that is not JSON: a captive "
                             "portal or proxy in the way?", status=200, reason="unreachable")


def _check_api_key(api_key: str) -> str:
    key = (api_key or "").strip()  # keys read from files often end with a newline
    if not key:
        raise ValueError("the Focoos API key is blank")
    if not key.isprintable() or not key.isascii():
        raise ValueError("the Focoos API key contains control or non-ASCII characters")
    return key


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """Session auth hook that does nothing, so a ~/.netrc entry cannot add an Authorization header."""
    return request


def _make_session(api_key: str, user_agent: str, pool_size: int, api_url: str) -> requests.Session:
    session = requests.Session()
    # The environment (HTTPS_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE...) is read once, here: requests
    # would read it again on every request, scanning all of os.environ twice, a third of the
    # client's CPU per upload (0.8 of 2.4 ms here). A daemon's environment does not change.
    settings = session.merge_environment_settings(api_url, {}, None, None, None)
    session.proxies.update(settings["proxies"])
    session.verify = settings["verify"]
    session.trust_env = False
    # total=0: urllib3 must not retry behind the uplink's back (it would double-count metered inferences).
    adapter = DeadlineAdapter(pool_connections=pool_size, pool_maxsize=pool_size,
                              max_retries=Retry(total=0, read=False, redirect=False))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"X-API-Key": api_key, "User-Agent": user_agent, "Accept": "application/json"})
    session.auth = _no_auth
    # The API is stateless; refusing cookies keeps the shared session free of cross-thread state.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return session


def _read_body(resp: requests.Response, max_bytes: int, deadline: float) -> bytes:
    """Read the whole body, at most `max_bytes`, by `deadline` (monotonic).

    The read timeout only bounds each recv: a server trickling a byte at a time would hold a worker
    for ever. `read1` returns whatever one recv brought, so the deadline is checked in between.
    """
    chunks: list[bytes] = []
    total = 0
    raw = resp.raw
    raw.decode_content = True
    while True:
        chunk = raw.read1(64 * 1024) if hasattr(raw, "read1") else raw.read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise MalformedResponseError(f"malformed reply: larger than {max_bytes} bytes")
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise TimeoutError("reply body not complete by the deadline")


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """Every exception wrapped in ``exc``: requests and urllib3 nest them in args, .reason and causes."""
    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack and len(seen) < 64:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args)
        stack.extend(e for e in nested if isinstance(e, BaseException))


def _quote_ref(model_ref: str) -> str:
    if not isinstance(model_ref, str) or not model_ref.strip():
        raise ValueError("model_ref must be a non-empty string")
    return quote(model_ref, safe="")


def format_threshold(threshold: float) -> str:
    """``0.5`` -> ``"0.5"``: a plain decimal (no exponent), as the server's float parser expects."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError("threshold must be a number between 0 and 1")
    text = f"{float(threshold):.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text
