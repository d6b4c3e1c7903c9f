"""Settings: interface env names, YAML with env precedence, errors that name the field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from connector.errors import ConfigError
from connector.settings import (
    INTERFACE_ENV_PREFIXES,
    effective,
    env_name,
    load_settings,
    unknown_env_vars,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(INTERFACE_ENV_PREFIXES):
            monkeypatch.delenv(k)


def test_defaults() -> None:
    s = load_settings()
    assert s.bitstamp_ws_url == "wss://ws.bitstamp.net"
    assert s.bitstamp_rest_url == "https://www.bitstamp.net"
    assert s.topic_template == "{exchange}.{channel}.{market}"
    assert s.http_port == 9102
    assert len(s.channels) == 6
    assert s.embedded and s.idempotence is False  # embedded broker: no idempotence
    assert s.kafka_compression == "lz4"
    assert s.compression_level == 1  # lz4's fast mode, not aiokafka's 9


def test_interface_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "BITSTAMP_WS_URL": "ws://127.0.0.1:1",
        "BITSTAMP_REST_URL": "http://127.0.0.1:2/",
        "CONNECTOR_MARKETS": "btcusd, ethusd ,btcusd-perp",
        "CONNECTOR_CHANNELS": "live_trades,diff_order_book",
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9093",
        "SCHEMA_REGISTRY_URL": "http://registry:8081",
        "CONNECTOR_TOPIC_TEMPLATE": "md.{exchange}.{channel}.{market}",
        "CONNECTOR_HTTP_PORT": "9200",
        "CONNECTOR_KAFKA_LINGER_MS": "20",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert s.bitstamp_ws_url == "ws://127.0.0.1:1"
    assert s.bitstamp_rest_url == "http://127.0.0.1:2"
    assert s.markets == ["btcusd", "ethusd", "btcusd-perp"]
    assert s.channels == ["live_trades", "diff_order_book"]
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9093"
    assert s.schema_registry_url == "http://registry:8081"
    assert s.topic_template == "md.{exchange}.{channel}.{market}"
    assert s.http_port == 9200
    assert s.kafka_linger_ms == 20
    assert not s.embedded and s.idempotence is True  # real Kafka: idempotent by default


def test_yaml_file_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("markets: [xrpusd]\nchannels: [live_orders]\nkafka_linger_ms: 50\n")
    s = load_settings(cfg)
    assert (s.markets, s.channels, s.kafka_linger_ms) == (["xrpusd"], ["live_orders"], 50)
    monkeypatch.setenv("CONNECTOR_MARKETS", "solusd")
    s = load_settings(cfg)
    assert s.markets == ["solusd"] and s.kafka_linger_ms == 50


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CONNECTOR_CHANNELS": "live_trades,bogus"}, "channels (CONNECTOR_CHANNELS): "),
        ({"CONNECTOR_CHANNELS": "live_trades,bogus"}, "unknown channel(s) ['bogus']"),
        ({"CONNECTOR_MARKETS": "BTCUSD"}, "markets (CONNECTOR_MARKETS)"),
        ({"CONNECTOR_MARKETS": ""}, "at least one market"),
        ({"BITSTAMP_WS_URL": "http://x"}, "bitstamp_ws_url (BITSTAMP_WS_URL)"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "nohostport"}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"CONNECTOR_TOPIC_TEMPLATE": "{exchange}.{foo}"}, "unknown placeholder(s) ['foo']"),
        ({"CONNECTOR_TOPIC_TEMPLATE": "a/{channel}/{market}"}, "invalid Kafka topic name"),
        ({"CONNECTOR_HTTP_PORT": "70000"}, "http_port (CONNECTOR_HTTP_PORT)"),
        ({"CONNECTOR_KAFKA_COMPRESSION": "brotli"}, "kafka_compression"),
        ({"CONNECTOR_KAFKA_COMPRESSION_LEVEL": "13"}, "13 is outside lz4's 1-12"),
        (
            {"CONNECTOR_KAFKA_COMPRESSION": "snappy", "CONNECTOR_KAFKA_COMPRESSION_LEVEL": "3"},
            "does not apply to kafka_compression 'snappy'",
        ),
        (
            {
                "CONNECTOR_KAFKA_CLIENT": "librdkafka",
                "CONNECTOR_KAFKA_COMPRESSION": "zstd",
                "CONNECTOR_KAFKA_COMPRESSION_LEVEL": "19",
            },
            "librdkafka (CONNECTOR_KAFKA_CLIENT=librdkafka) accepts at most 12",
        ),
        ({"CONNECTOR_EXCHANGES": "bitstamp,kraken"}, "unsupported exchange(s) ['kraken']"),
    ],
)
def test_bad_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert message in str(info.value)


def test_yaml_unknown_key_and_bad_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("marketz: [btcusd]\n")
    with pytest.raises(ConfigError, match="marketz: is not a known setting"):
        load_settings(cfg)
    cfg.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yaml")


def test_env_names_and_typo_detection() -> None:
    assert env_name("markets") == "CONNECTOR_MARKETS"
    assert env_name("kafka_bootstrap_servers") == "KAFKA_BOOTSTRAP_SERVERS"
    assert env_name("kafka_linger_ms") == "CONNECTOR_KAFKA_LINGER_MS"
    assert unknown_env_vars({"CONNECTOR_MARKET": "x", "CONNECTOR_MARKETS": "y"}) == [
        "CONNECTOR_MARKET"
    ]


def test_effective_settings_hide_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", "https://user:s3cret@registry.example:8081")
    out = effective(load_settings())
    assert "s3cret" not in orjson.dumps(out).decode()
    assert out["schema_registry_url"] == "https://***:***@registry.example:8081"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONNECTOR_", "BITSTAMP_", "KAFKA_", "SCHEMA_REGISTRY"))
    }
    return subprocess.run(
        [sys.executable, "-m", "connector.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_bad_config_exits_2_with_the_field_named() -> None:
    r = _cli("run", env={"CONNECTOR_CHANNELS": "live_trades,trades"})
    assert r.returncode == 2
    assert "channels (CONNECTOR_CHANNELS)" in r.stderr
    assert "unknown channel(s) ['trades']" in r.stderr


def test_cli_check_config_prints_effective_settings_without_secrets() -> None:
    r = _cli(
        "check-config",
        env={
            "CONNECTOR_MARKETS": "ethusd",
            "SCHEMA_REGISTRY_URL": "http://u:topsecret@r:8081",
            "CONNECTOR_MARKET": "typo",
        },
    )
    assert r.returncode == 0, r.stderr
    out = orjson.loads(r.stdout)
    assert out["markets"] == ["ethusd"]
    assert "topsecret" not in r.stdout + r.stderr
    assert "CONNECTOR_MARKET is not a setting" in r.stderr


def test_the_docs_document_every_setting() -> None:
    from connector.settings import GENERATED_DOCS, Settings, with_generated_blocks

    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "settings.md").read_text()
    for name, info in Settings.model_fields.items():
        assert info.description, f"setting {name} has no description"
        assert f"| `{name}` | `{env_name(name)}` |" in doc, f"docs/settings.md lacks {name}"
    for path in GENERATED_DOCS:
        text = (root / path).read_text()
        assert with_generated_blocks(text) == text, f"{path} is stale: make docs"


def test_write_ahead_needs_a_spool_directory() -> None:
    r = _cli("check-config", env={"CONNECTOR_SPOOL_WRITE_AHEAD": "true"})
    assert r.returncode == 2
    assert "CONNECTOR_SPOOL_WRITE_AHEAD" in r.stderr and "CONNECTOR_SPOOL_DIR" in r.stderr
