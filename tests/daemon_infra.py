"""Helpers to run the real daemon (`python -m focoos_edge run`) against test infrastructure."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from focoos_edge.delivery import contract

KEY = "test-key-0123"  # the API key of the `local_server` fixture
TOPIC = "focoos/box1"  # prefix/device of daemon_config()


def daemon_config(tmp_path: Path, *, api_url: str, mqtt_port: int, cameras: list[dict[str, Any]],
                  api_key: str = KEY, model_ref: str = "local-aruco", device_id: str = "box1",
                  **top: Any) -> Path:
    """Write a daemon config; `top` may override top-level keys or whole sections."""
    inference = {"api_url": api_url, "api_key": api_key, "model_ref": model_ref, "timeout_s": 5}
    inference.update(top.pop("inference", {}))
    mqtt = {"host": "127.0.0.1", "port": mqtt_port}
    mqtt.update(top.pop("mqtt", {}))
    config = {"device_id": device_id, "state_dir": str(tmp_path / "state"), "log_level": "info",
              "stats_interval_s": 1, "inference": inference, "mqtt": mqtt, "cameras": cameras, **top}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def daemon_command(config: Path) -> list[str]:
    """The command line of the daemon under test."""
    return [sys.executable, "-m", "focoos_edge", "run", "-c", str(config)]


def state_is(topic: str, state: str):
    return lambda m: m.topic == topic and m.json()["state"] == state


def assert_accounted(stats: dict) -> None:
    """Every sampled frame is delivered, pending, evicted or dead-lettered: exact equality."""
    for name, cam in stats["cameras"].items():
        assert cam["produced"] == cam["delivered"] + cam["pending"] + cam["evicted"] + cam["dead_lettered"], \
            (name, cam)


def assert_valid_messages(sub) -> None:
    """Every message the daemon published validates against its JSON Schema (independent validator)."""
    checked = 0
    for m in sub.messages("focoos/#"):
        kind = contract.classify_topic(m.topic, "focoos")
        assert kind is not None, m.topic
        if kind.schema is not None and m.payload_bytes:
            contract.validate_payload(kind.schema, m.payload_bytes)
            checked += 1
    assert checked > 0


def stop_daemon(daemon, sub):
    """SIGTERM: exit 0, `offline` published on availability, final stats balanced, every message valid."""
    mark = sub.count
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.describe()
    sub.wait_for(lambda m: m.topic == f"{TOPIC}/availability" and m.payload == "offline", 10,
                 "availability offline", since=mark)
    final = sub.messages(f"{TOPIC}/stats", since=mark)[-1].json()
    assert_accounted(final)
    assert_valid_messages(sub)
    return final
