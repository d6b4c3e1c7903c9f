"""``connector tail``: consume topics matching a pattern and print decoded events as JSON.

Works with both encodings: single-object values are decoded with the local ``schemas/``,
Confluent-framed values through the schema registry (``SCHEMA_REGISTRY_URL``).
Undecodable values are reported on stderr with topic/partition/offset and counted.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
import uuid
from typing import TextIO

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from connector.avro import AvroDecoder, load_schemas
from connector.errors import ConfigError, SchemaError
from connector.kafka_security import client_options
from connector.registry import SchemaRegistryClient
from connector.settings import Settings

log = logging.getLogger(__name__)


async def tail(
    settings: Settings,
    pattern: str,
    *,
    from_beginning: bool = False,
    max_messages: int = 0,
    idle_timeout_s: float = 0.0,
    out: TextIO = sys.stdout,
) -> int:
    if settings.kafka_bootstrap_servers is None:
        raise ConfigError("tail needs KAFKA_BOOTSTRAP_SERVERS (the broker to read from)")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(
            f"TOPIC_PATTERN {pattern!r} is not a valid regular expression: {exc}"
        ) from exc
    decoder = AvroDecoder(load_schemas(settings.schema_dir).values())
    registry = (
        SchemaRegistryClient(settings.schema_registry_url) if settings.schema_registry_url else None
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=f"connector-tail-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        metadata_max_age_ms=5000,
        **client_options(settings),
    )
    consumer.subscribe(pattern=pattern)
    printed = bad = 0
    try:
        await consumer.start()
        last_message = time.monotonic()
        while not max_messages or printed < max_messages:
            batch = await consumer.getmany(timeout_ms=500)
            if not batch:
                if idle_timeout_s and time.monotonic() - last_message > idle_timeout_s:
                    break
                continue
            last_message = time.monotonic()
            for tp, msgs in batch.items():
                for msg in msgs:
                    if max_messages and printed >= max_messages:
                        break
                    value = msg.value or b""
                    try:
                        sid = decoder.schema_id(value)
                        if sid is not None and registry and not decoder.known_id(sid):
                            decoder.add_schema_id(sid, await registry.schema_by_id(sid))
                        schema, record = decoder.decode(value)
                    except (SchemaError, ValueError, EOFError) as exc:
                        bad += 1
                        print(
                            f"undecodable value at {tp.topic}[{tp.partition}]@{msg.offset}: {exc}",
                            file=sys.stderr,
                        )
                        continue
                    line = {
                        "topic": tp.topic,
                        "partition": tp.partition,
                        "offset": msg.offset,
                        "schema": schema,
                        "value": record,
                    }
                    out.write(orjson.dumps(line).decode() + "\n")
                    printed += 1
            out.flush()
    except KafkaError as exc:
        print(f"Kafka error: {exc!r}", file=sys.stderr)
        return 1
    finally:
        await asyncio.wait_for(consumer.stop(), 10)
        if registry:
            await registry.close()
    return 0 if not bad else 3
