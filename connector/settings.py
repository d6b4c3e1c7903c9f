"""The connector's one typed settings object: YAML file (``--config``) + environment.

The environment wins over the file. Interface names kept stable for deployments:
``BITSTAMP_WS_URL``, ``BITSTAMP_REST_URL``, ``CONNECTOR_MARKETS``, ``CONNECTOR_CHANNELS``,
``KAFKA_BOOTSTRAP_SERVERS``, ``SCHEMA_REGISTRY_URL``, ``CONNECTOR_TOPIC_TEMPLATE``,
``CONNECTOR_HTTP_PORT``; every other setting is ``CONNECTOR_<FIELD NAME>``. In a YAML file
every setting is spelled by its field name (``markets: [btcusd]``).

``load_settings`` validates everything at start and raises ``ConfigError`` whose message
names each bad setting by field and environment name.
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from connector.binance.protocol import CHANNELS as BINANCE_CHANNELS
from connector.bitfinex.protocol import BOOK_LENGTHS as BITFINEX_BOOK_LENGTHS
from connector.bitfinex.protocol import CHANNELS as BITFINEX_CHANNELS
from connector.bitstamp.protocol import CHANNELS as BITSTAMP_CHANNELS
from connector.bitstamp.protocol import PRIVATE_CHANNELS
from connector.bybit.protocol import CHANNELS as BYBIT_CHANNELS
from connector.bybit.protocol import ORDERBOOK_DEPTHS as BYBIT_DEPTHS
from connector.errors import ConfigError

ENV_PREFIX = "CONNECTOR_"
SUPPORTED_EXCHANGES = ("bitstamp", "binance", "bybit", "bitfinex")
EXCHANGE_ENV_PREFIXES = tuple(e.upper() + "_" for e in SUPPORTED_EXCHANGES)
# Every environment variable the connector reads starts with one of these.
INTERFACE_ENV_PREFIXES = (ENV_PREFIX, *EXCHANGE_ENV_PREFIXES, "KAFKA_", "SCHEMA_REGISTRY")
_TOPIC_FIELDS = {"exchange", "channel", "market"}
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# codec: (lowest, highest, default) compression level. lz4 below 3 is its fast mode; the
# default differs from aiokafka's 9 (high-compression mode), which costs ~14x the CPU.
COMPRESSION_LEVELS = {"lz4": (1, 12, 1), "zstd": (1, 22, 3), "gzip": (1, 9, 6)}
_RDKAFKA_MAX_LEVEL = 12  # librdkafka's compression.level range is -1..12 for every codec
_MARKET_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")

CommaList = Annotated[list[str], NoDecode]


def _symbols(
    value: list[str], pattern: str, what: str, normalize: Callable[[str], str] | None = None
) -> list[str]:
    if not value:
        raise ValueError("at least one market is required")
    if normalize is not None:
        value = [normalize(v) for v in value]
    for m in value:
        if not re.match(pattern, m):
            raise ValueError(f"market {m!r} is not {what}")
    if len(set(value)) != len(value):
        raise ValueError(f"duplicate markets in {value}")
    return value


def _channels(value: list[str], known: tuple[str, ...], exchange: str) -> list[str]:
    if not value:
        raise ValueError("at least one channel is required")
    bad = [c for c in value if c not in known]
    if bad:
        raise ValueError(f"unknown channel(s) {bad}; {exchange} channels are {', '.join(known)}")
    if len(set(value)) != len(value):
        raise ValueError(f"duplicate channels in {value}")
    return value


def _alias(env: str, name: str) -> Any:
    return AliasChoices(name, env)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        populate_by_name=True,
        case_sensitive=False,
        frozen=True,
    )

    # --- what to subscribe to ------------------------------------------------------
    exchanges: CommaList = Field(
        default=["bitstamp"],
        description="Exchanges to run (comma list of bitstamp, binance, bybit, bitfinex).",
    )
    bitstamp_ws_url: str = Field(
        default="wss://ws.bitstamp.net",
        validation_alias=_alias("BITSTAMP_WS_URL", "bitstamp_ws_url"),
        description="Bitstamp WebSocket API v2 endpoint.",
    )
    bitstamp_rest_url: str = Field(
        default="https://www.bitstamp.net",
        validation_alias=_alias("BITSTAMP_REST_URL", "bitstamp_rest_url"),
        description="Bitstamp REST API base URL.",
    )
    markets: CommaList = Field(
        default=["btcusd", "ethusd"],
        validation_alias=_alias("CONNECTOR_MARKETS", "markets"),
        description="Bitstamp markets, as Bitstamp spells them (comma list).",
    )
    channels: CommaList = Field(
        default=list(BITSTAMP_CHANNELS),
        validation_alias=_alias("CONNECTOR_CHANNELS", "channels"),
        description="Bitstamp public channels (comma list).",
    )
    private_channels: CommaList = Field(
        default=[],
        description="Bitstamp private channels (comma list of my_orders, my_trades, "
        "live_trades, my_settlements, my_liquidations); need bitstamp_api_key, "
        "bitstamp_api_secret and bitstamp_user_id.",
    )
    bitstamp_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=_alias("BITSTAMP_API_KEY", "bitstamp_api_key"),
        description="Bitstamp API key for private channels (secret; or BITSTAMP_API_KEY_FILE).",
    )
    bitstamp_api_secret: SecretStr | None = Field(
        default=None,
        validation_alias=_alias("BITSTAMP_API_SECRET", "bitstamp_api_secret"),
        description="Bitstamp API secret (secret; or BITSTAMP_API_SECRET_FILE).",
    )
    bitstamp_user_id: int | None = Field(
        default=None,
        ge=1,
        validation_alias=_alias("BITSTAMP_USER_ID", "bitstamp_user_id"),
        description="Bitstamp customer id: private channel names end with it (checked "
        "against the id the token endpoint returns).",
    )

    # --- Binance spot ---------------------------------------------------------------
    binance_ws_url: str = Field(
        default="wss://stream.binance.com:9443/stream",
        validation_alias=_alias("BINANCE_WS_URL", "binance_ws_url"),
        description="Binance combined-stream endpoint (…/stream; Binance US: "
        "wss://stream.binance.us:9443/stream, testnet: wss://stream.testnet.binance.vision/stream).",
    )
    binance_rest_url: str = Field(
        default="https://api.binance.com",
        validation_alias=_alias("BINANCE_REST_URL", "binance_rest_url"),
        description="Binance REST base URL (Binance US: https://api.binance.us).",
    )
    binance_markets: CommaList = Field(
        default=["btcusdt", "ethusdt"],
        validation_alias=_alias("BINANCE_MARKETS", "binance_markets"),
        description="Binance symbols (comma list; case-insensitive, topics use lowercase).",
    )
    binance_channels: CommaList = Field(
        default=list(BINANCE_CHANNELS),
        validation_alias=_alias("BINANCE_CHANNELS", "binance_channels"),
        description="Binance streams (comma list of trade, aggTrade, depth, bookTicker).",
    )
    binance_depth_interval_ms: Literal[100, 1000] = Field(
        default=100, description="Binance depth diff interval: 100 (depth@100ms) or 1000 ms."
    )

    # --- Bybit v5 --------------------------------------------------------------------
    bybit_ws_url: str = Field(
        default="wss://stream.bybit.com/v5/public/spot",
        validation_alias=_alias("BYBIT_WS_URL", "bybit_ws_url"),
        description="Bybit v5 public endpoint (…/spot, …/linear, …/inverse; testnet: "
        "wss://stream-testnet.bybit.com/v5/public/spot).",
    )
    bybit_rest_url: str = Field(
        default="https://api.bybit.com",
        validation_alias=_alias("BYBIT_REST_URL", "bybit_rest_url"),
        description="Bybit REST base URL (trade backfill).",
    )
    bybit_markets: CommaList = Field(
        default=["BTCUSDT", "ETHUSDT"],
        validation_alias=_alias("BYBIT_MARKETS", "bybit_markets"),
        description="Bybit symbols (comma list, uppercase as Bybit spells them).",
    )
    bybit_channels: CommaList = Field(
        default=list(BYBIT_CHANNELS),
        validation_alias=_alias("BYBIT_CHANNELS", "bybit_channels"),
        description="Bybit topics (comma list of publicTrade, orderbook).",
    )
    bybit_orderbook_depth: int = Field(
        default=50,
        description=f"Bybit orderbook depth, one of {', '.join(map(str, BYBIT_DEPTHS))}.",
    )

    # --- Bitfinex v2 -----------------------------------------------------------------
    bitfinex_ws_url: str = Field(
        default="wss://api-pub.bitfinex.com/ws/2",
        validation_alias=_alias("BITFINEX_WS_URL", "bitfinex_ws_url"),
        description="Bitfinex public WebSocket v2 endpoint.",
    )
    bitfinex_rest_url: str = Field(
        default="https://api-pub.bitfinex.com",
        validation_alias=_alias("BITFINEX_REST_URL", "bitfinex_rest_url"),
        description="Bitfinex public REST base URL (trade backfill).",
    )
    bitfinex_markets: CommaList = Field(
        default=["tBTCUSD", "tETHUSD"],
        validation_alias=_alias("BITFINEX_MARKETS", "bitfinex_markets"),
        description="Bitfinex trading pairs (comma list, e.g. tBTCUSD).",
    )
    bitfinex_channels: CommaList = Field(
        default=list(BITFINEX_CHANNELS),
        validation_alias=_alias("BITFINEX_CHANNELS", "bitfinex_channels"),
        description="Bitfinex channels (comma list of trades, book).",
    )
    bitfinex_book_length: int = Field(
        default=25,
        description=f"Bitfinex book length, one of {', '.join(map(str, BITFINEX_BOOK_LENGTHS))} "
        "(checksums cover the top 25).",
    )

    # --- Kafka ---------------------------------------------------------------------
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=_alias("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers"),
        description="Kafka bootstrap servers; unset starts the embedded broker.",
    )
    schema_registry_url: str | None = Field(
        default=None,
        validation_alias=_alias("SCHEMA_REGISTRY_URL", "schema_registry_url"),
        description="Confluent-compatible schema registry; unset uses single-object encoding.",
    )
    topic_template: str = Field(
        default="{exchange}.{channel}.{market}",
        validation_alias=_alias("CONNECTOR_TOPIC_TEMPLATE", "topic_template"),
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
        validation_alias=_alias("CONNECTOR_GROUP_ID", "group_id"),
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
        description="Producer library: aiokafka (pure Python, the default and the cheaper in "
        "CPU in the benchmark), or librdkafka (confluent-kafka, the [librdkafka] extra; its "
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
        "own, costs ~14x the CPU for ~15% smaller book batches), zstd 3, gzip 6.",
    )
    kafka_linger_ms: int = Field(
        default=3,
        ge=0,
        le=10_000,
        description="How long the producer waits to fill a batch. 3 ms (Kafka's default is "
        "5): in the benchmark it cut the p99 at 5 000 msg/s by ~2 ms at no CPU cost (batches "
        "fill while the previous request is in flight).",
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

    # --- exchange connection -------------------------------------------------------
    ws_max_size_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=64 * 1024,
        description="Largest WebSocket frame decoded (order books can exceed 1 MiB); a larger "
        "one goes to the dead-letter topic, and one over 4x this closes the connection "
        "(memory bound; a gap, recovered).",
    )
    ws_open_timeout_s: float = Field(
        default=10.0, gt=0, description="Deadline for the WebSocket handshake."
    )
    heartbeat_interval_s: float = Field(
        default=15.0,
        gt=0,
        description="How often the exchange's heartbeat is sent (Bitstamp bts:heartbeat, "
        "Binance LIST_SUBSCRIPTIONS, Bybit and Bitfinex ping).",
    )
    heartbeat_timeout_s: float = Field(
        default=10.0, gt=0, description="No heartbeat reply this long: the connection is dead."
    )
    subscribe_timeout_s: float = Field(
        default=10.0, gt=0, description="No subscription confirmation this long: rejected."
    )
    connection_max_age_s: float = Field(
        default=85 * 86400.0,
        ge=0,
        description="Rotate a connection make-before-break once it is this old (Bitstamp "
        "closes connections after 90 days; Binance's 24 h limit applies by itself); 0 "
        "disables.",
    )
    stale_after_s: dict[str, float] = Field(
        default={
            "live_trades": 0.0,
            "live_orders": 120.0,
            "order_book": 60.0,
            "detail_order_book": 60.0,
            "diff_order_book": 120.0,
            "funding_rate": 300.0,
        },
        description="Per channel: silent this long (with a live heartbeat) means resubscribe "
        "that subscription; 0 disables (trades can be quiet for hours). JSON in the "
        'environment, e.g. {"live_orders": 30}; channels not given keep their default.',
    )
    silence_warning_s: float = Field(
        default=120.0, gt=0, description="Warn when a subscription has sent nothing this long."
    )
    reconnect_backoff_initial_s: float = Field(
        default=0.5, gt=0, description="First reconnect backoff (doubles, full jitter)."
    )
    reconnect_backoff_max_s: float = Field(
        default=30.0, gt=0, description="Cap of the reconnect backoff."
    )
    resubscribe_backoff_s: float = Field(
        default=60.0, gt=0, description="Wait before retrying a subscription the exchange rejected."
    )

    # --- operations ----------------------------------------------------------------
    http_port: int = Field(
        default=9102,
        ge=0,
        le=65535,
        validation_alias=_alias("CONNECTOR_HTTP_PORT", "http_port"),
        description="Port of the /metrics endpoint; 0 disables it.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text, or json: one JSON object per line."
    )
    schema_dir: Path | None = Field(default=None, description="Avro schemas; default schemas/.")

    @field_validator(
        "exchanges",
        "markets",
        "channels",
        "private_channels",
        "binance_markets",
        "binance_channels",
        "bybit_markets",
        "bybit_channels",
        "bitfinex_markets",
        "bitfinex_channels",
        mode="before",
    )
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("log_level", "kafka_security_protocol", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("stale_after_s", mode="before")
    @classmethod
    def _merge_stale(cls, value: Any) -> Any:
        if isinstance(value, dict):
            defaults = cls.model_fields["stale_after_s"].default
            known = {*defaults, *BINANCE_CHANNELS, *BYBIT_CHANNELS, *BITFINEX_CHANNELS}
            unknown = set(value) - known
            if unknown:
                raise ValueError(f"unknown channel(s) {sorted(unknown)}")
            return {**defaults, **value}
        return value

    @field_validator("stale_after_s")
    @classmethod
    def _check_stale(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if v < 0}
        if bad:
            raise ValueError(f"thresholds must be >= 0, got {bad}")
        return value

    @field_validator("exchanges")
    @classmethod
    def _check_exchanges(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one exchange is required")
        bad = [e for e in value if e not in SUPPORTED_EXCHANGES]
        if bad:
            raise ValueError(
                f"unsupported exchange(s) {bad}; supported: {', '.join(SUPPORTED_EXCHANGES)}"
            )
        return value

    @field_validator("markets")
    @classmethod
    def _check_markets(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one market is required")
        for m in value:
            if not _MARKET_RE.match(m):
                raise ValueError(
                    f"market {m!r} is not a Bitstamp market symbol (lowercase letters and "
                    f"digits, e.g. btcusd or btcusd-perp)"
                )
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate markets in {value}")
        return value

    @field_validator("channels")
    @classmethod
    def _check_channels(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one channel is required")
        bad = [c for c in value if c not in BITSTAMP_CHANNELS]
        if bad:
            raise ValueError(
                f"unknown channel(s) {bad}; Bitstamp public channels are "
                f"{', '.join(BITSTAMP_CHANNELS)}"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate channels in {value}")
        return value

    @field_validator("private_channels")
    @classmethod
    def _check_private(cls, value: list[str]) -> list[str]:
        bad = [c for c in value if c not in PRIVATE_CHANNELS]
        if bad:
            raise ValueError(
                f"unknown private channel(s) {bad}; Bitstamp's are {', '.join(PRIVATE_CHANNELS)}"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"duplicate private channels in {value}")
        return value

    @field_validator("binance_markets")
    @classmethod
    def _check_binance_markets(cls, value: list[str]) -> list[str]:
        return _symbols(value, r"^[a-z0-9]+$", "a Binance symbol (e.g. btcusdt)", str.lower)

    @field_validator("bybit_markets")
    @classmethod
    def _check_bybit_markets(cls, value: list[str]) -> list[str]:
        return _symbols(value, r"^[A-Z0-9]+$", "a Bybit symbol (uppercase, e.g. BTCUSDT)")

    @field_validator("bitfinex_markets")
    @classmethod
    def _check_bitfinex_markets(cls, value: list[str]) -> list[str]:
        return _symbols(
            value, r"^t[A-Z0-9:]+$", "a Bitfinex trading pair (t + uppercase, e.g. tBTCUSD)"
        )

    @field_validator("binance_channels")
    @classmethod
    def _check_binance_channels(cls, value: list[str]) -> list[str]:
        return _channels(value, BINANCE_CHANNELS, "Binance")

    @field_validator("bybit_channels")
    @classmethod
    def _check_bybit_channels(cls, value: list[str]) -> list[str]:
        return _channels(value, BYBIT_CHANNELS, "Bybit")

    @field_validator("bitfinex_channels")
    @classmethod
    def _check_bitfinex_channels(cls, value: list[str]) -> list[str]:
        return _channels(value, BITFINEX_CHANNELS, "Bitfinex")

    @field_validator("bybit_orderbook_depth")
    @classmethod
    def _check_bybit_depth(cls, value: int) -> int:
        if value not in BYBIT_DEPTHS:
            raise ValueError(f"{value} is not one of {BYBIT_DEPTHS}")
        return value

    @field_validator("bitfinex_book_length")
    @classmethod
    def _check_bitfinex_length(cls, value: int) -> int:
        if value not in BITFINEX_BOOK_LENGTHS:
            raise ValueError(f"{value} is not one of {BITFINEX_BOOK_LENGTHS}")
        return value

    @field_validator("bitstamp_ws_url", "binance_ws_url", "bybit_ws_url", "bitfinex_ws_url")
    @classmethod
    def _check_ws_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"{value!r} is not a ws:// or wss:// URL")
        return value

    @field_validator(
        "bitstamp_rest_url",
        "binance_rest_url",
        "bybit_rest_url",
        "bitfinex_rest_url",
        "schema_registry_url",
    )
    @classmethod
    def _check_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{redact_url(value)!r} is not an http:// or https:// URL")
        return value.rstrip("/")

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
    def _check_kafka_security(self) -> Settings:
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
                raise ValueError(f"{name} ({env_name(name)}): no file {path}")
        return self

    @model_validator(mode="after")
    def _check_private_credentials(self) -> Settings:
        if self.private_channels and not (
            self.bitstamp_api_key and self.bitstamp_api_secret and self.bitstamp_user_id
        ):
            raise ValueError(
                "private_channels (CONNECTOR_PRIVATE_CHANNELS) need BITSTAMP_API_KEY, "
                "BITSTAMP_API_SECRET and BITSTAMP_USER_ID"
            )
        return self

    @model_validator(mode="after")
    def _check_workers(self) -> Settings:
        if self.workers > 1 and not self.group_id:
            raise ValueError(
                "workers (CONNECTOR_WORKERS) > 1 needs group_id (CONNECTOR_GROUP_ID): the "
                "workers share the subscriptions through the consumer group"
            )
        return self

    @model_validator(mode="after")
    def _check_write_ahead(self) -> Settings:
        if self.spool_write_ahead and self.spool_dir is None:
            raise ValueError(
                "spool_write_ahead (CONNECTOR_SPOOL_WRITE_AHEAD) needs spool_dir "
                "(CONNECTOR_SPOOL_DIR)"
            )
        return self

    @model_validator(mode="after")
    def _check_compression_level(self) -> Settings:
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it wins over the YAML file, which arrives as init kwargs.
        return env_settings, init_settings


def env_name(field: str) -> str:
    info = Settings.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, AliasChoices):
        for choice in info.validation_alias.choices:
            if isinstance(choice, str) and choice.isupper():
                return choice
    return ENV_PREFIX + field.upper()


def known_env_names() -> set[str]:
    return {env_name(f) for f in Settings.model_fields}


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***:***@{host}", parts.path, parts.query, ""))


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid settings ({source}):"]
    for err in exc.errors():
        loc = err.get("loc")
        if not loc:  # a rule across settings: its message names them
            lines.append(f"  - {err.get('msg', 'invalid').removeprefix('Value error, ')}")
            continue
        field = str(loc[0])
        name = env_name(field) if field in Settings.model_fields else field
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "is not a known setting"
            lines.append(f"  - {field}: {msg}")
            continue
        shown = err.get("input")
        if isinstance(shown, str) and field == "schema_registry_url":
            shown = redact_url(shown)
        lines.append(f"  - {field} ({name}): {msg} (got {shown!r:.120})")
    return "\n".join(lines)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Builds and validates the settings; raises ConfigError naming every bad field."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {config_file} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_file} must hold a mapping of settings")
        data.update(loaded)
    data.update(overrides)
    data.update(_secret_files(data))
    source = "environment" + (f" and {config_file}" if config_file else "")
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    if settings.reconnect_backoff_initial_s > settings.reconnect_backoff_max_s:
        raise ConfigError(
            "invalid settings: reconnect_backoff_initial_s "
            "(CONNECTOR_RECONNECT_BACKOFF_INITIAL_S) must not exceed reconnect_backoff_max_s"
        )
    return settings


SECRET_FIELDS = (
    "kafka_sasl_password",
    "kafka_ssl_key_password",
    "schema_registry_url",
    "bitstamp_api_key",
    "bitstamp_api_secret",
)


def _secret_files(data: dict[str, Any]) -> dict[str, str]:
    """Secrets may come from files (Kubernetes secret volumes, Docker secrets):
    ``<ENV NAME>_FILE`` holds the path; the variable itself wins if both are set."""
    out = {}
    for name in SECRET_FIELDS:
        env = env_name(name)
        path = os.environ.get(env + "_FILE")
        if not path or env in os.environ or name in data:
            continue
        try:
            out[name] = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{env}_FILE: cannot read {path}: {exc}") from exc
    return out


def unknown_env_vars(environ: dict[str, str] | None = None) -> list[str]:
    """CONNECTOR_* (and BITSTAMP_*, BINANCE_*, ...) variables that are no setting (likely
    typos); the caller warns."""
    environ = dict(os.environ) if environ is None else environ
    known = {n.upper() for n in known_env_names()}
    known |= {env_name(n).upper() + "_FILE" for n in SECRET_FIELDS}
    prefixes = (ENV_PREFIX, *EXCHANGE_ENV_PREFIXES)
    return sorted(k for k in environ if k.upper().startswith(prefixes) and k.upper() not in known)


def effective(settings: Settings) -> dict[str, Any]:
    """The settings as check-config prints them, with secrets hidden."""
    out: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, str) and name.endswith("_url"):
            value = redact_url(value)
        if isinstance(value, SecretStr):
            value = "***"
        out[name] = value
    out["embedded_broker"] = settings.embedded
    out["idempotent_producer"] = settings.idempotence
    return out


def _default_text(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def settings_markdown() -> str:
    """The README's settings table, generated from the model (``make docs``)."""
    rows = [
        "| setting (YAML key) | environment variable | default | meaning |",
        "|---|---|---|---|",
    ]
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        rows.append(
            f"| `{name}` | `{env_name(name)}` | `{_default_text(default)}` | {info.description} |"
        )
    return "\n".join(rows) + "\n"


README_BEGIN = "<!-- settings:begin (generated by `make docs`) -->"
README_END = "<!-- settings:end -->"
METRICS_BEGIN = "<!-- metrics:begin (generated by `make docs`) -->"
METRICS_END = "<!-- metrics:end -->"


def replace_block(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what lies between the ``begin`` and ``end`` markers replaced."""
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}{end}{tail}"


def readme_with_settings(readme: str) -> str:
    """``readme`` with the generated blocks (settings, metrics) regenerated."""
    from connector.metrics import metrics_markdown

    readme = replace_block(readme, README_BEGIN, README_END, settings_markdown())
    return replace_block(readme, METRICS_BEGIN, METRICS_END, metrics_markdown())
