"""Kafka security settings: TLS files become a real SSL context (checked by a TLS
handshake with client certificates against a local server), SASL options, secrets from
files, and secrets never printed."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

from connector.errors import ConfigError
from connector.kafka.security import client_options
from connector.settings import effective, load_settings


def tls_files(tmp_path: Path, ca: trustme.CA, name: str) -> tuple[Path, Path]:
    cert = ca.issue_cert(name)
    certfile, keyfile = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return certfile, keyfile


async def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bytes:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        data = await reader.read()
        writer.close()
        return data
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_settings_make_a_context_that_does_mutual_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client_cert, client_key = tls_files(tmp_path, ca, "connector")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    ca.configure_trust(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # the broker demands a client certificate
    settings = load_settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=ca_file,
        kafka_ssl_certfile=client_cert,
        kafka_ssl_keyfile=client_key,
    )
    options = client_options(settings)
    assert options["security_protocol"] == "SSL"
    assert await handshake(server_ctx, options["ssl_context"]) == b"hello"

    # Another CA: the broker's certificate is not trusted.
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    untrusting = client_options(
        load_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=other)
    )["ssl_context"]
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(server_ctx, untrusting)


def test_unreadable_tls_material_is_a_configuration_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="CONNECTOR_KAFKA_SSL"):
        client_options(load_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=bad))
    with pytest.raises(ConfigError, match="no file"):
        load_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="go together"):
        load_settings(kafka_security_protocol="SSL", kafka_ssl_certfile=bad)
    with pytest.raises(ConfigError, match="use SSL or SASL_SSL"):
        load_settings(kafka_ssl_cafile=bad)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_options(mechanism: str) -> None:
    settings = load_settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="connector",
        kafka_sasl_password="s3cret",
    )
    assert client_options(settings) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "connector",
        "sasl_plain_password": "s3cret",
    }
    assert "s3cret" not in str(effective(settings)) and "s3cret" not in repr(settings)


def test_sasl_without_credentials_names_the_missing_settings() -> None:
    with pytest.raises(ConfigError, match="CONNECTOR_KAFKA_SASL_PASSWORD"):
        load_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u")


def test_a_secret_may_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("CONNECTOR_KAFKA_SASL_PASSWORD_FILE", str(secret))
    settings = load_settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="u")
    assert client_options(settings)["sasl_plain_password"] == "from-a-file"
    monkeypatch.setenv("CONNECTOR_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="CONNECTOR_KAFKA_SASL_PASSWORD_FILE"):
        load_settings()
