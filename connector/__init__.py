"""Exchange WebSocket → Avro → Kafka ingest connector."""

__version__ = "0.1.0"
