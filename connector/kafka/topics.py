"""Creates missing topics at start with the configured partitions and replication; reads
partitions to their end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from connector.errors import DeliveryError

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36
AUTO_REPLICATION = -1

# Creates the topics given that do not exist; returns the names created.
TopicCreator = Callable[[list[str]], Awaitable[list[str]]]


async def ensure_topics(
    bootstrap_servers: str,
    topics: list[str],
    partitions: int,
    replication_factor: int,
    *,
    timeout_s: float = 30.0,
    client: dict[str, Any] | None = None,
) -> list[str]:
    """Creates the topics that do not exist; returns the names created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=int(timeout_s * 1000),
        **(client or {}),
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        existing = set(await asyncio.wait_for(admin.list_topics(), timeout_s))
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if not missing:
            return []
        if replication_factor == AUTO_REPLICATION:
            # aiokafka speaks CreateTopics v0-v3, where "-1 = broker default" (KIP-464, v4)
            # is not available: choose min(3, brokers) ourselves.
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
            replication_factor = max(1, min(3, len(cluster.get("brokers") or [])))
            log.info(
                "replication factor for new topics: %d (auto: min(3, brokers))", replication_factor
            )
        response = await asyncio.wait_for(
            admin.create_topics([NewTopic(t, partitions, replication_factor) for t in missing]),
            timeout_s,
        )
    except (KafkaError, OSError, TimeoutError) as exc:
        raise DeliveryError(
            f"cannot create topics on {bootstrap_servers}: {exc!r}", retriable=True
        ) from exc
    finally:
        try:
            await asyncio.wait_for(admin.close(), 5)
        except (KafkaError, OSError, TimeoutError):
            log.debug("admin client close failed", exc_info=True)
    created = []
    for name, code, message in (e[:3] for e in response.topic_errors):
        if code == 0:
            created.append(name)
        elif code != _TOPIC_ALREADY_EXISTS:
            raise DeliveryError(
                f"cannot create topic {name!r}: error {code} {message}", retriable=False
            )
    if created:
        log.info("created %d topic(s): %s", len(created), ", ".join(created))
    return created


async def recreate_topics(
    topics: list[str], creator: TopicCreator | None, timeout_s: float
) -> list[str] | None:
    """Topics that disappeared (a broker restarted without persistence, an operator
    deleted them) made again, logged; None if that failed (the caller retries)."""
    if creator is None:
        log.error(
            "topic(s) %s unknown to Kafka and topic creation is off "
            "(CONNECTOR_CREATE_TOPICS=false): retrying until they exist",
            ", ".join(topics),
        )
        return []
    try:
        created = await asyncio.wait_for(creator(topics), timeout_s)
    except (DeliveryError, TimeoutError) as exc:
        log.error("cannot recreate topic(s) %s: %s; retrying", ", ".join(topics), exc)
        return None
    if created:
        log.warning(
            "topic(s) %s had disappeared (a broker restarted without persistence, or "
            "deleted): recreated; records resend in order",
            ", ".join(created),
        )
    return created


async def read_to_end(
    consumer: AIOKafkaConsumer, starts: dict[TopicPartition, int]
) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
    """Every record of the assigned partitions ``starts`` from the offset given to where a
    fetch says the partition ends (its high watermark). A partition's listed end
    (``end_offsets``) is not that: Tansu lists the start of its last batch, so a reader
    stopping there misses the rest of that batch. The caller bounds the time."""
    out: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {tp: [] for tp in starts}
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    pending = set(starts)
    while pending:
        batch = await consumer.getmany(*pending, timeout_ms=500)
        for tp, msgs in batch.items():
            out[tp].extend(msgs)
        for tp in list(pending):
            end = consumer.highwater(tp)
            if end is not None and await consumer.position(tp) >= end:
                pending.discard(tp)
    return out
