"""The producer the settings choose: aiokafka (``AioProducer``, the default) or
librdkafka (``CONNECTOR_KAFKA_CLIENT=librdkafka``, the ``librdkafka`` extra), both acks=all
with the same partitioner, so a key lands on the same partition either way."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer

from connector.errors import ConfigError
from connector.kafka import produce_wire
from connector.kafka.aio import AioProducer, KeyPartitioner, use_compression_level
from connector.kafka.security import client_options

if TYPE_CHECKING:
    from connector.kafka.rdkafka import RdKafkaProducer
    from connector.settings import Settings


def new_producer(settings: Settings, bootstrap_servers: str) -> AioProducer | RdKafkaProducer:
    if settings.kafka_client == "librdkafka":
        from connector.kafka.rdkafka import RdKafkaProducer, rdkafka_config

        try:
            config = rdkafka_config(settings, bootstrap_servers, client_options(settings))
            return RdKafkaProducer(config, settings.kafka_request_timeout_ms / 1000)
        except ImportError as exc:
            raise ConfigError(
                "CONNECTOR_KAFKA_CLIENT=librdkafka needs confluent-kafka: "
                "pip install 'exchange-kafka-connector[librdkafka]'"
            ) from exc
    else:
        use_compression_level(settings.kafka_compression, settings.compression_level)
        produce_wire.install()
        partitioner = KeyPartitioner()
        max_request_size = max(settings.kafka_max_batch_bytes, settings.ws_max_size_bytes)
        client = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=settings.kafka_client_id,
            acks="all",
            enable_idempotence=settings.idempotence,
            compression_type=None
            if settings.kafka_compression == "none"
            else settings.kafka_compression,
            linger_ms=0,  # AioProducer lingers, for all partitions at once
            max_batch_size=settings.kafka_max_batch_bytes,
            max_request_size=max_request_size,
            request_timeout_ms=settings.kafka_request_timeout_ms,
            partitioner=partitioner,
            **client_options(settings),
        )
        linger_s = settings.kafka_linger_ms / 1000
        return AioProducer(client, partitioner, max_request_size, linger_s)
