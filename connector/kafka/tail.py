"""``connector tail`` and ``connector book``: read the connector's topics back.

``tail`` consumes topics matching a pattern and prints decoded events as JSON lines;
``book`` rebuilds one book topic by the consumer contract and prints its top.

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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from connector.consumer import BOOK_SCHEMAS, BookBuilder
from connector.encoding.avro import AvroDecoder, load_schemas
from connector.encoding.registry import SchemaRegistryClient
from connector.errors import ConfigError, SchemaError
from connector.kafka.security import client_options
from connector.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class _Decoded:
    topic: str
    partition: int
    offset: int
    schema: str
    value: dict[str, Any]


class _Reader:
    """Topics matching a pattern, decoded (either encoding), until idle or stopped.
    Undecodable values are reported on stderr with where they are, and counted."""

    def __init__(self, settings: Settings, pattern: str, *, from_beginning: bool) -> None:
        if settings.kafka_bootstrap_servers is None:
            raise ConfigError(
                "reading topics needs KAFKA_BOOTSTRAP_SERVERS (the broker to read from)"
            )
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                f"TOPIC_PATTERN {pattern!r} is not a valid regular expression: {exc}"
            ) from exc
        self.decoder = AvroDecoder(load_schemas(settings.schema_dir).values())
        self.registry = (
            SchemaRegistryClient(settings.schema_registry_url)
            if settings.schema_registry_url
            else None
        )
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            group_id=f"connector-tail-{uuid.uuid4().hex[:8]}",
            auto_offset_reset="earliest" if from_beginning else "latest",
            enable_auto_commit=False,
            metadata_max_age_ms=5000,
            **client_options(settings),
        )
        self.consumer.subscribe(pattern=pattern)
        self.bad = 0

    async def batches(self, idle_timeout_s: float) -> AsyncIterator[list[_Decoded]]:
        """Each fetch's decoded records; ends after ``idle_timeout_s`` without any (0:
        never)."""
        await self.consumer.start()
        last_message = time.monotonic()
        while True:
            batch = await self.consumer.getmany(timeout_ms=500)
            if not batch:
                if idle_timeout_s and time.monotonic() - last_message > idle_timeout_s:
                    return
                continue
            last_message = time.monotonic()
            out = []
            for tp, msgs in batch.items():
                for msg in msgs:
                    decoded = await self._decode(tp.topic, tp.partition, msg.offset, msg.value)
                    if decoded is not None:
                        out.append(decoded)
            yield out

    async def _decode(
        self, topic: str, partition: int, offset: int, value: bytes | None
    ) -> _Decoded | None:
        value = value or b""
        try:
            sid = self.decoder.schema_id(value)
            if sid is not None and self.registry and not self.decoder.known_id(sid):
                self.decoder.add_schema_id(sid, await self.registry.schema_by_id(sid))
            schema, record = self.decoder.decode(value)
        except (SchemaError, ValueError, EOFError) as exc:
            self.bad += 1
            print(f"undecodable value at {topic}[{partition}]@{offset}: {exc}", file=sys.stderr)
            return None
        return _Decoded(topic, partition, offset, schema, record)

    async def close(self) -> None:
        await asyncio.wait_for(self.consumer.stop(), 10)
        if self.registry:
            await self.registry.close()


async def tail(
    settings: Settings,
    pattern: str,
    *,
    from_beginning: bool = False,
    max_messages: int = 0,
    idle_timeout_s: float = 0.0,
    out: TextIO = sys.stdout,
) -> int:
    reader = _Reader(settings, pattern, from_beginning=from_beginning)
    printed = 0
    try:
        async for batch in reader.batches(idle_timeout_s):
            for d in batch:
                if max_messages and printed >= max_messages:
                    break
                line = {
                    "topic": d.topic,
                    "partition": d.partition,
                    "offset": d.offset,
                    "schema": d.schema,
                    "value": d.value,
                }
                out.write(orjson.dumps(line).decode() + "\n")
                printed += 1
            out.flush()
            if max_messages and printed >= max_messages:
                break
    except KafkaError as exc:
        print(f"Kafka error: {exc!r}", file=sys.stderr)
        return 1
    finally:
        await reader.close()
    return 0 if not reader.bad else 3


async def book(
    settings: Settings,
    topic: str,
    *,
    depth: int = 10,
    once: bool = False,
    idle_timeout_s: float = 3.0,
    out: TextIO = sys.stdout,
) -> int:
    """``connector book TOPIC``: the book rebuilt from a book topic by the consumer
    contract (``connector.consumer.BookBuilder``), read from its beginning. Live: a line
    with the top of book whenever it changes. ``once``: read to the end (nothing new for
    ``idle_timeout_s``), print the top ``depth`` levels as one JSON object, and exit (4 if
    no full book was seen)."""
    reader = _Reader(settings, f"^{re.escape(topic)}$", from_beginning=True)
    builder = BookBuilder()
    try:
        async for batch in reader.batches(idle_timeout_s if once else 0.0):
            changed = False
            for d in batch:
                if d.schema not in BOOK_SCHEMAS:
                    raise ConfigError(f"{topic} holds {d.schema} records, not a book")
                changed |= builder.apply(d.value, d.schema)
            if changed and not once and builder.ready:
                bids, asks = builder.top(1)
                bid = f"{bids[0][0]} x {bids[0][1]}" if bids else "-"
                ask = f"{asks[0][0]} x {asks[0][1]}" if asks else "-"
                out.write(
                    f"{topic}  bid {bid}  |  ask {ask}  "
                    f"({len(builder.bids)} bids, {len(builder.asks)} asks)\n"
                )
                out.flush()
    except KafkaError as exc:
        print(f"Kafka error: {exc!r}", file=sys.stderr)
        return 1
    finally:
        await reader.close()
    bids, asks = builder.top(depth)
    out.write(
        orjson.dumps(
            {
                "topic": topic,
                "ready": builder.ready,
                "bids": bids,
                "asks": asks,
                "levels": [len(builder.bids), len(builder.asks)],
                "applied": builder.applied,
                "skipped": builder.skipped,
            }
        ).decode()
        + "\n"
    )
    if not builder.ready:
        print(f"no full book (resync) in {topic} yet", file=sys.stderr)
        return 4
    return 0 if not reader.bad else 3
