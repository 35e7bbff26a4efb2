"""The daemon as a service: wiring and lifecycle of the stages, stats, systemd (sd_notify, watchdog),
logging with redaction, the Prometheus endpoint."""

from focoos_edge.service.daemon import (
    Daemon,
    capture_settings,
    mqtt_settings,
)
from focoos_edge.service.logs import (
    setup_logging,
)
from focoos_edge.service.reloadctl import (
    request_reload,
)
from focoos_edge.service.statedir import (
    StateDirError,
)

__all__ = [
    "Daemon", "StateDirError", "capture_settings", "mqtt_settings", "request_reload", "setup_logging",
]
