"""Short-lived MQTT connections beside the daemon's publisher: `check_broker` (probe, check-config)
and `subscribe` (the demo's live view). Both use the publisher's client factory, so credentials and
TLS are applied the same way (at run time paho is imported by publisher.py only)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from focoos_edge.delivery.publisher import MqttSettings, new_client

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt


def check_broker(settings: MqttSettings, timeout_s: float = 5.0) -> str | None:
    """Connect once with a throw-away client id; None when the broker accepted, else the reason."""
    result: dict[str, str | None] = {}
    done = threading.Event()
    client = new_client(settings, "-probe")

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
    client = new_client(settings, "-view")
    client.on_connect = lambda c, u, f, rc, p: None if rc.is_failure else c.subscribe(topic, qos=1)
    client.on_message = lambda c, u, msg: on_message(msg.topic, bytes(msg.payload), bool(msg.retain))
    client.connect_async(settings.host, settings.port, settings.keepalive_s)
    client.loop_start()
    return client
