"""The supervised loop helper (common/loop.py): policy with an injected clock, then one real thread."""

from __future__ import annotations

import logging
import random
import threading

import pytest
from procs import wait_until

from focoos_edge.common.backoff import Backoff
from focoos_edge.common.loop import Loop


class FakeTime:
    """A clock and a stop-aware wait that advances it instead of sleeping."""

    def __init__(self, stop: threading.Event, stop_after_waits: int):
        self.now = 100.0
        self.waits: list[float] = []
        self._stop = stop
        self._left = stop_after_waits

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        self._left -= 1
        if self._left <= 0:
            self._stop.set()
        return self._stop.is_set()


def scripted(outcomes: list):
    """A step that raises or returns each outcome in turn (an exception instance is raised)."""
    calls = []

    def step():
        calls.append(len(calls))
        outcome = outcomes[min(len(calls) - 1, len(outcomes) - 1)]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return step, calls


def make(step, stop, fake, **kw) -> Loop:
    return Loop("worker-x", step, stop, clock=fake.clock, wait=fake.wait,
                backoff=Backoff(1.0, 8.0, jitter="none", rng=random.Random(1)), **kw)


def test_errors_restart_with_capped_backoff_and_are_counted(caplog):
    stop = threading.Event()
    fake = FakeTime(stop, stop_after_waits=6)
    step, calls = scripted([UnicodeEncodeError("utf-8", "a\ud800", 1, 2, "surrogate"), ValueError("x"),
                            OverflowError("y"), KeyError("z"), RuntimeError("w"), TypeError("v")])
    loop = make(step, stop, fake)
    with caplog.at_level(logging.ERROR, logger="focoos_edge.common.loop"):
        loop.run()
    assert len(calls) == 6 and loop.restarts == 6 and loop.last_error == "TypeError"
    assert fake.waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]  # doubling, capped: no spin on a broken step
    lines = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 6 and all("thread worker-x" in r.getMessage() and r.exc_info for r in lines)


def test_step_delay_is_waited_on_stop_and_backoff_resets_once_healthy():
    stop = threading.Event()
    fake = FakeTime(stop, stop_after_waits=5)
    # fail, fail, then healthy steps asking for 20 s waits: after 30 s healthy the backoff is reset
    step, calls = scripted([ValueError(), ValueError(), 20.0, 20.0, ValueError(), 0.5])
    loop = make(step, stop, fake, healthy_after_s=30.0)
    loop.run()
    assert fake.waits == [1.0, 2.0, 20.0, 20.0, 1.0]  # the last failure starts from 1 s again
    assert loop.restarts == 3


def test_zero_delay_turns_at_once_and_heartbeat_follows_the_clock():
    stop = threading.Event()
    fake = FakeTime(stop, stop_after_waits=1)
    beats: list[float] = []

    def step():
        fake.now += 0.25
        return 0.0 if len(beats) < 4 else 3.0

    loop = make(step, stop, fake, on_beat=beats.append)
    loop.run()
    assert beats == [100.0, 100.25, 100.5, 100.75]  # no wait between zero-delay turns
    assert fake.waits == [3.0] and loop.last_beat == 100.75


def test_stop_ends_the_loop_before_the_next_turn():
    stop = threading.Event()
    stop.set()
    step, calls = scripted([0.0])
    Loop("idle", step, stop).run()
    assert calls == []


def test_real_thread_survives_and_keeps_its_name(caplog):
    """A real thread: a step that raises once keeps running (named thread, counted) and stops on the event."""
    stop = threading.Event()
    seen: list[str] = []
    step, calls = scripted([RuntimeError("boom"), 0.01])

    def named_step():
        seen.append(threading.current_thread().name)
        return step()

    loop = Loop("uplink-7", named_step, stop, backoff=Backoff(0.01, 0.01, jitter="none")).start()
    wait_until(lambda: len(calls) >= 5, 10, message="the loop kept turning after the error")
    assert loop.alive() and loop.restarts == 1 and set(seen) == {"uplink-7"}
    stop.set()
    loop.join(5)
    assert not loop.alive()


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3)])
def test_base_exceptions_are_not_swallowed(exc):
    stop = threading.Event()
    step, _ = scripted([exc])
    with pytest.raises(type(exc)):
        Loop("x", step, stop).run()
