"""The daemon as a service: wiring and lifecycle of the stages (it only wires), the state_dir lock,
the detect on/off control topics, stats, reload with an answer for systemd, sd_notify and the
watchdog, logging with redaction and journald priorities, the Prometheus and /healthz endpoint."""

from focoos_edge.service.daemon import (
    Daemon,
    capture_settings,
    mqtt_settings,
)
from focoos_edge.service.logs import (
    setup_logging,
)
from focoos_edge.service.statedir import (
    StateDirError,
)

__all__ = [
    "Daemon", "StateDirError", "capture_settings", "mqtt_settings", "setup_logging",
]
