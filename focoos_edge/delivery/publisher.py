"""MQTT publishing (the only module that imports paho).

Availability is a retained `online`/`offline` with a last will; retained states are remembered and
re-published on every (re)connect, so a broker that restarted without persistence still shows them.

Durable messages (detections) never live only in paho's memory: they are committed to the spool's
outbox first, and an outbox pump publishes them while connected, keeping at most `window` of them
in flight, and deletes each row only on its own PUBACK. After a disconnect every unacknowledged row
is sent again, so a broker outage loses nothing and duplicates stay within the in-flight window.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from focoos_edge.common import Loop
from focoos_edge.delivery.messages import Topics, dumps
from focoos_edge.delivery.spool import Spool, SpoolError

log = logging.getLogger(__name__)

ONLINE = b"online"
RECONNECT_MAX_S = 2.0  # plus up to 1 s of jitter
OFFLINE = b"offline"


class _ExpectedPahoNoise(logging.Filter):
    """paho logs "Client is not connected" as an ERROR on every clean stop and every reconnect
    attempt: expected, and the publisher logs link changes itself. Kept at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith("Client is not connected"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _paho_logger() -> logging.Logger:
    logger = logging.getLogger("focoos_edge.paho")
    if not any(isinstance(f, _ExpectedPahoNoise) for f in logger.filters):
        logger.addFilter(_ExpectedPahoNoise())
    return logger


@dataclass(frozen=True)
class MqttSettings:
    """Connection settings (built from the `mqtt:` config section)."""

    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls: bool = False
    keepalive_s: int = 30
    qos: int = 1
    max_queued: int = 1000


@dataclass
class PublishCounters:
    """Monotonic counters, written by paho's thread, the outbox pump and any publishing thread: under
    the publisher's figures lock (`Publisher._count`)."""

    sent: int = 0
    acked: int = 0
    dropped_queue_full: int = 0
    resent: int = 0  # outbox messages sent again after a disconnect
    connects: int = 0
    connect_failures: int = 0


@dataclass(frozen=True)
class PublisherSnapshot:
    """The publisher's figures at one moment (`Publisher.snapshot`)."""

    connected: bool
    sent: int
    acked: int
    resent: int
    dropped_queue_full: int
    connects: int
    connect_failures: int
    delivered: Mapping[str, int]  # outbox messages acknowledged, per camera column (`camera/events` too)
    restarts: Mapping[str, int] = field(default_factory=dict)  # the outbox pump's, by thread name


class TlsConfigError(RuntimeError):
    """The broker's TLS files (`mqtt.tls`) cannot be loaded; the message names the key."""


def tls_context(s: MqttSettings) -> ssl.SSLContext:
    """TLS 1.2+ with certificate and host name verification (never `tls_insecure_set`).
    Raises TlsConfigError when a CA, certificate or key file cannot be read or parsed."""
    try:
        ctx = ssl.create_default_context(cafile=s.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if s.cert_file:
            ctx.load_cert_chain(s.cert_file, s.key_file)
    except (ssl.SSLError, OSError) as exc:  # TLS errors stay inside delivery
        raise TlsConfigError(f"mqtt.tls: cannot load the certificates: {exc}") from None
    return ctx


class Publisher:
    """A paho client running its own network thread, reconnecting on its own, plus the outbox pump."""

    def __init__(self, settings: MqttSettings, topics: Topics, outbox: Spool, window: int = 50):
        self.settings = settings
        self.topics = topics
        self.outbox = outbox
        self.window = window
        self.counters = PublishCounters()
        self.delivered: Counter = Counter()  # camera -> outbox messages acknowledged by the broker
        self._figures = threading.Lock()  # guards the two above; held for nothing else (a leaf lock)
        self.connected = threading.Event()
        self.last_error: str | None = None
        self._stopping = False
        self._down_since: float | None = None  # monotonic time the link dropped, while it is down
        self._retained: dict[str, bytes] = {}
        self._subscriptions: dict[str, Callable[[str, bytes], None]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._acks: deque[int] = deque()  # mids acknowledged, filled by paho's thread
        self._in_flight: dict[int, int] = {}  # mid -> outbox row id (pump thread only)
        self._last_sent = 0  # highest outbox row id published on this connection
        self._epoch = 0  # bumped on every disconnect: the pump then resends from the start
        self._pump_epoch = 0
        self._pump: Loop | None = None
        self.last_progress = time.monotonic()  # the pump's loop turned (watchdog)
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = new_client(s)
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        # A LAN broker restart (an upgrade, a reboot) is routine: retry every 2-3 s at most instead of
        # paho's doubling up to 30 s, with a per-process jitter so a fleet does not reconnect in step.
        jitter = random.uniform(0.0, 1.0)
        client.reconnect_delay_set(min_delay=0.5 + jitter / 2, max_delay=RECONNECT_MAX_S + jitter)  # type: ignore[arg-type]
        client.max_queued_messages_set(s.max_queued)
        client.max_inflight_messages_set(20)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.enable_logger(_paho_logger())
        return client

    # -- lifecycle --------------------------------------------------------------
    def start(self, stop: threading.Event) -> None:
        """Connect in the background (an unreachable broker is retried for ever) and start the pump."""
        log.info("MQTT: connecting to %s:%d as %s", self.settings.host, self.settings.port,
                 self.settings.client_id)
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive_s)
        self._client.loop_start()
        self._pump = Loop("mqtt-outbox", self.pump_turn, stop, on_beat=self._beat).start()

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait for the pump to stop, then publish the outbox while connected, until every message is
        acknowledged or `timeout_s` passed. Call after the pump's stop event is set."""
        deadline = time.monotonic() + timeout_s
        if self._pump is not None:
            self._pump.join(timeout_s)
        while self.connected.is_set() and time.monotonic() < deadline and self._pump_step():
            self._wake.wait(0.05)
            self._wake.clear()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Flush (see `flush`), publish `offline`, disconnect: within `timeout_s`, plus at least one
        second for `offline`. What is not acknowledged stays in the outbox for the next run."""
        deadline = time.monotonic() + timeout_s
        self.flush(timeout_s)
        self._stopping = True
        if self.connected.is_set():
            info = self._client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(max(1.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                log.warning("MQTT: could not publish offline: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()

    # -- publishing ---------------------------------------------------------------
    def publish(self, topic: str, payload: dict | bytes, qos: int | None = None, retain: bool = False) -> bool:
        """Queue a message; False when paho's bounded queue is full (counted as a drop)."""
        body = payload if isinstance(payload, bytes) else dumps(payload)
        qos = self.settings.qos if qos is None else qos
        if retain:
            with self._lock:
                self._retained[topic] = body
                # Not connected: _on_connect publishes every remembered retained message; queueing it
                # in paho too would send it twice (Home Assistant saw every discovery config twice).
                if not self.connected.is_set():
                    return True
        info = self._client.publish(topic, body, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self._count(dropped_queue_full=1)
            log.warning("MQTT: queue full (%d messages), dropped a message to %s",
                        self.settings.max_queued, topic)
            return False
        self._count(sent=1)
        return True

    def publish_durable(self, camera: str, topic: str, payload: dict, done_frame: int | None = None) -> None:
        """Commit a message to the outbox (with `done_frame` deleted in the same transaction); the
        pump publishes it. Raises SpoolError when it cannot be stored."""
        self.outbox.put_message(camera, topic, dumps(payload), self.settings.qos, False, done_frame)
        self._wake.set()

    def subscribe(self, topic: str, callback: Callable[[str, bytes], None]) -> None:
        """Call `callback(topic, payload)` (on paho's thread: keep it short) for messages on `topic`;
        the subscription is renewed on every reconnect (the session is clean)."""
        with self._lock:
            self._subscriptions[topic] = callback
        if self.connected.is_set():
            self._client.subscribe(topic, qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            callbacks = list(self._subscriptions.items())
        for topic, callback in callbacks:
            if mqtt.topic_matches_sub(topic, msg.topic):
                callback(msg.topic, msg.payload)

    def set_state(self, topic: str, payload: dict) -> None:
        """Publish a retained state, remembered for re-publication after a reconnect."""
        self.publish(topic, payload, qos=1, retain=True)

    # -- paho callbacks (paho's network thread) ------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._count(connect_failures=1)
            self._note_error(f"broker refused the connection: {reason_code}")
            return
        self._count(connects=1)
        self.last_error = None
        self.connected.set()
        down_since, self._down_since = self._down_since, None
        if down_since is None:
            log.info("MQTT: connected to %s:%d", self.settings.host, self.settings.port)
        else:
            log.warning("MQTT: connected to %s:%d again after an outage of %.1f s", self.settings.host,
                        self.settings.port, time.monotonic() - down_since)
        client.publish(self.topics.availability, ONLINE, qos=1, retain=True)
        with self._lock:
            retained = list(self._retained.items())
            subscriptions = list(self._subscriptions)
        for topic in subscriptions:  # before the states: a command answering a state is not missed
            client.subscribe(topic, qos=1)
        for topic, body in retained:
            client.publish(topic, body, qos=1, retain=True)
        self._wake.set()  # the outbox pump resends at once, not at its next half-second tick

    def _on_connect_fail(self, client, userdata) -> None:
        self._count(connect_failures=1)
        self._note_error(f"cannot reach broker {self.settings.host}:{self.settings.port}")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self._epoch += 1
        self._wake.set()
        if was_connected and not self._stopping:
            self._down_since = time.monotonic()
            log.warning("MQTT: disconnected (%s); reconnecting", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._count(acked=1)
        self._acks.append(mid)  # resolved by the pump: taking its lock here could deadlock with paho's
        self._wake.set()

    # -- figures ---------------------------------------------------------------------------
    def _count(self, **increments: int) -> None:
        with self._figures:
            for name, n in increments.items():
                setattr(self.counters, name, getattr(self.counters, name) + n)

    def snapshot(self) -> PublisherSnapshot:
        """The link's state and the counters, read together under the figures lock."""
        with self._figures:
            c = self.counters
            return PublisherSnapshot(
                connected=self.connected.is_set(), sent=c.sent, acked=c.acked, resent=c.resent,
                dropped_queue_full=c.dropped_queue_full, connects=c.connects, connect_failures=c.connect_failures,
                delivered=dict(self.delivered), restarts=self.restarts())

    # -- outbox pump (its own thread) ---------------------------------------------------
    def alive(self) -> bool:
        """The outbox pump runs."""
        return self._pump is not None and self._pump.alive()

    def restarts(self) -> dict[str, int]:
        """Outbox pump restarts after an unexpected error."""
        return {self._pump.name: self._pump.restarts} if self._pump is not None else {}

    def _beat(self, now: float) -> None:
        self.last_progress = now

    def pump_turn(self) -> float:
        """One turn of the pump thread: wait for an ack, a new message or a (re)connect, then pump."""
        self._wake.wait(0.5)
        self._wake.clear()
        try:
            self._pump_step()
        except SpoolError as exc:  # a failing disk: expected, no traceback
            log.error("MQTT outbox: %s", exc)
            return 1.0
        return 0.0

    def _pump_step(self) -> bool:
        """Delete acknowledged rows, then publish more while connected; True while work remains."""
        acked = []
        while self._acks:
            row = self._in_flight.pop(self._acks.popleft(), None)
            if row is not None:
                acked.append(row)
        if acked:
            done = self.outbox.delete_messages(acked)
            with self._figures:
                self.delivered.update(done)
        if self._pump_epoch != self._epoch:  # reconnected: everything unacknowledged goes again
            self._pump_epoch = self._epoch
            self._count(resent=len(self._in_flight))
            self._in_flight.clear()
            self._last_sent = 0
        if not self.connected.is_set():
            return bool(self._in_flight)
        room = self.window - len(self._in_flight)
        for msg in self.outbox.peek_messages(self._last_sent, room) if room > 0 else []:
            info = self._client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                break
            self._in_flight[info.mid] = msg.row_id
            self._last_sent = msg.row_id
            self._count(sent=1)
        return bool(self._in_flight)

    def _note_error(self, message: str) -> None:
        # Log a failure once per distinct reason, not on every retry; during an outage already
        # reported by the disconnect line, at debug only (one line when it drops, one when it returns).
        if message != self.last_error:
            log.log(logging.DEBUG if self._down_since is not None else logging.WARNING, "MQTT: %s; retrying", message)
        self.last_error = message


def new_client(settings: MqttSettings, id_suffix: str = "") -> mqtt.Client:
    """A paho client (MQTT 3.1.1, clean session) with the broker's credentials and TLS applied;
    `id_suffix` keeps helper connections (probe, viewer) from taking over the daemon's client id."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id + id_suffix,
                         protocol=mqtt.MQTTv311, clean_session=True)
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set_context(tls_context(settings))
    return client
