"""Durable storage and delivery: the SQLite spool (frames waiting for inference, results waiting for
the broker), the MQTT publisher that deletes an outbox row only on its PUBACK, topics, payloads and
their JSON Schemas."""
