"""What subscribers consume besides the detections: retained counts, annotated snapshots, Home
Assistant discovery."""

from focoos_edge.subscribers.features import (
    SubscriberFeatures,
)

__all__ = [
    "SubscriberFeatures",
]
