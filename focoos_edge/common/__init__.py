"""Small parts every stage uses: backoff delays, secret redaction, sliding-window rates, the
allocator's settings, the reload answer. The standard library only, no imports from the other
packages: the CLI's light commands (reload) import nothing else."""

from focoos_edge.common.atomic import (
    write_json,
)
from focoos_edge.common.backoff import (
    Backoff,
)
from focoos_edge.common.geometry import (
    Box,
    area,
    contains,
    iou,
    self_intersection,
    visible_share,
)
from focoos_edge.common.loop import (
    Loop,
)
from focoos_edge.common.malloc import (
    tune_malloc,
)
from focoos_edge.common.ospackages import (
    package_for,
)
from focoos_edge.common.rates import (
    HourlyRate,
)
from focoos_edge.common.redact import (
    MASK,
    RedactingFilter,
    redact_text,
    redact_url,
    url_secrets,
)
from focoos_edge.common.reload import (
    ReloadAnswers,
    request_reload,
)

__all__ = [
    "Backoff", "Box", "HourlyRate", "Loop", "MASK", "RedactingFilter", "ReloadAnswers", "area", "contains",
    "iou", "package_for", "redact_text", "redact_url", "request_reload", "self_intersection", "tune_malloc",
    "url_secrets", "visible_share",
    "write_json",
]
