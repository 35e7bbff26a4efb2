"""focoos-edge: an edge agent that streams camera frames to Focoos HUB inference and publishes over MQTT."""

__version__ = "0.1.0"
