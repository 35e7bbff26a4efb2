"""A whole-request deadline for the Focoos client: from connect to the last byte of the reply.

requests/urllib3 time out each socket operation only: a server (or a broken proxy) that trickles
the status line, the headers or the body one byte at a time never trips them and holds an upload
worker for ever. Here every request gets a deadline; when it passes, the socket of the connection
the request is using is shut down, which ends any blocked recv/send at once. The pool's connection
classes note, per thread, which connection the current request uses.

One :class:`DeadlineWatch` thread per client keeps every request's deadline, instead of a timer
thread started per request (about 0.3 ms of CPU each here: at 36 uploads a second, 1 % of a core).
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_current = threading.local()  # .watch: the Deadline of the request running on this thread


class DeadlineWatch:
    """The thread that fires the deadlines of one client's requests, in order (started with the
    first deadline, again after `close`). Thread-safe; the clock is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, name: str = "focoos-deadlines"):
        self._clock = clock
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, deadline: Deadline) -> None:
        """Fire `deadline` at its time unless it is done by then."""
        with self._cond:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            self._closed = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def pending(self) -> int:
        """Deadlines not yet passed (done or not)."""
        with self._cond:
            return len(self._heap)

    def now(self) -> float:
        """The watch's clock."""
        return self._clock()

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the thread once the requests still running are done or past their deadline (a
        client replaced on reload may still be finishing a request); joined at once when idle."""
        with self._cond:
            self._closed = True
            self._heap = [entry for entry in self._heap if not entry[2].done]
            heapq.heapify(self._heap)
            thread, idle = self._thread, not self._heap
            self._cond.notify()
        if idle and thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = self._clock()
                while self._heap and self._heap[0][0] <= now:
                    heapq.heappop(self._heap)[2].fire()  # quick: a flag and a socket shutdown
                if self._closed and not any(not entry[2].done for entry in self._heap):
                    return
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


class Deadline:
    """One request's deadline on this thread, kept by `watch`; `expired` once it fired (use as a
    context: leaving it marks the deadline done, so it no longer fires)."""

    def __init__(self, seconds: float, watch: DeadlineWatch):
        self.seconds = seconds
        self.expired = False
        self.at = 0.0
        self.conn: HTTPConnection | None = None
        self._watch = watch
        self._done = False
        self._lock = threading.Lock()

    def __enter__(self) -> Deadline:
        _current.watch = self
        self.at = self._watch.now() + self.seconds
        self._watch.arm(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        _current.watch = None
        with self._lock:
            self._done = True
            self.conn = None

    @property
    def done(self) -> bool:
        """The request left its context (it can no longer be cut)."""
        with self._lock:
            return self._done

    def attach(self, conn: HTTPConnection) -> None:
        with self._lock:
            self.conn = conn

    def fire(self) -> None:
        """The deadline passed: cut the request's connection (nothing once the request is done)."""
        with self._lock:
            if self._done:
                return
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
