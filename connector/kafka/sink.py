"""Kafka sink: acks=all, bounded, pipelined, ordered retries, nothing dropped silently.

Design (after aiokafka's accumulator/sender split):
- ``send`` takes one of ``max_in_flight`` slots (backpressure: the caller waits when
  Kafka is slow) and hands the record to the producer without awaiting the ack, so many
  records are in flight and batched (``connector.kafka.aio.AioProducer``, or librdkafka
  through ``connector.kafka.rdkafka``).
- An ack (acks=all) frees the slot. A retriable failure (timeout, no leader, unknown
  topic, connection loss) switches the sink to *retry mode*: new records queue behind the
  failed ones, in-flight records settle, then everything is resent in original order
  (aiokafka keeps one batch per partition in flight, so per-partition order holds).
  Backoff between rounds is capped, jittered exponential.
- A non-retriable failure (e.g. record too large) is counted and logged with its topic.
- A topic that disappeared (``UnknownTopicOrPartition``: a broker restarted without
  persistence, an operator deleted it) is recreated with the configured partitions and
  replication (the ``topic_creator``, when topic creation is on) before the next retry round.
- Every attempt is bounded in time: aiokafka expires a batch after request_timeout_ms
  (without idempotence); with idempotence aiokafka retries forever by design. A
  watchdog logs Kafka unreachable once records wait ``kafka_send_timeout_s`` with no
  acknowledgement, every 30 s while it lasts, and restored.
- ``send`` never waits on the broker itself (the producer's backlog pump does), so the
  WebSocket reader keeps reading through an outage.
- With a spool (on by default, ``spool_dir`` or the default place): once every slot
  is taken (``kafka_max_in_flight`` records unacknowledged: Kafka down or too slow),
  records go to disk instead of waiting, so reading never stops during an outage; once
  anything is spooled, newer records follow it there (order). When Kafka is back and the
  retry queue is empty, the spool is replayed in order through the same path; direct
  sends resume when it is empty. ``close`` spools what is unacknowledged; the next start
  replays it.
  Full spool: ``block`` (wait) or ``drop_oldest`` (counted).
- Write-ahead mode (``spool_write_ahead``): every record is appended to the spool
  (flushed to the OS) before it is sent, so a SIGKILL loses nothing that was received.
  When nothing waits on disk it is sent from memory at once; otherwise it queues behind
  the spooled records and the replay sends it. The spool's saved watermark bounds what
  the next start sends twice.
- ``close`` flushes within a deadline, then stops the producer within a deadline;
  records still unacknowledged are spooled (or, without a spool, logged and counted as
  undelivered).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from aiokafka.errors import (
    BrokerResponseError,
    KafkaError,
    UnknownTopicOrPartitionError,
)

from connector.errors import DeliveryError
from connector.kafka.aio import (
    Headers,
    retriable,
)
from connector.kafka.outage import OutageLog
from connector.kafka.producer import new_producer
from connector.kafka.spool import Spool, SpooledRecord, SpoolFull
from connector.kafka.spool_place import open_default_spool, open_spool
from connector.kafka.topics import TopicCreator, recreate_topics
from connector.metrics import Metrics, RouteMetrics
from connector.settings import Settings

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


@dataclass(slots=True, order=True)
class _Record:
    seq: int
    topic: str = field(compare=False)
    key: bytes = field(compare=False)
    value: bytes = field(compare=False)
    headers: Headers = field(compare=False)
    route: RouteMetrics = field(compare=False)
    receive_ts: float = field(compare=False)  # wall-clock seconds, for receive→ack latency
    first_sent: float = field(compare=False)  # monotonic
    attempts: int = field(compare=False, default=0)
    sent_at: float = field(compare=False, default=0.0)  # monotonic, the latest attempt
    spool_pos: tuple[int, int] | None = field(compare=False, default=None)


class KafkaSink:
    def __init__(
        self,
        settings: Settings,
        bootstrap_servers: str,
        metrics: Metrics,
        topic_creator: TopicCreator | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        # First: a spool in use by another process is a configuration error, raised
        # before anything that needs closing exists.
        self._lock_fd: int | None = None
        self._spool: Spool | None = None
        held = None
        if settings.spool_dir is not None:
            held = open_spool(settings, settings.spool_dir)
        elif settings.spool:
            held = open_default_spool(settings)
        if held is not None:
            self._spool, self._lock_fd = held
        self._producer = new_producer(settings, bootstrap_servers)
        self._slots = asyncio.Semaphore(settings.kafka_max_in_flight)
        self._pending = 0  # accepted, final outcome not yet known
        self._submitted = 0  # handed to the producer, outcome not yet reported
        self._idle = asyncio.Event()
        self._idle.set()
        self._settled = asyncio.Event()
        self._settled.set()
        self._seq = 0
        self._unacked: dict[int, _Record] = {}  # insertion-ordered: first is the oldest
        self._retry: list[_Record] = []
        self._retry_wanted = asyncio.Event()
        self._not_retrying = asyncio.Event()  # clear while in ordered-retry mode
        self._not_retrying.set()
        self._failures = 0
        self._retry_since = 0.0
        self._last_error = ""
        self._missing_topics: set[str] = set()
        self._topic_creator = topic_creator  # when a topic disappears; None: creation off
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._abandoned = False
        self.delivered = 0
        self.failed = 0
        self.spooled = 0
        self._replayed = 0
        self._last_ack = time.monotonic()
        self._routes_by_topic: dict[str, RouteMetrics] = {}
        self._replay_route = metrics.route("spool", "replay", "")
        self._spooling = False
        self._spool_space = asyncio.Event()
        self._replay_wanted = asyncio.Event()
        self._replay_holding = 0  # read from the spool, not yet accepted (waiting for slots)
        self._write_ahead = settings.spool_write_ahead and self._spool is not None
        if self._spool is not None and self._spool.has_unread():
            self._spooling = True  # replay what an earlier run left before anything new
            self._replay_wanted.set()
            log.info(
                "spool %s holds %d bytes from an earlier run: replaying them first",
                self._spool.dir,
                self._spool.bytes,
            )

    # --- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await asyncio.wait_for(
                self._producer.start(), self._settings.kafka_request_timeout_ms / 1000
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._stop_producer()
            self._release_spool()  # a retry builds a new sink, which takes the lock again
            if self._settings.idempotence and isinstance(exc, BrokerResponseError):
                # The broker answered, and refused: InitProducerId (an idempotent
                # producer's first request) is what a connected start adds.
                raise DeliveryError(
                    f"the Kafka broker refused an idempotent producer (InitProducerId "
                    f"answered {exc!r}): it may not support idempotence (Tansu, some "
                    "Kafka-compatible brokers) or the principal lacks the IDEMPOTENT_WRITE "
                    "permission; set CONNECTOR_KAFKA_ENABLE_IDEMPOTENCE=false to produce "
                    "without it (per-market order still holds: ordered retries)",
                    retriable=True,
                ) from exc
            raise DeliveryError(
                f"cannot connect the Kafka producer: {exc!r}", retriable=True
            ) from exc
        self._tasks = [
            asyncio.create_task(self._retry_loop(), name="sink-retry"),
            asyncio.create_task(self._watchdog(), name="sink-watchdog"),
        ]
        if self._spool is not None:
            self._tasks.append(asyncio.create_task(self._replay_loop(), name="sink-replay"))
            self._tasks.append(
                asyncio.create_task(self._save_watermarks(), name="sink-spool-watermark")
            )

    async def close(self, deadline_s: float | None = None) -> int:
        """Flush within ``deadline_s``, stop; returns the number of undelivered records."""
        timeout = self._settings.shutdown_timeout_s if deadline_s is None else deadline_s
        delivered = await self.flush(timeout)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        undelivered = self._pending
        if not delivered and undelivered and self._spool is not None:
            undelivered -= self._spool_leftovers()
        # Outcomes reported while the producer stops change nothing now.
        self._abandoned = True
        if not delivered and undelivered:
            log.error(
                "shutdown deadline of %.1fs passed with %d record(s) unacknowledged by Kafka; "
                "they are NOT delivered",
                timeout,
                undelivered,
            )
            self._metrics.events_undelivered.inc(undelivered)
        await self._stop_producer()
        self._release_spool()
        return undelivered

    def _release_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def spool_state(self) -> tuple[int, int] | None:
        """(bytes, records) of the spool, None without one."""
        return None if self._spool is None else (self._spool.bytes, self._spool.records)

    def spooled_records(self) -> Iterator[SpooledRecord]:
        """What an earlier run left in the spool, in order (before ``start``)."""
        return iter(()) if self._spool is None else self._spool.scan_unread()

    def _spool_leftovers(self) -> int:
        """At shutdown: unacknowledged records go to the spool for the next start."""
        assert self._spool is not None
        saved = 0
        for rec in list(self._unacked.values()):
            if rec.spool_pos is not None:
                saved += 1  # still in the spool, unacked: replayed next time
                continue
            try:
                self._spool.append(
                    SpooledRecord(rec.topic, rec.key, rec.value, tuple(rec.headers), rec.receive_ts)
                )
            except (SpoolFull, OSError) as exc:
                log.error("cannot spool at shutdown: %s", exc)
                break
            saved += 1
        if saved:
            log.warning(
                "shutdown: %d unacknowledged record(s) kept in the spool for the next start", saved
            )
        return saved

    async def _stop_producer(self) -> None:
        # aiokafka's stop() can hang when the broker is gone: bound it.
        try:
            await asyncio.wait_for(self._producer.stop(), 10)
        except TimeoutError:
            log.warning("Kafka producer did not stop within 10s; abandoning it")

    async def flush(self, deadline_s: float) -> bool:
        """Waits until every accepted record has its final outcome and the spool has
        nothing unread; False on timeout."""
        try:
            async with asyncio.timeout(deadline_s):
                while True:
                    await self._idle.wait()
                    if self._spool is None or not (
                        self._spool.has_unread() or self._replay_holding
                    ):
                        return True
                    self._replay_wanted.set()
                    await asyncio.sleep(0.01)
        except TimeoutError:
            return False

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def kafka_problem(self) -> str | None:
        """None while the producer is connected and Kafka takes records; else why not
        (for /readyz)."""
        if not self._tasks:
            return "producer not started"
        if self._closing:
            return "producer closing"
        if self._retrying:
            since = time.monotonic() - self._retry_since
            return f"Kafka not taking records for {since:.0f}s ({self._last_error})"
        return None

    @property
    def fill_ratio(self) -> float:
        """Records in flight over the limit (1.0: the reader is held back)."""
        return self._pending / self._settings.kafka_max_in_flight

    @property
    def _retrying(self) -> bool:
        return not self._not_retrying.is_set()

    @property
    def saturated(self) -> bool:
        """True while every in-flight slot is taken (senders are waiting)."""
        return self._slots.locked()

    # --- hot path --------------------------------------------------------------------
    async def send(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: Headers,
        route: RouteMetrics,
        receive_ts: float,
    ) -> None:
        if self._closing:
            raise DeliveryError("sink is closed", retriable=False)
        if receive_ts:
            self._metrics.handoff_latency.observe(time.time() - receive_ts)
        self._routes_by_topic[topic] = route
        if self._write_ahead:
            pos = await self._spool_first(
                SpooledRecord(topic, key, value, tuple(headers), receive_ts)
            )
            if pos is not None:  # on disk, and nothing waits before it: send it now
                await self._slots.acquire()  # free: checked, and nothing ran since
                await self._accept(topic, key, value, headers, route, receive_ts, spool_pos=pos)
            return
        if self._spool is not None and (self._spooling or self._slots.locked()):
            # The memory buffer (kafka_max_in_flight records unacknowledged) is full, or
            # older records wait on disk: this one goes to disk too, and reading goes on.
            await self._to_spool(SpooledRecord(topic, key, value, tuple(headers), receive_ts))
            return
        await self._slots.acquire()  # without a spool, a full buffer holds the reader
        await self._accept(topic, key, value, headers, route, receive_ts)

    async def _accept(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: Headers,
        route: RouteMetrics,
        receive_ts: float,
        spool_pos: tuple[int, int] | None = None,
    ) -> None:
        """A record holding a slot: numbered, tracked, then sent, or queued behind the
        failed ones while in ordered-retry mode."""
        self._seq += 1
        self._pending += 1
        self._idle.clear()
        rec = _Record(
            self._seq,
            topic,
            key,
            value,
            headers,
            route,
            receive_ts,
            time.monotonic(),
            spool_pos=spool_pos,
        )
        self._unacked[rec.seq] = rec
        if self._retrying:
            heapq.heappush(self._retry, rec)
        else:
            await self._submit(rec)

    async def _spool_first(self, rec: SpooledRecord) -> tuple[int, int] | None:
        """Puts ``rec`` on disk. Its position if it can be sent from memory at once (a
        slot is free and nothing waits on disk); None if it queues behind spooled records
        (the replay sends it)."""
        assert self._spool is not None
        if self._spooling or self._slots.locked():
            await self._to_spool(rec)
            return None
        try:
            pos = self._spool.append_handed(rec)
        except SpoolFull:
            await self._to_spool(rec)  # the full-spool policy applies
            return None
        self.spooled += 1
        self._metrics.spooled.inc()
        if pos is None:  # unread records before it: it waits for the replay
            self._spooling = True
            self._replay_wanted.set()
        return pos

    async def _to_spool(self, rec: SpooledRecord) -> None:
        assert self._spool is not None
        if not self._spooling:
            self._spooling = True
            if not self._write_ahead:
                log.warning(
                    "%d record(s) unacknowledged by Kafka (kafka_max_in_flight): newer ones "
                    "go to the spool %s until Kafka has taken them",
                    self._pending,
                    self._spool.dir,
                )
        while True:
            try:
                self._spool.append(rec)
                break
            except SpoolFull:
                if self._settings.spool_full_policy == "drop_oldest" and self._drop_oldest():
                    continue
                log.error("spool full (%d bytes): reading waits for Kafka", self._spool.bytes)
                self._spool_space.clear()
                await self._spool_space.wait()
        self.spooled += 1
        self._metrics.spooled.inc()
        self._replay_wanted.set()

    def _drop_oldest(self) -> bool:
        assert self._spool is not None
        dropped = 0
        for pos, _ in self._spool.read(1000):
            self._spool.ack(pos)
            dropped += 1
        if dropped:
            self._metrics.spool_dropped.inc(dropped)
            self._metrics.events_dropped.labels("", "", "spool_full").inc(dropped)
            log.error(
                "spool full: dropped the %d oldest record(s) (spool_full_policy=drop_oldest)",
                dropped,
            )
        return dropped > 0

    async def _replay_loop(self) -> None:
        """Feeds the spool back in order once Kafka takes records again."""
        assert self._spool is not None
        spool = self._spool
        while True:
            await self._replay_wanted.wait()
            await self._not_retrying.wait()  # the retry queue is older than the spool
            batch = list(spool.read(500))
            self._replay_holding = len(batch)
            for pos, srec in batch:
                await self._slots.acquire()
                self._replay_holding -= 1
                route = self._routes_by_topic.get(srec.topic, self._replay_route)
                await self._accept(
                    srec.topic,
                    srec.key,
                    srec.value,
                    list(srec.headers),
                    route,
                    srec.receive_ts,
                    spool_pos=pos,
                )
            self._spool_space.set()
            if not batch and not spool.has_unread():
                # Nothing left: newer records may go straight to Kafka again. No await
                # between the check and the switch, so no record can slip in between.
                if self._spooling:
                    self._spooling = False
                    if not self._write_ahead:
                        log.info("spool drained: sending directly again")
                self._replay_wanted.clear()
            elif not batch:
                await asyncio.sleep(0.05)  # the open segment is being written

    async def _submit(self, rec: _Record) -> None:
        rec.attempts += 1
        rec.sent_at = time.monotonic()
        try:
            await self._producer.produce(
                rec.topic, rec.value, rec.key, rec.headers, partial(self._on_done, rec)
            )
        except KafkaError as exc:
            self._failed(rec, exc)
            return
        # This record's outcome cannot arrive before this line: aiokafka's comes through
        # the event loop, librdkafka's from a later poll().
        self._submitted += 1
        self._settled.clear()

    def _on_done(self, rec: _Record, exc: BaseException | None) -> None:
        if self._abandoned:
            return  # after close kept what was unacknowledged in the spool
        self._submitted -= 1
        if self._submitted == 0:
            self._settled.set()
        if exc is None:
            self.delivered += 1
            rec.route.published += 1
            if rec.spool_pos is not None:
                assert self._spool is not None
                self._spool.ack(rec.spool_pos)
                self._metrics.replayed.inc()
                self._replayed += 1
            if rec.receive_ts:
                self._metrics.ack_latency.observe(max(0.0, time.time() - rec.receive_ts))
            self._last_ack = now = time.monotonic()
            self._metrics.produce_latency.observe(now - rec.sent_at)
            self._finish(rec)
            return
        self._failed(rec, exc)

    def _finish(self, rec: _Record) -> None:
        del self._unacked[rec.seq]
        self._slots.release()
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()

    def _failed(self, rec: _Record, exc: BaseException) -> None:
        if isinstance(exc, UnknownTopicOrPartitionError):
            self._missing_topics.add(rec.topic)
        if retriable(exc) and not self._closing:
            self._failures += 1
            self._metrics.send_retries.labels(type(exc).__name__).inc()
            heapq.heappush(self._retry, rec)
            self._last_error = type(exc).__name__
            if not self._retrying:
                self._retry_since = time.monotonic()
                self._not_retrying.clear()
                log.warning(
                    "Kafka send to %s failed (%r); retrying in order, new records queue behind it",
                    rec.topic,
                    exc,
                )
                self._retry_wanted.set()
            return
        self.failed += 1
        self._metrics.events_failed.labels(*rec.route.labels, type(exc).__name__).inc()
        log.error(
            "Kafka rejected a %d-byte record for %s permanently after %d attempt(s): %r",
            len(rec.value),
            rec.topic,
            rec.attempts,
            exc,
        )
        self._finish(rec)

    # --- background ------------------------------------------------------------------
    async def _retry_loop(self) -> None:
        s = self._settings
        rounds = 0
        resent = 0
        while True:
            await self._retry_wanted.wait()
            cap = min(s.kafka_retry_backoff_max_s, 0.1 * 2**rounds)
            await asyncio.sleep(random.uniform(cap / 2, cap))
            await self._settled.wait()  # everything handed to aiokafka has an outcome
            if self._missing_topics:
                await self._recreate_topics()
            if self._retry:
                failures_before = self._failures
                batch = [heapq.heappop(self._retry) for _ in range(len(self._retry))]
                resent += len(batch)
                for rec in batch:
                    if rec.topic in self._missing_topics:
                        # Its topic failed earlier in this round: aiokafka would wait
                        # request_timeout_ms on metadata again, per record.
                        heapq.heappush(self._retry, rec)
                        continue
                    await self._submit(rec)
                await self._settled.wait()
                rounds = rounds + 1 if self._failures > failures_before else 0
            if not self._retry:  # the round was acknowledged and nothing queued meanwhile
                self._not_retrying.set()
                self._retry_wanted.clear()
                log.info("Kafka sends recovered after %d ordered resend(s)", resent)
                rounds = resent = 0

    async def _recreate_topics(self) -> None:
        topics = sorted(self._missing_topics)
        self._missing_topics.clear()
        timeout_s = self._settings.kafka_request_timeout_ms / 1000
        created = await recreate_topics(topics, self._topic_creator, timeout_s)
        if created is None:
            self._missing_topics.update(topics)  # the next round tries again
        elif created:
            self._metrics.topics_recreated.inc(len(created))

    async def _save_watermarks(self) -> None:
        """Persists how far Kafka acknowledged the spool (bounds a crash's replay)."""
        assert self._spool is not None
        while True:
            await asyncio.sleep(self._settings.spool_watermark_interval_s)
            self._spool.save_watermark()

    async def _watchdog(self) -> None:
        """Feeds the outage log once a second with what the sink sees."""
        outage = OutageLog(self._settings.kafka_send_timeout_s)
        while True:
            await asyncio.sleep(1.0)
            oldest = next(iter(self._unacked.values()), None)
            outage.observe(
                time.monotonic(),
                oldest_sent=None if oldest is None else oldest.first_sent,
                last_ack=self._last_ack,
                retrying=self._retrying,
                delivered=self.delivered,
                replayed=self._replayed,
                held=self._held(),
                last_error=self._last_error,
            )

    def _held(self) -> str:
        spooled = "" if self._spool is None else f", {self._spool.records} in the spool"
        return f"{self._pending} record(s) held in memory{spooled}"
