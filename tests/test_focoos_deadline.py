"""A reply trickled a byte at a time cannot hold an uplink worker past the client's deadline."""

from __future__ import annotations

import time

import httpfault
import pytest

from focoos_edge.inference.client import FocoosClient
from focoos_edge.inference.errors import TransientError

TRICKLED_BODY = httpfault.trickle(
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n", b" ", 0.1)


def test_trickled_body_times_out_by_the_deadline():
    with httpfault.FaultServer() as server:
        server.default = TRICKLED_BODY
        client = FocoosClient(server.url, "key-123456", timeout_s=1.0, connect_timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(TransientError) as err:
            client.infer("m", b"\xff\xd8jpeg", 0.5)
        elapsed = time.monotonic() - started
        client.close()
    assert err.value.reason == "timeout"
    # Each recv returns within the read timeout, so only the total deadline (2 s) can stop it;
    # without it this would run for 10000 s. Generous bound for a loaded machine.
    assert elapsed < 20, elapsed


@pytest.mark.parametrize("head, unit", [(b"HTTP/1.1 2", b"0"), (b"HTTP/1.1 200 OK\r\nX-Slow: ", b"y")],
                         ids=["status-line", "headers"])
def test_trickled_status_line_or_headers_time_out_by_timeout_s(head, unit):
    """The deadline runs from connect to the last byte: a status line or headers trickled a byte at a
    time (each recv gets data, so no read timeout fires) end the request after timeout_s."""
    with httpfault.FaultServer() as server:
        server.default = httpfault.trickle(head, unit, 0.1)
        client = FocoosClient(server.url, "key-123456", timeout_s=1.5, connect_timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(TransientError) as err:
            client.infer("m", b"\xff\xd8jpeg", 0.5)
        elapsed = time.monotonic() - started
        # The pool still works afterwards: the cut connection was dropped, a new one is made.
        server.default = httpfault.json(200, {"detections": []})
        assert client.infer("m", b"\xff\xd8jpeg", 0.5).detections == ()
        client.close()
    assert err.value.reason == "timeout"
    assert elapsed < 10, elapsed  # before: blocked for as long as the server kept trickling (58 s seen)


# -- one watch thread for every request's deadline ---------------------------------------------------

def watch_threads() -> list:
    import threading
    return [t for t in threading.enumerate() if t.name == "focoos-deadlines" and t.is_alive()]


def test_requests_share_one_deadline_thread_and_finished_ones_never_fire():
    """Twenty requests one after the other arm twenty deadlines on one thread (no timer thread per
    request); every request finished in time, so none of them fires, even long after."""
    with httpfault.FaultServer() as server:
        server.default = httpfault.json(200, {"detections": [], "latency": {}})
        with FocoosClient(server.url, "key-123456", timeout_s=0.3, connect_timeout_s=0.3) as client:
            deadlines = []
            original = client._deadlines.arm
            client._deadlines.arm = lambda d: (deadlines.append(d), original(d))[1]  # record, still arm
            for _ in range(20):
                client.infer("m", b"\xff\xd8jpeg", 0.5)
            assert len(watch_threads()) == 1
            time.sleep(0.6)  # past every deadline
            assert len(deadlines) == 20 and not any(d.expired for d in deadlines)
            assert client._deadlines.pending() == 0
        assert watch_threads() == []  # close() joined the idle thread


def test_one_watch_fires_deadlines_in_time_order_whatever_the_order_they_were_armed():
    from focoos_edge.inference.deadline import Deadline, DeadlineWatch
    watch = DeadlineWatch(name="test-deadlines")
    fired: list[float] = []
    deadlines = [Deadline(s, watch) for s in (0.4, 0.1, 0.3, 0.2)]
    try:
        for d in deadlines:
            d.fire = lambda d=d, f=d.fire: (f(), d.expired and fired.append(d.seconds))[0]
            d.__enter__()
        deadlines[2].__exit__(None, None, None)  # done in time: must not fire
        time.sleep(0.8)
    finally:
        watch.close()
    assert fired == [0.1, 0.2, 0.4]
    assert [d.expired for d in deadlines] == [True, True, False, True]
    assert watch.pending() == 0


def test_closing_the_client_keeps_the_deadline_of_a_request_still_running():
    """A client replaced on reload is closed while a worker may still be in a request: that request
    is still cut at its deadline, then the watch thread ends."""
    import threading
    with httpfault.FaultServer() as server:
        server.default = TRICKLED_BODY
        client = FocoosClient(server.url, "key-123456", timeout_s=1.0, connect_timeout_s=1.0)
        errors: list[Exception] = []

        def request() -> None:
            try:
                client.infer("m", b"\xff\xd8jpeg", 0.5)
            except TransientError as exc:
                errors.append(exc)

        worker = threading.Thread(target=request)
        worker.start()
        time.sleep(0.3)
        client.close()
        worker.join(20)
        assert not worker.is_alive() and [e.reason for e in errors] == ["timeout"]
        deadline = time.monotonic() + 5
        while watch_threads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watch_threads() == []
