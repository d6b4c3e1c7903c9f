"""Kafka sink: acks=all, bounded, pipelined, ordered retries, nothing dropped silently.

Design (after aiokafka's accumulator/sender split):
- ``send`` takes one of ``max_in_flight`` slots (backpressure: the caller waits when
  Kafka is slow) and hands the record to aiokafka without awaiting the ack, so many
  records are in flight and batched.
- An ack (acks=all) frees the slot. A retriable failure (timeout, no leader, unknown
  topic, connection loss) switches the sink to *retry mode*: new records queue behind the
  failed ones, in-flight records settle, then everything is resent in original order
  (aiokafka keeps one batch per partition in flight, so per-partition order holds).
  Backoff between rounds is capped, jittered exponential.
- A non-retriable failure (e.g. record too large) is counted and logged with its topic.
- Every attempt is bounded in time: aiokafka expires a batch after request_timeout_ms
  (without idempotence); with idempotence aiokafka retries forever by design, and a
  watchdog logs and exposes records older than ``kafka_send_timeout_s``.
- ``close`` flushes within a deadline, then stops the producer within a deadline;
  records still unacknowledged are logged and counted as undelivered.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from connector.errors import DeliveryError
from connector.metrics import Metrics, RouteMetrics
from connector.settings import Settings

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


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


def _retriable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retriable", False)) or isinstance(exc, asyncio.TimeoutError)


class KafkaSink:
    def __init__(self, settings: Settings, bootstrap_servers: str, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=settings.kafka_client_id,
            acks="all",
            enable_idempotence=settings.idempotence,
            compression_type=None
            if settings.kafka_compression == "none"
            else settings.kafka_compression,
            linger_ms=settings.kafka_linger_ms,
            max_batch_size=settings.kafka_max_batch_bytes,
            max_request_size=max(settings.kafka_max_batch_bytes, settings.ws_max_size_bytes),
            request_timeout_ms=settings.kafka_request_timeout_ms,
            security_protocol=settings.kafka_security_protocol,
        )
        self._slots = asyncio.Semaphore(settings.kafka_max_in_flight)
        self._pending = 0  # accepted, final outcome not yet known
        self._submitted = 0  # handed to aiokafka, future not yet resolved
        self._idle = asyncio.Event()
        self._idle.set()
        self._settled = asyncio.Event()
        self._settled.set()
        self._seq = 0
        self._unacked: dict[int, _Record] = {}  # insertion-ordered: first is the oldest
        self._retry: list[_Record] = []
        self._retrying = False
        self._retry_wanted = asyncio.Event()
        self._failures = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.delivered = 0
        self.failed = 0

    # --- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await asyncio.wait_for(
                self._producer.start(), self._settings.kafka_request_timeout_ms / 1000
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._stop_producer()
            raise DeliveryError(
                f"cannot connect the Kafka producer: {exc!r}", retriable=True
            ) from exc
        self._tasks = [
            asyncio.create_task(self._retry_loop(), name="sink-retry"),
            asyncio.create_task(self._watchdog(), name="sink-watchdog"),
        ]

    async def close(self, deadline_s: float | None = None) -> int:
        """Flush within ``deadline_s``, stop; returns the number of undelivered records."""
        timeout = self._settings.shutdown_timeout_s if deadline_s is None else deadline_s
        delivered = await self.flush(timeout)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        undelivered = self._pending
        if not delivered and undelivered:
            log.error(
                "shutdown deadline of %.1fs passed with %d record(s) unacknowledged by Kafka; "
                "they are NOT delivered",
                timeout,
                undelivered,
            )
            self._metrics.events_undelivered.inc(undelivered)
        await self._stop_producer()
        return undelivered

    async def _stop_producer(self) -> None:
        # aiokafka's stop() can hang when the broker is gone: bound it.
        try:
            await asyncio.wait_for(self._producer.stop(), 10)
        except TimeoutError:
            log.warning("Kafka producer did not stop within 10s; abandoning it")

    async def flush(self, deadline_s: float) -> bool:
        """Waits until every accepted record has its final outcome; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), deadline_s)
        except TimeoutError:
            return False
        return True

    @property
    def pending(self) -> int:
        return self._pending

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
        await self._slots.acquire()
        self._seq += 1
        self._pending += 1
        self._idle.clear()
        rec = _Record(self._seq, topic, key, value, headers, route, receive_ts, time.monotonic())
        self._unacked[rec.seq] = rec
        if self._retrying:
            heapq.heappush(self._retry, rec)
            return
        await self._submit(rec)

    async def _submit(self, rec: _Record) -> None:
        rec.attempts += 1
        try:
            fut = await self._producer.send(rec.topic, rec.value, key=rec.key, headers=rec.headers)
        except KafkaError as exc:
            self._failed(rec, exc)
            return
        self._submitted += 1
        self._settled.clear()
        fut.add_done_callback(partial(self._on_done, rec))

    def _on_done(self, rec: _Record, fut: asyncio.Future[Any]) -> None:
        self._submitted -= 1
        if self._submitted == 0:
            self._settled.set()
        exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()
        if exc is None:
            self.delivered += 1
            rec.route.published.inc()
            self._metrics.ack_latency.observe(max(0.0, time.time() - rec.receive_ts))
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
        if _retriable(exc) and not self._closing:
            self._failures += 1
            self._metrics.send_retries.labels(type(exc).__name__).inc()
            heapq.heappush(self._retry, rec)
            if not self._retrying:
                self._retrying = True
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
            if self._retry:
                failures_before = self._failures
                batch = [heapq.heappop(self._retry) for _ in range(len(self._retry))]
                resent += len(batch)
                for rec in batch:
                    await self._submit(rec)
                await self._settled.wait()
                rounds = rounds + 1 if self._failures > failures_before else 0
            if not self._retry:  # the round was acknowledged and nothing queued meanwhile
                self._retrying = False
                self._retry_wanted.clear()
                log.info("Kafka sends recovered after %d ordered resend(s)", resent)
                rounds = resent = 0

    async def _watchdog(self) -> None:
        limit = self._settings.kafka_send_timeout_s
        last_report = 0.0
        while True:
            await asyncio.sleep(min(limit, 5.0))
            self._metrics.in_flight.set(self._pending)
            oldest = next(iter(self._unacked.values()), None)
            now = time.monotonic()
            if (
                oldest is not None
                and now - oldest.first_sent > limit
                and now - last_report >= limit
            ):
                last_report = now
                log.error(
                    "%d record(s) unacknowledged, the oldest for over %.0fs: Kafka is not "
                    "accepting writes (still retrying)",
                    self._pending,
                    limit,
                )
