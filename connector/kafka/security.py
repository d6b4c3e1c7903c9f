"""Kafka client security options (TLS, SASL PLAIN / SCRAM) from the settings, shared by
the producer, the admin client (topic creation) and the consumers (checkpoints, tail)."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from connector.errors import ConfigError
from connector.settings import Settings


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol.endswith("SSL"):
        password = settings.kafka_ssl_key_password
        try:
            context = create_ssl_context(
                cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
                certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
                keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
                password=password.get_secret_value() if password else None,
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"Kafka TLS files (CONNECTOR_KAFKA_SSL_*) cannot be loaded: {exc}"
            ) from exc
        context.check_hostname = settings.kafka_ssl_check_hostname
        options["ssl_context"] = context
    if protocol.startswith("SASL"):
        assert settings.kafka_sasl_password is not None  # validated with the settings
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options
