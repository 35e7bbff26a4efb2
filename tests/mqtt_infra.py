"""A real Mosquitto broker and a real independent subscriber (mosquitto_sub) for the tests.

The subscriber is deliberately not paho: it is another implementation, run as another process,
so an end-to-end test checks what any MQTT client would see (including the retained flag).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procs import (
    LOOPBACK,
    ChildProcess,
    RestartableServer,
    WaitTimeout,
    check_alive,
    free_port,
    require_tool,
    wait_for_port,
)

log = logging.getLogger(__name__)

# Flag, QoS, time, payload as hex (so any byte, newlines and tabs included, stays on one
# line), then the topic last so that nothing after it needs splitting.
SUB_FORMAT = r"%r\t%q\t%U\t%x\t%t"
PROBE_PREFIX = "focoos-infra-probe"
PROBE_INTERVAL_S = 0.5
MOSQUITTO_APT = "mosquitto"
CLIENTS_APT = "mosquitto-clients"


class Mosquitto(RestartableServer):
    """A Mosquitto broker on 127.0.0.1 with a generated config (anonymous access).

    ``extra_config`` lines are appended verbatim (for instance ``max_queued_messages 5000``).
    ``start()`` must be called (the fixtures do); ``kill()``/``restart()`` keep the port.
    """

    name = "mosquitto"

    def __init__(
        self,
        work_dir: Path,
        *,
        port: int | None = None,
        persistence: bool = False,
        autosave_interval_s: int = 1,
        extra_config: Sequence[str] = (),
        start_timeout_s: float = 10.0,
    ) -> None:
        self._binary = require_tool("mosquitto", MOSQUITTO_APT)
        self.port = port or free_port()
        self.host = LOOPBACK
        self.work_dir = work_dir
        self.start_timeout_s = start_timeout_s
        work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = work_dir / "mosquitto.conf"
        self.config_path.write_text(self._config(persistence, autosave_interval_s, extra_config))

    def _config(self, persistence: bool, autosave_interval_s: int, extra: Sequence[str]) -> str:
        lines = [
            f"listener {self.port} {LOOPBACK}",
            "allow_anonymous true",
            # Run as root, mosquitto switches to the "mosquitto" user and then cannot write
            # its persistence file in our directory: stay the user we are.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "log_dest stderr",
            "log_type all",
        ]
        if persistence:
            store = self.work_dir / "store"
            store.mkdir(exist_ok=True)
            # The database is written only every autosave interval and on a clean exit;
            # outage tests SIGKILL the broker, so save often.
            lines += [
                "persistence true",
                f"persistence_location {store}/",
                f"autosave_interval {autosave_interval_s}",
            ]
        return "\n".join([*lines, *extra]) + "\n"

    def start(self) -> Mosquitto:
        """Start the broker and return once its port accepts connections."""
        self._check_not_running()
        self.proc = ChildProcess(
            [self._binary, "-c", self.config_path], name=self.name, log_dir=self.work_dir
        )
        wait_for_port(self.port, self.start_timeout_s, self.proc)
        return self


@dataclass(frozen=True)
class Message:
    """One message as mosquitto_sub printed it; ``received_at`` is ``time.time()``-based."""

    topic: str
    payload: str
    retained: bool
    qos: int
    received_at: float
    payload_bytes: bytes = field(repr=False)

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload_bytes)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching: ``+`` is one level, a final ``#`` any number (zero included)."""
    if topic_filter == topic:
        return True
    filt, levels = topic_filter.split("/"), topic.split("/")
    if topic.startswith("$") and filt[0] in ("+", "#"):
        return False  # $SYS-style topics are not matched by a leading wildcard (MQTT 4.7.2)
    for i, part in enumerate(filt):
        if part == "#":
            return i == len(filt) - 1
        if i >= len(levels) or (part != "+" and part != levels[i]):
            return False
    return len(filt) == len(levels)


def parse_line(line: str) -> Message:
    """Parse one line of SUB_FORMAT output; ValueError if it is not one."""
    retained, qos, stamp, payload_hex, topic = line.rstrip("\n").split("\t", 4)
    payload = bytes.fromhex(payload_hex)
    return Message(
        topic=topic,
        payload=payload.decode("utf-8", errors="replace"),
        retained=retained == "1",
        qos=int(qos),
        received_at=float(stamp),
        payload_bytes=payload,
    )


class MqttSubscriber:
    """``mosquitto_sub`` subscribed to ``topic`` on a local broker, collecting every message.

    ``client_id`` makes a persistent session (``-c -i ID``): a subscriber started again with
    the same id gets the QoS 1 messages the broker queued meanwhile. mosquitto_sub reconnects
    by itself when the broker comes back; call ``wait_ready()`` to know it has resubscribed.
    """

    name = "mosquitto_sub"

    def __init__(
        self,
        port: int,
        log_dir: Path,
        *,
        topic: str = "#",
        qos: int = 1,
        client_id: str | None = None,
        host: str = LOOPBACK,
    ) -> None:
        self.port, self.host, self.topic = port, host, topic
        self.log_dir = log_dir
        self._sub = require_tool("mosquitto_sub", CLIENTS_APT)
        self._pub = require_tool("mosquitto_pub", CLIENTS_APT)
        self._probe_topic = f"{PROBE_PREFIX}/{uuid.uuid4().hex}"
        self._cmd = [self._sub, "-h", host, "-p", str(port), "-q", str(qos)]
        self._cmd += ["-t", topic, "-t", self._probe_topic, "-F", SUB_FORMAT]
        if client_id is not None:
            self._cmd += ["-c", "-i", client_id]
        self._cond = threading.Condition()
        self._messages: list[Message] = []
        self._probes_seen = 0
        self._stop = threading.Event()
        self.proc: ChildProcess | None = None
        self._reader: threading.Thread | None = None

    def start(self, timeout_s: float = 10.0) -> MqttSubscriber:
        """Start mosquitto_sub; return once its subscription is live (a probe came back)."""
        self.proc = ChildProcess(self._cmd, name=self.name, log_dir=self.log_dir)
        self._reader = threading.Thread(
            target=self._read_forever, name=f"mqtt-sub-{self.proc.pid}", daemon=True
        )
        self._reader.start()
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Publish probes on a private topic until one comes back (the subscription is live)."""
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout_s
        with self._cond:
            seen_before = self._probes_seen
        while time.monotonic() < deadline:
            self._publish_probe()
            with self._cond:
                if self._cond.wait_for(
                    lambda: self._probes_seen > seen_before or not self._alive(),
                    timeout=min(PROBE_INTERVAL_S, max(0.0, deadline - time.monotonic())),
                ) and self._probes_seen > seen_before:
                    return
            if not self._alive():
                break
        raise WaitTimeout(
            f"subscriber on port {self.port} not live after {timeout_s:.1f} s\n{self.describe()}"
        )

    def _publish_probe(self) -> None:
        cmd = [self._pub, "-h", self.host, "-p", str(self.port), "-t", self._probe_topic]
        try:
            subprocess.run(cmd + ["-m", "probe"], capture_output=True, timeout=5, check=False)
        except subprocess.TimeoutExpired:
            log.debug("probe publish to port %d timed out", self.port)

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.alive

    def describe(self) -> str:
        """Failure-message paragraph about the mosquitto_sub process."""
        return self.proc.describe() if self.proc else "mosquitto_sub (never started)"

    def _read_forever(self) -> None:
        assert self.proc is not None
        partial = ""
        with open(self.proc.stdout_path, encoding="utf-8", errors="replace") as out:
            while True:
                chunk = out.readline()
                if chunk.endswith("\n"):
                    self._add_line(partial + chunk)
                    partial = ""
                    continue
                partial += chunk
                if self._stop.is_set():
                    return  # set only after the process exited and nothing is left to read
                # Tailing a file: nothing can signal new data, so poll briefly.
                self._stop.wait(0.01)

    def _add_line(self, line: str) -> None:
        try:
            message = parse_line(line)
        except ValueError:
            log.warning("unparsable mosquitto_sub line: %r", line[:200])
            return
        with self._cond:
            if message.topic.startswith(PROBE_PREFIX + "/"):
                self._probes_seen += 1
            else:
                self._messages.append(message)
            self._cond.notify_all()

    def stop(self) -> None:
        """Terminate mosquitto_sub and the reader thread (messages stay readable)."""
        if self.proc is not None:
            self.proc.terminate(timeout_s=3.0)
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=5.0)

    @property
    def count(self) -> int:
        """Number of messages received so far; pass it as ``since`` to wait for newer ones."""
        with self._cond:
            return len(self._messages)

    def messages(self, topic_glob: str = "#", since: int = 0) -> list[Message]:
        """Messages received so far (from index ``since``) whose topic matches an MQTT filter."""
        with self._cond:
            return [m for m in self._messages[since:] if topic_matches(topic_glob, m.topic)]

    def wait_for(
        self,
        predicate: Callable[[Message], bool],
        timeout_s: float,
        what: str = "a matching message",
        since: int = 0,
        watch: Sequence[ChildProcess] = (),
    ) -> Message:
        """The first message (from index ``since``) satisfying ``predicate``, waiting if needed.

        Fails at once (ProcessExited) if a ``watch`` process exits first, e.g. the daemon.
        """
        __tracebackhide__ = True  # pytest: show the caller's line, not this helper's
        found: list[Message] = []
        next_index = since

        def match() -> bool:  # called with the lock held; scans each message once
            nonlocal next_index
            while not found and next_index < len(self._messages):
                message = self._messages[next_index]
                next_index += 1
                if predicate(message):
                    found.append(message)
            return bool(found)

        self._wait(match, timeout_s, watch)
        if found:
            return found[0]
        check_alive(watch, what)
        raise WaitTimeout(self._timeout_text(what, timeout_s))

    def wait_count(
        self,
        topic_glob: str,
        n: int,
        timeout_s: float,
        since: int = 0,
        watch: Sequence[ChildProcess] = (),
    ) -> list[Message]:
        """Wait until at least ``n`` messages (from ``since``) match ``topic_glob``; return them.

        Fails at once (ProcessExited) if a ``watch`` process exits first.
        """
        __tracebackhide__ = True
        matched = 0
        next_index = since

        def enough() -> bool:  # called with the lock held; scans each message once
            nonlocal matched, next_index
            for message in self._messages[next_index:]:
                matched += topic_matches(topic_glob, message.topic)
            next_index = len(self._messages)
            return matched >= n

        self._wait(enough, timeout_s, watch)
        got = self.messages(topic_glob, since)
        if len(got) >= n:
            return got
        what = f"{n} messages on {topic_glob} (got {len(got)})"
        check_alive(watch, what)
        raise WaitTimeout(self._timeout_text(what, timeout_s))

    def _wait(
        self, condition: Callable[[], bool], timeout_s: float, watch: Sequence[ChildProcess]
    ) -> None:
        """Wait on new messages until ``condition`` holds, time runs out or a process dies."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not condition():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._alive() or not all(p.alive for p in watch):
                    return
                # Woken by every message; the cap only bounds how late a dead process
                # (mosquitto_sub or a watched one) is noticed.
                self._cond.wait(min(remaining, 0.5))

    def _timeout_text(self, what: str, timeout_s: float) -> str:
        with self._cond:
            recent = self._messages[-8:]
            total = len(self._messages)
        lines = [f"  {m.topic} retained={m.retained}: {m.payload[:160]}" for m in recent]
        state = "" if self._alive() else " (mosquitto_sub has exited)"
        return (
            f"timed out after {timeout_s:.1f} s waiting for {what}{state}; "
            f"{total} messages received on {self.topic}, "
            f"last {len(recent)}:\n" + ("\n".join(lines) or "  <none>") + f"\n{self.describe()}"
        )

    def __enter__(self) -> MqttSubscriber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


__all__ = ["Message", "Mosquitto", "MqttSubscriber", "parse_line", "topic_matches"]
