"""The connector's one exception tree.

    ConnectorError
    ├── ConfigError          invalid settings; the process exits with status 2
    ├── ProtocolError        a frame the decoder cannot turn into events; counted, logged, skipped
    ├── SchemaError          a schema file or registry answer that cannot be used; fatal at start
    ├── EncodeError          an event that does not fit its schema (a bug); counted, logged
    ├── DeliveryError        Kafka did not acknowledge a record; ``retriable`` says what follows
    ├── SubscriptionError    the exchange rejected a subscription; reported, retried with backoff
    ├── RestError            an exchange REST call failed (after retries); recovery reports it
    └── BrokerStartError     the embedded broker could not be started; fatal at start

Each error carries enough context to log one specific line. ``retriable`` follows
aiokafka's convention: the caller retries instead of guessing from the class name.
"""

from __future__ import annotations


class ConnectorError(Exception):
    """Base of every error the connector raises on purpose."""

    retriable = False


class ConfigError(ConnectorError):
    """A setting is missing or invalid. The message names the setting."""


class SpoolInUse(ConfigError):
    """The spool directory is locked by another connector process."""


class ProtocolError(ConnectorError):
    """A frame could not be decoded.

    ``reason`` is a short machine-readable tag (``invalid_json``, ``unknown_event``,
    ``missing_field``, ...) used as a metric label; ``frame`` keeps the raw bytes for
    dead-lettering.
    """

    def __init__(self, reason: str, detail: str, frame: bytes | str = b"") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.frame = frame


class SchemaError(ConnectorError):
    """A schema could not be loaded, parsed or registered."""


class EncodeError(ConnectorError):
    """An event did not fit its Avro schema."""


class DeliveryError(ConnectorError):
    """Kafka did not acknowledge a record."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class SubscriptionError(ConnectorError):
    """The exchange rejected a subscription request."""

    retriable = True


class RestError(ConnectorError):
    """An exchange REST request failed; ``retriable`` for 5xx, 429 and network errors."""

    def __init__(self, message: str, *, retriable: bool, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.retry_after_s = retry_after_s


class BrokerStartError(ConnectorError):
    """The embedded Kafka-protocol broker could not be started."""
