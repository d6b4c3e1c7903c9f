"""Scale-out and failover through Kafka's group membership (``CONNECTOR_GROUP_ID``).

Each subscription (exchange, channel, market) maps deterministically to a partition of
the *assignment topic* (``crc32(key) % assignment_partitions``, the same on every
replica). Every replica joins one consumer group on that topic; the partitions Kafka
assigns to a replica are the subscriptions it owns. On a rebalance a replica first gives
up what it lost (unsubscribe, read until the exchange confirms, publish what is held,
wait for Kafka's acks), then takes what it gained: for each, the last record published
(read back from its data topic) starts a gap (reason ``rebalance``), recovered as after
any gap (trades backfilled from there, books resynced) by the new owner. A replica
killed without warning loses its subscriptions after the group's session timeout.

Ownership is recorded on the assignment topic (JSON, key = subscription): ``acquired``
and ``released`` with the replica id and time, for operators and the tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
import zlib
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from connector.avro import AvroDecoder
from connector.bitstamp.protocol import EXCHANGE
from connector.checkpoints import last_records
from connector.metrics import Metrics
from connector.registry import SchemaRegistryClient
from connector.settings import Settings
from connector.sink import KafkaSink
from connector.supervisor import Supervisor

log = logging.getLogger(__name__)

Pair = tuple[str, str]


def subscription_key(channel: str, market: str) -> str:
    return f"{EXCHANGE}:{channel}:{market}"


def partition_of(pair: Pair, partitions: int) -> int:
    return zlib.crc32(subscription_key(*pair).encode()) % partitions


def assignment_topic(settings: Settings) -> str:
    assert settings.group_id is not None
    return settings.assignment_topic or f"{settings.group_id}.assignments"


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, membership: Membership) -> None:
        self._membership = membership

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._membership.revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._membership.assigned({tp.partition for tp in assigned})


class Membership:
    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        client: dict[str, Any],
        supervisor: Supervisor,
        sink: KafkaSink,
        metrics: Metrics,
        topics: dict[Pair, str],
        decoder: AvroDecoder,
        registry: SchemaRegistryClient | None,
    ) -> None:
        self._settings = settings
        self._bootstrap = bootstrap
        self._client = client
        self._supervisor = supervisor
        self._sink = sink
        self._topics = topics  # every configured subscription → its data topic
        self._decoder = decoder
        self._registry = registry
        self.topic = assignment_topic(settings)
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._route = metrics.route(EXCHANGE, "assignments", "")
        self._stopping = False
        self._consumer: AIOKafkaConsumer | None = None
        # The topic's real partition count maps subscriptions (every replica sees the
        # same topic, whatever each one's setting says).
        self.partitions = settings.assignment_partitions
        self.rebalances = 0

    def _pairs_of(self, partitions: set[int]) -> list[Pair]:
        found = self._consumer.partitions_for_topic(self.topic) if self._consumer else None
        if found:
            self.partitions = len(found)
        n = self.partitions
        return [p for p in self._topics if partition_of(p, n) in partitions]

    async def run(self, stop: asyncio.Event) -> None:
        s = self._settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=s.group_id,
            client_id=f"{s.kafka_client_id}-{self.replica}",
            enable_auto_commit=False,
            auto_offset_reset="latest",
            session_timeout_ms=s.group_session_timeout_ms,
            heartbeat_interval_ms=max(300, s.group_session_timeout_ms // 5),
            **self._client,
        )
        consumer.subscribe([self.topic], listener=_Listener(self))
        self._consumer = consumer
        attempt = 0
        while True:
            try:
                await consumer.start()
                break
            except KafkaError as exc:
                attempt += 1
                delay = min(30.0, 0.5 * 2**attempt)
                log.error("group %s: cannot join (%r); retrying in %.0fs", s.group_id, exc, delay)
                await asyncio.sleep(delay)
        self._consumer = consumer
        found = consumer.partitions_for_topic(self.topic)
        if found:
            self.partitions = len(found)
        if self.partitions != s.assignment_partitions:
            log.warning(
                "group %s: %s has %d partitions, not CONNECTOR_ASSIGNMENT_PARTITIONS=%d; "
                "using %d (the topic decides, so all replicas agree)",
                s.group_id,
                self.topic,
                self.partitions,
                s.assignment_partitions,
                self.partitions,
            )
        log.info(
            "group %s: replica %s joined (topic %s, %d partitions)",
            s.group_id,
            self.replica,
            self.topic,
            self.partitions,
        )
        while not stop.is_set():
            try:
                await consumer.getmany(timeout_ms=500)  # drives heartbeats and rebalances
            except KafkaError as exc:
                log.warning("group %s: %r; staying in the group", s.group_id, exc)
                await asyncio.sleep(1)

    async def leave(self) -> None:
        """After the final drain: leaving hands our subscriptions over at once."""
        self._stopping = True
        if self._consumer is not None:
            try:
                await asyncio.wait_for(self._consumer.stop(), 10)
            except (KafkaError, TimeoutError):
                log.warning("group %s: leaving did not complete", self._settings.group_id)
            self._consumer = None

    async def revoked(self, partitions: set[int]) -> None:
        if self._stopping:
            return
        owned = self._supervisor.owned()
        lost = [p for p in self._pairs_of(partitions) if p in owned]
        if not lost:
            return
        log.info("group: giving up %d subscription(s)", len(lost))
        await self._supervisor.release(lost)
        if not await self._sink.flush(self._settings.shutdown_timeout_s):
            log.error("group: records of released subscriptions still unacknowledged")
        await self._record(lost, "released")

    async def assigned(self, partitions: set[int]) -> None:
        if self._stopping:
            return
        self.rebalances += 1
        owned = self._supervisor.owned()
        gained = [p for p in self._pairs_of(partitions) if p not in owned]
        log.info(
            "group: %d partition(s) assigned: %d subscription(s), %d new",
            len(partitions),
            len(self._pairs_of(partitions)),
            len(gained),
        )
        if not gained:
            return
        positions = await last_records(
            self._bootstrap,
            {p: self._topics[p] for p in gained},
            self._decoder,
            self._registry,
            client=self._client,
        )
        log.info(
            "group: taking %d subscription(s) (%d with a published history)",
            len(gained),
            len(positions),
        )
        await self._supervisor.acquire(gained, positions)
        await self._record(gained, "acquired")

    async def _record(self, pairs: list[Pair], event: str) -> None:
        now_us = time.time_ns() // 1000
        for pair in pairs:
            key = subscription_key(*pair)
            value = orjson.dumps(
                {"replica": self.replica, "subscription": key, "event": event, "ts_us": now_us}
            )
            await self._sink.send(self.topic, key.encode(), value, [], self._route, time.time())
