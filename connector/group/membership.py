"""Scale-out and failover through Kafka's group membership (``CONNECTOR_GROUP_ID``).

Each subscription (exchange, channel, market) maps deterministically to a partition of
the *assignment topic* (``crc32(key) % partitions``, the same on every replica). Every
replica joins one consumer group on that topic; the partitions Kafka assigns to a
replica are the subscriptions it owns. The assignment is sticky (``connector.group.sticky``):
a join or a leave moves only what must move, and a subscription that stays is not
touched (no resubscribe, no gap). When one moves, the replica losing it unsubscribes,
reads until the exchange confirms, publishes what is held, waits for Kafka's acks and
records the release; the replica gaining it waits for that release (bounded) if the old
holder is still in the group, then starts from the last record published (read back
from the data topic): a gap (reason ``rebalance``) recovered as after any gap (trades
backfilled from there, books resynced). A replica killed without warning is out of the
group after the session timeout; its subscriptions are taken at once.

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
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import KafkaError

from connector.encoding.avro import AvroDecoder
from connector.encoding.registry import SchemaRegistryClient
from connector.group.sticky import Member, assign
from connector.kafka.checkpoints import last_records
from connector.kafka.sink import KafkaSink
from connector.kafka.topics import read_to_end
from connector.metrics import Metrics
from connector.settings import Settings
from connector.stream.supervisor import Fleet

log = logging.getLogger(__name__)

Pair = tuple[str, str, str]  # (exchange, channel, market)


def subscription_key(exchange: str, channel: str, market: str) -> str:
    return f"{exchange}:{channel}:{market}"


def partition_of(pair: Pair, partitions: int) -> int:
    return zlib.crc32(subscription_key(*pair).encode()) % partitions


def assignment_topic(settings: Settings) -> str:
    assert settings.group_id is not None
    return settings.assignment_topic or f"{settings.group_id}.assignments"


def _assignor(membership: Membership) -> type[AbstractPartitionAssignor]:
    """The sticky assignor, bound to this replica (aiokafka assignors are classes)."""

    class StickyAssignor(AbstractPartitionAssignor):  # type: ignore[misc]  # untyped base
        name = "connector-sticky"
        version = 0

        @classmethod
        def metadata(cls, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
            data = {"replica": membership.replica, "held": sorted(membership.assigned_now)}
            return ConsumerProtocolMemberMetadata(cls.version, list(topics), orjson.dumps(data))

        @classmethod
        def assign(
            cls, cluster: Any, members: Mapping[str, ConsumerProtocolMemberMetadata]
        ) -> dict[str, ConsumerProtocolMemberAssignment]:
            topic = membership.topic
            partitions = sorted(cluster.partitions_for_topic(topic) or ())
            group = {}
            for member_id, meta in members.items():
                try:
                    data = orjson.loads(meta.user_data)
                    group[member_id] = Member(str(data["replica"]), frozenset(data["held"]))
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    group[member_id] = Member(member_id)  # a member we cannot read: fresh
            return {
                member_id: ConsumerProtocolMemberAssignment(
                    cls.version,
                    [(topic, a.partitions)],
                    orjson.dumps({"previous": {str(p): r for p, r in a.previous.items()}}),
                )
                for member_id, a in assign(partitions, group).items()
            }

        @classmethod
        def on_assignment(cls, assignment: ConsumerProtocolMemberAssignment) -> None:
            try:
                data = orjson.loads(assignment.user_data or b"{}")
                previous = {int(p): str(r) for p, r in data.get("previous", {}).items()}
            except (orjson.JSONDecodeError, AttributeError, ValueError):
                previous = {}
            membership.previous = previous

    return StickyAssignor


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
        supervisor: Fleet,
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
        self._route = metrics.route("group", "assignments", "")
        self._stopping = False
        self._consumer: AIOKafkaConsumer | None = None
        # The topic's real partition count maps subscriptions (every replica sees the
        # same topic, whatever each one's setting says).
        self.partitions = settings.assignment_partitions
        self.assigned_now: set[int] = set()  # reported when rejoining (stickiness)
        self.previous: dict[int, str] = {}  # moved partition → its live previous holder
        self._generation = 0
        self._reconcile_wanted = asyncio.Event()
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
            partition_assignment_strategy=(_assignor(self),),
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
        reconcile = asyncio.create_task(self._reconcile_loop(), name="group-reconcile")
        try:
            while not stop.is_set():
                if reconcile.done():  # a failure there must not go unnoticed
                    reconcile.result()
                try:
                    await consumer.getmany(timeout_ms=500)  # drives heartbeats and rebalances
                except KafkaError as exc:
                    log.warning("group %s: %r; staying in the group", s.group_id, exc)
                    await asyncio.sleep(1)
        finally:
            reconcile.cancel()
            await asyncio.gather(reconcile, return_exceptions=True)

    async def leave(self) -> None:
        """After the final drain: records the release, then leaves the group, which hands
        our subscriptions over at once."""
        self._stopping = True
        owned = sorted(self._supervisor.owned())
        if owned:
            await self._record(owned, "released")
            await self._sink.flush(5.0)
        if self._consumer is not None:
            try:
                await asyncio.wait_for(self._consumer.stop(), 10)
            except (KafkaError, TimeoutError):
                log.warning("group %s: leaving did not complete", self._settings.group_id)
            self._consumer = None

    async def revoked(self, partitions: set[int]) -> None:
        """Eager rebalancing takes everything first: keep running until the new
        assignment says what really moves (the sticky assignor keeps most)."""
        self._generation += 1  # a reconcile still waiting is for an old assignment

    async def assigned(self, partitions: set[int]) -> None:
        """Returns at once (a listener that blocks stops the heartbeats and gets the
        replica thrown out of the group); the reconcile task does the work."""
        self._generation += 1
        self.rebalances += 1
        self.assigned_now = set(partitions)
        self._reconcile_wanted.set()

    async def _reconcile_loop(self) -> None:
        """Makes what this replica runs match its latest assignment: first gives up what
        it lost, then takes what it gained (after its live holder released it)."""
        while True:
            await self._reconcile_wanted.wait()
            self._reconcile_wanted.clear()
            if self._stopping:
                return
            generation = self._generation
            mine = set(self._pairs_of(self.assigned_now))
            owned = self._supervisor.owned()
            lost = sorted(p for p in owned if p not in mine)
            if lost:
                log.info("group: giving up %d subscription(s)", len(lost))
                await self._supervisor.release(lost)
                if not await self._sink.flush(self._settings.shutdown_timeout_s):
                    log.error("group: records of released subscriptions still unacknowledged")
                await self._record(lost, "released")
            gained = sorted(p for p in mine if p not in owned)
            log.info(
                "group: %d partition(s) assigned: %d subscription(s), %d new",
                len(self.assigned_now),
                len(mine),
                len(gained),
            )
            if not gained or not await self._await_releases(gained, generation):
                continue  # nothing to take, or the assignment changed meanwhile
            positions = await last_records(
                self._bootstrap,
                {p: self._topics[p] for p in gained},
                self._decoder,
                self._registry,
                client=self._client,
            )
            if generation != self._generation or self._stopping:
                self._reconcile_wanted.set()
                continue
            log.info(
                "group: taking %d subscription(s) (%d with a published history)",
                len(gained),
                len(positions),
            )
            await self._supervisor.acquire(gained, positions)
            await self._record(gained, "acquired")

    async def _await_releases(self, gained: list[Pair], generation: int) -> bool:
        """Subscriptions whose holder is still in the group: wait (bounded) until it has
        released them, so no two live replicas publish the same subscription. False if
        the assignment changed meanwhile (the loop starts over)."""
        n = self.partitions
        waiting = {
            subscription_key(*p): self.previous[partition_of(p, n)]
            for p in gained
            if partition_of(p, n) in self.previous
        }
        if not waiting:
            return True
        bound = self._settings.unsubscribe_timeout_s + self._settings.shutdown_timeout_s
        t0 = time.monotonic()
        while waiting and time.monotonic() - t0 < bound:
            if generation != self._generation or self._stopping:
                self._reconcile_wanted.set()
                return False
            try:
                holders = await current_holders(self._bootstrap, self.topic, self._client)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("group: cannot read ownership records (%r); retrying", exc)
                await asyncio.sleep(1)
                continue
            waiting = {k: r for k, r in waiting.items() if holders.get(k) == r}
            if waiting:
                await asyncio.sleep(0.2)
        if waiting:
            log.warning(
                "group: %d subscription(s) not released by their holder within %.0fs; "
                "taking them anyway",
                len(waiting),
                bound,
            )
        else:
            log.info("group: holders released in %.1fs", time.monotonic() - t0)
        return generation == self._generation

    async def _record(self, pairs: list[Pair], event: str) -> None:
        now_us = time.time_ns() // 1000
        for pair in pairs:
            key = subscription_key(*pair)
            value = orjson.dumps(
                {"replica": self.replica, "subscription": key, "event": event, "ts_us": now_us}
            )
            await self._sink.send(self.topic, key.encode(), value, [], self._route, time.time())


async def current_holders(bootstrap: str, topic: str, client: dict[str, Any]) -> dict[str, str]:
    """subscription key → the replica whose ``acquired`` is its latest ownership record
    (the assignment topic read from the start: it is small)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, **client)
    await consumer.start()
    held: dict[str, tuple[int, str, str]] = {}
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not parts:
            return {}
        consumer.assign(parts)
        firsts = await consumer.beginning_offsets(parts)
        async with asyncio.timeout(10):
            read = await read_to_end(consumer, firsts)
        for msgs in read.values():
            for m in msgs:
                r = orjson.loads(m.value or b"")
                prior = held.get(r["subscription"])
                if prior is None or r["ts_us"] >= prior[0]:
                    held[r["subscription"]] = (r["ts_us"], r["event"], r["replica"])
    finally:
        await consumer.stop()
    return {k: replica for k, (_, event, replica) in held.items() if event == "acquired"}
