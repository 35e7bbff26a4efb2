"""Stage 0, the YAML config: typed models that reject unknown keys, loading with ${VAR} and *_file
secrets, camera source parsing. Errors name the YAML path (exit 78)."""

from focoos_edge.config.camera import (
    CameraConfig,
)
from focoos_edge.config.classcheck import (
    class_warnings,
    label_references,
)
from focoos_edge.config.load import (
    ConfigError,
)
from focoos_edge.config.models import (
    Config,
    config_json_schema,
    load_config,
)
from focoos_edge.config.results import (
    EventsConfig,
    FilterConfig,
    ZoneConfig,
)
from focoos_edge.config.sources import (
    Source,
)

__all__ = [
    "CameraConfig", "Config", "ConfigError", "EventsConfig", "FilterConfig", "Source", "ZoneConfig",
    "class_warnings", "config_json_schema", "label_references", "load_config",
]
