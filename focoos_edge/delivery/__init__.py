"""Durable storage and delivery: the SQLite spool (frames waiting for inference, results waiting for
the broker), the MQTT publisher that deletes an outbox row only on its PUBACK, topics, payloads and
their JSON Schemas."""

from focoos_edge.delivery.clients import (
    check_broker,
    subscribe,
)
from focoos_edge.delivery.contract import (
    count_topic,
    label_level,
    snapshot_topic,
)
from focoos_edge.delivery.messages import (
    PAYLOAD_VERSION,
    Topics,
    camera_state_payload,
    detection_dict,
    detections_payload,
    dumps,
    inference_state_payload,
    iso_utc,
    iso_utc_ns,
    keeps,
)
from focoos_edge.delivery.publisher import (
    MqttSettings,
    Publisher,
    PublisherSnapshot,
    TlsConfigError,
)
from focoos_edge.delivery.spool import (
    Spool,
    SpoolError,
)
from focoos_edge.delivery.spool_items import (
    QueueSnapshot,
    SpooledFrame,
    SpoolSnapshot,
)

__all__ = [
    "MqttSettings", "PAYLOAD_VERSION", "Publisher", "PublisherSnapshot", "QueueSnapshot", "Spool", "SpoolError",
    "SpoolSnapshot", "SpooledFrame", "TlsConfigError", "Topics", "camera_state_payload", "check_broker",
    "count_topic", "detection_dict", "detections_payload", "dumps", "inference_state_payload", "iso_utc",
    "iso_utc_ns", "keeps", "label_level", "snapshot_topic", "subscribe",
]
