"""librdkafka (confluent-kafka) behind the small producer surface the sink uses.

``produce()`` hands a record to librdkafka's queue with the sink's delivery callback;
delivery reports run on the event loop thread (a poller task calls ``poll(0)`` while
records are in flight), so the sink's bookkeeping stays single-threaded. Errors become
exceptions carrying ``retriable`` like aiokafka's, and an unknown topic becomes
aiokafka's ``UnknownTopicOrPartitionError`` (topic recreation).

Why: a produce call is cheaper than aiokafka's ``send``, and librdkafka batches,
compresses and talks to the brokers on its own threads. (The sink's aiokafka path does not
call ``send`` per record: it appends to batches; bench/README.md compares the two.)

Ordering: with idempotence librdkafka keeps per-partition order with up to 5 requests in
flight; without it (the embedded broker) one request in flight per broker keeps it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from aiokafka.errors import KafkaError as AioKafkaError
from aiokafka.errors import UnknownTopicOrPartitionError

from connector.settings import Settings

log = logging.getLogger(__name__)

_POLL_INTERVAL_S = 0.001


class RdKafkaError(AioKafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """A librdkafka error as the sink sees errors: with ``retriable``."""

    def __init__(self, message: str, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


def _error(err: Any) -> Exception:
    from confluent_kafka import KafkaError

    if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
        unknown: Exception = UnknownTopicOrPartitionError(err.str())
        return unknown
    retriable = bool(err.retriable()) or err.code() in (
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
    )
    return RdKafkaError(f"{err.name()}: {err.str()}", retriable)


def rdkafka_config(settings: Settings, bootstrap: str, options: dict[str, Any]) -> dict[str, Any]:
    """librdkafka properties from the settings and the aiokafka-style security options."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": settings.kafka_client_id,
        "acks": "all",
        # The Java client's (and aiokafka's) key → partition mapping, not librdkafka's
        # default consistent_random (CRC32): switching libraries keeps a key's partition.
        "partitioner": "murmur2_random",
        "enable.idempotence": settings.idempotence,
        "max.in.flight.requests.per.connection": 5 if settings.idempotence else 1,
        "linger.ms": settings.kafka_linger_ms,
        "batch.size": settings.kafka_max_batch_bytes,
        "message.max.bytes": max(settings.kafka_max_batch_bytes, settings.ws_max_size_bytes),
        "compression.type": settings.kafka_compression,
        "request.timeout.ms": settings.kafka_request_timeout_ms,
        # A record's delivery is bounded: then the sink's ordered retry takes over.
        "message.timeout.ms": settings.kafka_request_timeout_ms,
        "queue.buffering.max.messages": max(100_000, 2 * settings.kafka_max_in_flight),
        "security.protocol": options["security_protocol"],
    }
    if settings.compression_level is not None:
        config["compression.level"] = settings.compression_level
    if "sasl_mechanism" in options:
        config["sasl.mechanism"] = options["sasl_mechanism"]
        config["sasl.username"] = options["sasl_plain_username"]
        config["sasl.password"] = options["sasl_plain_password"]
    if options["security_protocol"].endswith("SSL"):
        if settings.kafka_ssl_cafile:
            config["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
        if settings.kafka_ssl_certfile:
            config["ssl.certificate.location"] = str(settings.kafka_ssl_certfile)
            config["ssl.key.location"] = str(settings.kafka_ssl_keyfile)
        if settings.kafka_ssl_key_password:
            config["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
        if not settings.kafka_ssl_check_hostname:
            config["ssl.endpoint.identification.algorithm"] = "none"
    return config


class RdKafkaProducer:
    def __init__(self, config: dict[str, Any], connect_timeout_s: float) -> None:
        from confluent_kafka import Producer

        self._producer = Producer({**config, "error_cb": self._on_error})
        self._connect_timeout_s = connect_timeout_s
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None

    def _on_error(self, err: Any) -> None:
        log.warning("librdkafka: %s", err)

    async def start(self) -> None:
        """Fails (like aiokafka's start) when no broker answers within the deadline."""
        from confluent_kafka import KafkaException

        try:
            await asyncio.to_thread(self._producer.list_topics, timeout=self._connect_timeout_s)
        except KafkaException as exc:
            raise RdKafkaError(f"no broker answered: {exc}", retriable=True) from exc
        self._poller = asyncio.create_task(self._poll(), name="rdkafka-poll")
        self._poller.add_done_callback(_poller_ended)

    async def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes,
        headers: list[tuple[str, bytes]],
        on_done: Callable[[BaseException | None], None],
    ) -> None:
        """Queues the record; ``on_done`` gets its outcome from a delivery report, called
        by ``poll`` on the event loop's thread (no future per record: a future and its
        callback's trip through the loop cost more than librdkafka's own produce)."""
        from confluent_kafka import KafkaException

        while True:
            try:
                self._producer.produce(
                    topic,
                    value,
                    key,
                    headers=cast(Any, headers),
                    on_delivery=partial(self._report, on_done),
                )
                break
            except BufferError:  # librdkafka's queue is full: let deliveries drain
                self._producer.poll(0)
                await asyncio.sleep(_POLL_INTERVAL_S)
            except KafkaException as exc:
                raise _error(exc.args[0]) from exc
        if not self._in_flight:
            self._wake.set()
        self._in_flight += 1

    def _report(self, on_done: Callable[[BaseException | None], None], err: Any, _msg: Any) -> None:
        self._in_flight -= 1
        on_done(None if err is None else _error(err))

    async def _poll(self) -> None:
        poll = self._producer.poll
        while True:
            if self._in_flight <= 0:
                self._wake.clear()
                await self._wake.wait()
            poll(0)  # delivery reports, on this thread
            await asyncio.sleep(_POLL_INTERVAL_S)

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        # Reports still due are delivered here, on the loop's thread (the sink bounds this
        # call; librdkafka would run callbacks on flush()'s thread).
        deadline = asyncio.get_running_loop().time() + 5.0
        while len(self._producer) and asyncio.get_running_loop().time() < deadline:
            self._producer.poll(0)
            await asyncio.sleep(0.01)
        if len(self._producer):
            log.warning("librdkafka: %d record(s) still queued at stop", len(self._producer))


def _poller_ended(task: asyncio.Task[None]) -> None:
    """A delivery callback that raised stops the poller: say so (no record would settle)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("librdkafka delivery poller stopped", exc_info=task.exception())
