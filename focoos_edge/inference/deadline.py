"""A whole-request deadline for the Focoos client: from connect to the last byte of the reply.

requests/urllib3 time out each socket operation only: a server (or a broken proxy) that trickles
the status line, the headers or the body one byte at a time never trips them and holds an upload
worker for ever. Here every request gets a timer; when it fires, the socket of the connection the
request is using is shut down, which ends any blocked recv/send at once. The pool's connection
classes note, per thread, which connection the current request uses.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()  # .watch: the Deadline of the request running on this thread


class Deadline:
    """Arms a timer for one request on this thread; `expired` once it fired (use as a context)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self.conn: HTTPConnection | None = None
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._lock = threading.Lock()

    def __enter__(self) -> Deadline:
        _current.watch = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        _current.watch = None
        with self._lock:
            self.conn = None

    def attach(self, conn: HTTPConnection) -> None:
        with self._lock:
            self.conn = conn

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            sock = getattr(self.conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the worker blocked in recv/send
                except OSError:
                    pass


def _note(conn: HTTPConnection) -> None:
    watch = getattr(_current, "watch", None)
    if watch is not None:
        watch.attach(conn)


def _check(conn: HTTPConnection) -> None:
    """The timer may have fired while the socket was still connecting: give up now."""
    watch = getattr(_current, "watch", None)
    if watch is not None and watch.expired:
        conn.close()
        raise TimeoutError("request deadline passed while connecting")


class _TimedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _check(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _note(self)  # before connecting: a fired timer then finds the socket as soon as it exists
        super().request(*args, **kwargs)


class _TimedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _check(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _note(self)
        super().request(*args, **kwargs)


class _TimedPool(HTTPConnectionPool):
    ConnectionCls = _TimedHTTPConnection


class _TimedTlsPool(HTTPSConnectionPool):
    ConnectionCls = _TimedHTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections can be cut by a :class:`Deadline` (direct connections;
    through an HTTP proxy only the per-operation timeouts and the body deadline apply)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TimedPool, "https": _TimedTlsPool}
