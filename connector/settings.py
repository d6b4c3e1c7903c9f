"""The connector's one typed settings object: YAML file (``--config``) + environment.

The environment wins over the file. Interface names kept stable for deployments:
``BITSTAMP_WS_URL``, ``BITSTAMP_REST_URL``, ``CONNECTOR_MARKETS``, ``CONNECTOR_CHANNELS``,
``KAFKA_BOOTSTRAP_SERVERS``, ``SCHEMA_REGISTRY_URL``, ``CONNECTOR_TOPIC_TEMPLATE``,
``CONNECTOR_HTTP_PORT``; every other setting is ``CONNECTOR_<FIELD NAME>``. In a YAML file
every setting is spelled by its field name (``markets: [btcusd]``).

``Settings`` joins the fields each part owns: the exchanges' (``connector/exchanges/<name>/
settings.py``, ``<NAME>_*``, listed by the registry), the delivery side's
(``connector.kafka.settings``), and the connection and operations fields below.

``load_settings`` validates everything at start and raises ``ConfigError`` whose message
names each bad setting by field and environment name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from connector import fields
from connector.errors import ConfigError
from connector.exchanges.registry import EXCHANGES
from connector.fields import ENV_PREFIX, CommaList, redact_url
from connector.kafka.settings import COMPRESSION_LEVELS, KafkaSettings

__all__ = ["COMPRESSION_LEVELS", "ENV_PREFIX", "Settings", "load_settings", "redact_url"]

SUPPORTED_EXCHANGES = tuple(EXCHANGES)
EXCHANGE_ENV_PREFIXES = tuple(spec.env_prefix for spec in EXCHANGES.values())
# Every environment variable the connector reads starts with one of these.
INTERFACE_ENV_PREFIXES = (ENV_PREFIX, *EXCHANGE_ENV_PREFIXES, "KAFKA_", "SCHEMA_REGISTRY")
_EXCHANGE_PARTS: tuple[type[BaseModel], ...] = tuple(s.settings for s in EXCHANGES.values())
_ALL_CHANNELS = {c for spec in EXCHANGES.values() for c in spec.channels}


class Settings(BaseSettings, KafkaSettings, *_EXCHANGE_PARTS):  # type: ignore[misc]
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
        description="Exchanges to run (comma list of "
        + ", ".join(EXCHANGES)
        + "; each one's settings are below, under its name).",
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
        validation_alias=fields.alias("CONNECTOR_HTTP_PORT", "http_port"),
        description="Port of the /metrics endpoint; 0 disables it.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text, or json: one JSON object per line."
    )
    schema_dir: Path | None = Field(default=None, description="Avro schemas; default schemas/.")

    _split = field_validator("exchanges", mode="before")(fields.split)
    _upper = field_validator("log_level", mode="before")(fields.upper)

    @field_validator("stale_after_s", mode="before")
    @classmethod
    def _merge_stale(cls, value: Any) -> Any:
        if isinstance(value, dict):
            defaults = cls.model_fields["stale_after_s"].default
            unknown = set(value) - {*defaults, *_ALL_CHANNELS}
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
    *(name for spec in EXCHANGES.values() for name in spec.secret_fields),
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


def _groups() -> list[tuple[str, list[str]]]:
    """The settings by the part that owns them, in the order docs/settings.md shows."""
    kafka = list(KafkaSettings.model_fields)
    per_exchange = [
        (
            f"{spec.name.capitalize()} (`connector/exchanges/{spec.name}/settings.py`)",
            list(spec.settings.model_fields),
        )
        for spec in EXCHANGES.values()
    ]
    owned = {*kafka, *(n for _, names in per_exchange for n in names)}
    general = [n for n in Settings.model_fields if n not in owned]
    return [
        ("The connections and operations", general),
        ("Kafka, topics, scale-out and the spool (`connector/kafka/settings.py`)", kafka),
        *per_exchange,
    ]


def settings_markdown() -> str:
    """docs/settings.md's tables, generated from the model (``make docs``)."""
    out = []
    for title, names in _groups():
        out += [
            f"## {title}",
            "",
            "| setting (YAML key) | environment variable | default | meaning |",
            "|---|---|---|---|",
        ]
        for name in names:
            info = Settings.model_fields[name]
            default = _default_text(info.get_default(call_default_factory=True))
            out.append(f"| `{name}` | `{env_name(name)}` | `{default}` | {info.description} |")
        out.append("")
    return "\n".join(out)


SETTINGS_BEGIN = "<!-- settings:begin (generated by `make docs`) -->"
SETTINGS_END = "<!-- settings:end -->"
METRICS_BEGIN = "<!-- metrics:begin (generated by `make docs`) -->"
METRICS_END = "<!-- metrics:end -->"
# The documents holding generated blocks (relative to the repository).
GENERATED_DOCS = ("docs/settings.md", "docs/operations.md")


def replace_block(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what lies between the ``begin`` and ``end`` markers replaced."""
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}{end}{tail}"


def with_generated_blocks(text: str) -> str:
    """``text`` with the generated blocks it holds (settings, metrics) regenerated."""
    from connector.metrics import metrics_markdown

    if SETTINGS_BEGIN in text:
        text = replace_block(text, SETTINGS_BEGIN, SETTINGS_END, settings_markdown())
    if METRICS_BEGIN in text:
        text = replace_block(text, METRICS_BEGIN, METRICS_END, metrics_markdown())
    return text
