"""The delivery side's settings fields: Kafka, topics, the consumer group, the spool.

Joined with the others into ``connector.settings.Settings``; ``KAFKA_BOOTSTRAP_SERVERS``,
``SCHEMA_REGISTRY_URL`` and ``CONNECTOR_TOPIC_TEMPLATE`` are interface names kept stable.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from connector import fields

_TOPIC_FIELDS = {"exchange", "channel", "market"}
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# codec: (lowest, highest, default) compression level. lz4 below 3 is its fast mode; the
# default differs from aiokafka's 9 (lz4's high-compression mode, many times the CPU for
# slightly smaller batches: bench/README.md has the figures).
COMPRESSION_LEVELS = {"lz4": (1, 12, 1), "zstd": (1, 22, 3), "gzip": (1, 9, 6)}
_RDKAFKA_MAX_LEVEL = 12  # librdkafka's compression.level range is -1..12 for every codec


class KafkaSettings(BaseModel):
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=fields.alias("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
        description="Kafka bootstrap servers; unset starts the embedded broker.",
    )
    schema_registry_url: str | None = Field(
        default=None,
        validation_alias=fields.alias("SCHEMA_REGISTRY_URL", "schema_registry_url"),
        description="Confluent-compatible schema registry; unset uses single-object encoding.",
    )
    topic_template: str = Field(
        default="{exchange}.{channel}.{market}",
        validation_alias=fields.alias("CONNECTOR_TOPIC_TEMPLATE", "topic_template"),
        description="Topic name template; placeholders {exchange}, {channel}, {market}.",
    )
    status_topic_template: str = Field(
        default="{exchange}.status",
        description="Topic of status events (gaps, sequence breaks, recoveries).",
    )
    dlq_topic_template: str = Field(
        default="{exchange}.dlq",
        description="Dead-letter topic: frames that could not be decoded, raw, with the reason.",
    )
    topic_partitions: int = Field(default=1, ge=1, description="Partitions of created topics.")
    topic_replication_factor: int = Field(
        default=-1,
        ge=-1,
        description="Replication factor of created topics; -1: min(3, brokers in the cluster).",
    )
    create_topics: bool = Field(default=True, description="Create missing topics at start.")
    group_id: str | None = Field(
        default=None,
        validation_alias=fields.alias("CONNECTOR_GROUP_ID", "group_id"),
        description="Scale-out: replicas with the same group id share the subscriptions "
        "through a Kafka consumer group; unset, this replica runs all of them.",
    )
    assignment_topic: str | None = Field(
        default=None,
        description="Topic whose partitions stand for the subscriptions (scale-out); "
        "default <group_id>.assignments.",
    )
    assignment_partitions: int = Field(
        default=64,
        ge=1,
        le=10000,
        description="Partitions of the assignment topic: the unit of ownership (same value "
        "on every replica).",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Worker processes in this replica (one core each); more than 1 needs "
        "CONNECTOR_GROUP_ID: the workers share the subscriptions like replicas do.",
    )
    group_session_timeout_ms: int = Field(
        default=10000,
        ge=1000,
        description="A replica that stops heartbeating loses its subscriptions after this.",
    )
    kafka_client: Literal["aiokafka", "librdkafka"] = Field(
        default="aiokafka",
        description="Producer library: aiokafka (pure Python, the default; bench/README.md "
        "compares their CPU), or librdkafka (confluent-kafka, the [librdkafka] extra; its "
        "own threads batch, compress and talk to the brokers).",
    )
    kafka_client_id: str = Field(
        default="exchange-connector", min_length=1, description="Kafka client.id of the producer."
    )
    kafka_compression: Literal["lz4", "zstd", "gzip", "snappy", "none"] = Field(
        default="lz4", description="Producer compression codec."
    )
    kafka_compression_level: int | None = Field(
        default=None,
        description="Compression level (Kafka's compression.level): lz4 1-12, zstd 1-22 (1-12 "
        "with librdkafka), gzip 1-9; not for snappy or none. Unset: lz4 1 (fast; 9, aiokafka's "
        "own, is lz4's high-compression mode: much more CPU for slightly smaller batches), "
        "zstd 3, gzip 6.",
    )
    kafka_linger_ms: int = Field(
        default=3,
        ge=0,
        le=10_000,
        description="How long the producer waits to fill a batch. 3 ms (Kafka's default is "
        "5): shorter waits cut latency at no CPU cost, as batches fill while the previous "
        "request is in flight (bench/README.md).",
    )
    kafka_max_batch_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Largest producer batch per partition."
    )
    kafka_enable_idempotence: bool | None = Field(
        default=None,
        description="Idempotent producer; unset means on for an external Kafka, off for the "
        "embedded broker (it does not support InitProducerId).",
    )
    kafka_request_timeout_ms: int = Field(
        default=30_000,
        ge=1000,
        description="Kafka request deadline; without idempotence also the batch expiry.",
    )
    kafka_send_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Records unacknowledged this long, with no acknowledgement meanwhile: "
        "Kafka is logged unreachable (once, then every 30 s, and when restored); records "
        "stay buffered and are retried.",
    )
    kafka_max_in_flight: int = Field(
        default=20_000,
        ge=1,
        description="Records accepted but not yet acknowledged; reading pauses beyond it.",
    )
    kafka_retry_backoff_max_s: float = Field(
        default=10.0, gt=0, description="Cap of the backoff between ordered retry rounds."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="Kafka security protocol: TLS with SSL/SASL_SSL, SASL with SASL_*.",
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None, description="CA bundle (PEM) to verify the brokers; unset: system CAs."
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, description="Client certificate (PEM) for mutual TLS."
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, description="Private key (PEM) of the client certificate."
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of the private key, if it has one (secret)."
    )
    kafka_ssl_check_hostname: bool = Field(
        default=True, description="Verify that broker certificates match their host names."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", description="SASL mechanism (with SASL_PLAINTEXT/SASL_SSL)."
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(
        default=None,
        description="SASL password (secret; or a file: CONNECTOR_KAFKA_SASL_PASSWORD_FILE).",
    )
    unsubscribe_timeout_s: float = Field(
        default=5.0,
        ge=0,
        description="On shutdown, how long to keep reading until the exchange confirms the "
        "unsubscriptions (frames already sent are still published); 0 skips it.",
    )
    spool: bool = Field(
        default=True,
        description="Spill to an on-disk spool what Kafka has not taken once "
        "kafka_max_in_flight records are unacknowledged (outages, shutdown); false: a full "
        "buffer holds the reader instead (a gap, recovered where the exchange allows).",
    )
    spool_dir: Path | None = Field(
        default=None,
        description="Where the spool lives (in containers: a writable volume). Unset: "
        "$XDG_STATE_HOME/exchange-connector/spool (~/.local/state/... without it), or a "
        "sibling spool-N if another connector holds it; no spool, with a warning, if none "
        "is writable.",
    )
    spool_max_bytes: int = Field(default=1 << 30, ge=1 << 20, description="Spool size limit.")
    spool_segment_bytes: int = Field(
        default=64 << 20, ge=64 << 10, description="Spool segment file size."
    )
    spool_fsync: Literal["always", "segment", "never"] = Field(
        default="segment",
        description="fsync every record (always), each closed segment (segment), or never.",
    )
    spool_write_ahead: bool = Field(
        default=False,
        description="Write-ahead mode: every record reaches the spool before it is sent, so "
        "a crash (SIGKILL, OOM kill) loses nothing the connector received; costs one "
        "write per record (see the benchmark). Needs spool_dir.",
    )
    spool_watermark_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="How often the spool saves how far Kafka acknowledged; bounds what a "
        "crash replays twice.",
    )
    spool_full_policy: Literal["block", "drop_oldest"] = Field(
        default="block",
        description="When the spool is full: block (stop reading; the gap machinery "
        "recovers) or drop_oldest (counted).",
    )
    shutdown_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="Deadline to deliver what is in flight on shutdown (below Kubernetes' "
        "30 s grace); what is left goes to the spool.",
    )
    embedded_broker_port: int = Field(
        default=9092,
        ge=0,
        le=65535,
        description="Port of the embedded broker (when KAFKA_BOOTSTRAP_SERVERS is unset); "
        "if it is taken, a free port is used and logged; 0: a free port.",
    )

    _kafka_upper = field_validator("kafka_security_protocol", mode="before")(fields.upper)
    _registry_url = field_validator("schema_registry_url")(fields.http_url)

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server.strip()!r} is not host:port")
        return value.strip()

    @field_validator("topic_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            raise ValueError(f"invalid template {value!r}: {exc}") from None
        unknown = names - _TOPIC_FIELDS
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {sorted(unknown)}; use {{exchange}}, {{channel}}, "
                f"{{market}}"
            )
        if "market" not in names or "channel" not in names:
            raise ValueError("the template must contain {channel} and {market}: one topic each")
        sample = value.format(
            exchange="bitstamp", channel="detail_order_book", market="btcusd-perp"
        )
        if not _TOPIC_RE.match(sample):
            raise ValueError(f"gives an invalid Kafka topic name {sample!r}")
        return value

    @field_validator("status_topic_template", "dlq_topic_template")
    @classmethod
    def _check_exchange_template(cls, value: str) -> str:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            raise ValueError(f"invalid template {value!r}: {exc}") from None
        if names - {"exchange"}:
            raise ValueError(f"only {{exchange}} may appear, not {sorted(names - {'exchange'})}")
        if not _TOPIC_RE.match(value.format(exchange="bitstamp")):
            raise ValueError(f"gives an invalid Kafka topic name {value!r}")
        return value

    @model_validator(mode="after")
    def _check_kafka_security(self) -> Any:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"kafka_security_protocol {protocol} needs kafka_sasl_username "
                "(CONNECTOR_KAFKA_SASL_USERNAME) and kafka_sasl_password "
                "(CONNECTOR_KAFKA_SASL_PASSWORD)"
            )
        tls = (self.kafka_ssl_cafile, self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        if any(tls) and not protocol.endswith("SSL"):
            raise ValueError(
                f"TLS files are set but kafka_security_protocol is {protocol}: use SSL or SASL_SSL"
            )
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ValueError(
                "kafka_ssl_certfile (CONNECTOR_KAFKA_SSL_CERTFILE) and kafka_ssl_keyfile "
                "(CONNECTOR_KAFKA_SSL_KEYFILE) go together"
            )
        for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} ({fields.ENV_PREFIX}{name.upper()}): no file {path}")
        return self

    @model_validator(mode="after")
    def _check_workers(self) -> Any:
        if self.workers > 1 and not self.group_id:
            raise ValueError(
                "workers (CONNECTOR_WORKERS) > 1 needs group_id (CONNECTOR_GROUP_ID): the "
                "workers share the subscriptions through the consumer group"
            )
        return self

    @model_validator(mode="after")
    def _check_write_ahead(self) -> Any:
        if self.spool_write_ahead and self.spool_dir is None:
            raise ValueError(
                "spool_write_ahead (CONNECTOR_SPOOL_WRITE_AHEAD) needs spool_dir "
                "(CONNECTOR_SPOOL_DIR)"
            )
        return self

    @model_validator(mode="after")
    def _check_compression_level(self) -> Any:
        level = self.kafka_compression_level
        if level is None:
            return self
        bounds = COMPRESSION_LEVELS.get(self.kafka_compression)
        if bounds is None:
            raise ValueError(
                f"kafka_compression_level (CONNECTOR_KAFKA_COMPRESSION_LEVEL) does not apply to "
                f"kafka_compression {self.kafka_compression!r}: unset it"
            )
        low, high, _ = bounds
        if not low <= level <= high:
            raise ValueError(
                f"kafka_compression_level (CONNECTOR_KAFKA_COMPRESSION_LEVEL) {level} is outside "
                f"{self.kafka_compression}'s {low}-{high}"
            )
        if self.kafka_client == "librdkafka" and level > _RDKAFKA_MAX_LEVEL:
            raise ValueError(
                f"kafka_compression_level (CONNECTOR_KAFKA_COMPRESSION_LEVEL) {level}: librdkafka "
                f"(CONNECTOR_KAFKA_CLIENT=librdkafka) accepts at most {_RDKAFKA_MAX_LEVEL}"
            )
        return self

    @property
    def compression_level(self) -> int | None:
        """The level batches are compressed at; None for codecs without levels."""
        bounds = COMPRESSION_LEVELS.get(self.kafka_compression)
        if bounds is None:
            return None
        return bounds[2] if self.kafka_compression_level is None else self.kafka_compression_level

    @property
    def embedded(self) -> bool:
        return self.kafka_bootstrap_servers is None

    @property
    def idempotence(self) -> bool:
        if self.kafka_enable_idempotence is None:
            return not self.embedded
        return self.kafka_enable_idempotence
