"""fluxmon: Prometheus metrics and structured logs from Flux job eventlogs."""

__version__ = "0.1.0"
