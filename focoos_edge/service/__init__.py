"""The daemon as a service: wiring and lifecycle of the stages, stats, systemd (sd_notify, watchdog),
logging with redaction, the Prometheus endpoint."""
