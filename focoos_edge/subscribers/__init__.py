"""What subscribers consume besides detections and events: retained counts, annotated snapshots
(masks and keypoints drawn), Home Assistant discovery (one device per camera)."""

from focoos_edge.subscribers.features import (
    FeaturesSnapshot,
    SubscriberFeatures,
)

__all__ = [
    "FeaturesSnapshot", "SubscriberFeatures",
]
