"""Stage 2, inference: the Focoos HUB client (typed errors, a whole-request deadline, tolerant parsing
clamped to what the payloads allow) and the uplink (`submit`: live queue, spill to the spool,
workers, circuit breaker, model readiness and quota), which hands each result to the results stage.
Masks and keypoints are traced and mapped back to original-frame pixels here (geometry, masks)."""

from focoos_edge.inference.client import (
    FocoosClient,
)
from focoos_edge.inference.errors import (
    AuthError,
    FocoosError,
    ModelNotFoundError,
)
from focoos_edge.inference.geometry import (
    scale_detections,
)
from focoos_edge.inference.live import (
    CameraRoute,
    Delivery,
    InferenceHealth,
    LiveQueue,
    UplinkCameraSnapshot,
    UplinkSnapshot,
)
from focoos_edge.inference.masks import (
    trace_masks,
)
from focoos_edge.inference.parse import (
    Detection,
    InferenceResult,
    ModelInfo,
)
from focoos_edge.inference.quota import (
    QuotaWatch,
)
from focoos_edge.inference.uplink import (
    Uplink,
)

__all__ = [
    "AuthError", "CameraRoute", "Delivery", "Detection", "FocoosClient", "FocoosError", "InferenceHealth",
    "InferenceResult", "LiveQueue", "ModelInfo", "ModelNotFoundError", "QuotaWatch", "Uplink",
    "UplinkCameraSnapshot", "UplinkSnapshot", "scale_detections", "trace_masks",
]
