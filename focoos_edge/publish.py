"""MQTT publishing (the only module that imports paho).

Availability is a retained `online`/`offline` with a last will; retained states are remembered and
re-published on every (re)connect, so a broker that restarted without persistence still shows them.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from focoos_edge.messages import Topics, dumps

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"


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
    """Monotonic counters (read by the stats loop)."""

    sent: int = 0
    acked: int = 0
    dropped_queue_full: int = 0
    connects: int = 0
    connect_failures: int = 0


def tls_context(s: MqttSettings) -> ssl.SSLContext:
    """TLS 1.2+ with certificate and host name verification (never `tls_insecure_set`)."""
    ctx = ssl.create_default_context(cafile=s.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if s.cert_file:
        ctx.load_cert_chain(s.cert_file, s.key_file)
    return ctx


class Publisher:
    """A paho client running its own network thread, reconnecting on its own."""

    def __init__(self, settings: MqttSettings, topics: Topics):
        self.settings = settings
        self.topics = topics
        self.counters = PublishCounters()
        self.connected = threading.Event()
        self.last_error: str | None = None
        self._stopping = False
        self._retained: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=s.client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        if s.username:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            client.tls_set_context(tls_context(s))
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.max_queued_messages_set(s.max_queued)
        client.max_inflight_messages_set(20)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.enable_logger(logging.getLogger("focoos_edge.paho"))
        return client

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background; an unreachable broker is retried for ever."""
        log.info("MQTT: connecting to %s:%d as %s", self.settings.host, self.settings.port,
                 self.settings.client_id)
        self._client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive_s)
        self._client.loop_start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish `offline` (waiting for its ack up to `timeout_s` when connected) and disconnect."""
        self._stopping = True
        if self.connected.is_set():
            info = self._client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout_s)
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
        info = self._client.publish(topic, body, qos=qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.counters.dropped_queue_full += 1
            log.warning("MQTT: queue full (%d messages), dropped a message to %s",
                        self.settings.max_queued, topic)
            return False
        self.counters.sent += 1
        return True

    def set_state(self, topic: str, payload: dict) -> None:
        """Publish a retained state, remembered for re-publication after a reconnect."""
        self.publish(topic, payload, qos=1, retain=True)

    # -- paho callbacks (paho's network thread) ------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.counters.connect_failures += 1
            self._note_error(f"broker refused the connection: {reason_code}")
            return
        self.counters.connects += 1
        self.last_error = None
        self.connected.set()
        log.info("MQTT: connected to %s:%d", self.settings.host, self.settings.port)
        client.publish(self.topics.availability, ONLINE, qos=1, retain=True)
        with self._lock:
            retained = list(self._retained.items())
        for topic, body in retained:
            client.publish(topic, body, qos=1, retain=True)

    def _on_connect_fail(self, client, userdata) -> None:
        self.counters.connect_failures += 1
        self._note_error(f"cannot reach broker {self.settings.host}:{self.settings.port}")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if was_connected and not self._stopping:
            log.warning("MQTT: disconnected (%s); reconnecting", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self.counters.acked += 1

    def _note_error(self, message: str) -> None:
        # Log a failure once per distinct reason, not on every retry.
        if message != self.last_error:
            log.warning("MQTT: %s; retrying", message)
        self.last_error = message


def check_broker(settings: MqttSettings, timeout_s: float = 5.0) -> str | None:
    """Connect once with a throw-away client id; None when the broker accepted, else the reason."""
    result: dict[str, str | None] = {}
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{settings.client_id}-probe",
                         protocol=mqtt.MQTTv311, clean_session=True)
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set_context(tls_context(settings))

    def on_connect(c, userdata, flags, reason_code, properties):
        result["error"] = f"broker refused: {reason_code}" if reason_code.is_failure else None
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(settings.host, settings.port, keepalive=10)
    except (OSError, ValueError) as exc:
        return f"cannot reach {settings.host}:{settings.port}: {exc.strerror or exc}" \
            if isinstance(exc, OSError) else str(exc)
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            return f"no CONNACK from {settings.host}:{settings.port} within {timeout_s:.0f} s"
        return result.get("error")
    finally:
        client.disconnect()
        client.loop_stop()


def subscribe(settings: MqttSettings, topic: str, on_message: Callable[[str, bytes, bool], None]) -> mqtt.Client:
    """A background subscriber (the demo's live view); call `.disconnect()` and `.loop_stop()` to end."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{settings.client_id}-view",
                         protocol=mqtt.MQTTv311, clean_session=True)
    client.on_connect = lambda c, u, f, rc, p: None if rc.is_failure else c.subscribe(topic, qos=1)
    client.on_message = lambda c, u, msg: on_message(msg.topic, msg.payload, bool(msg.retain))
    client.connect_async(settings.host, settings.port, settings.keepalive_s)
    client.loop_start()
    return client
