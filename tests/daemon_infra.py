"""Helpers to run the real daemon (`python -m focoos_edge run`) against test infrastructure."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml


def daemon_config(tmp_path: Path, *, api_url: str, mqtt_port: int, cameras: list[dict[str, Any]],
                  api_key: str = "test-key", model_ref: str = "local-aruco", device_id: str = "box1",
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
