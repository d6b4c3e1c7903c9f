"""aiokafka, driven for the sink: batches joined directly, a reader that never waits.

- ``AioProducer``: records join their partition's open batch through aiokafka's batch
  interface (one future per batch settles its records), as aiokafka's own ``send``
  does but without a coroutine per record. A record that cannot be placed at once
  (metadata to fetch, an undrained batch of its partition) joins a backlog that one
  pump task hands to aiokafka in order, so ``produce`` never waits on the broker. A
  batch that fails retriably fails its partition's later batches and the backlog with
  it, so the ordered resend keeps per-partition order.
- ``KeyPartitioner``: murmur2 of the key, as the Java client and librdkafka's
  ``murmur2_random`` do, so both clients put a key on the same partition.
- ``use_compression_level``: aiokafka has no compression-level setting; this sets the
  level of its lz4/zstd/gzip codecs process-wide (the connector's one producer).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    ProducerClosed,
)
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from connector.errors import ConfigError

if TYPE_CHECKING:
    pass


log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]


class KeyPartitioner:
    """aiokafka's default partitioning (the Java client's: murmur2 of the key, positive,
    modulo the partition count), with each key's hash computed once: aiokafka's murmur2 is
    pure Python and ran for every record, while our keys are a few market names."""

    MAX_KEYS = 100_000  # a bound, not a working set: keys are markets

    def __init__(self) -> None:
        self._hashes: dict[bytes, int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return random.choice(available or all_partitions)
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= self.MAX_KEYS:
                self._hashes.clear()
            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[h % len(all_partitions)]


def batch_builder_modules() -> tuple[list[Any], list[Any]]:
    """aiokafka's modules whose batch builders call its codec functions: those of v2
    batches (every broker since Kafka 0.11), in C and in Python, and the legacy (v0/v1)
    ones, which have no zstd."""
    from aiokafka.record import default_records, legacy_records

    modules: list[Any] = [default_records]
    legacy: list[Any] = [legacy_records]
    try:
        from aiokafka.record._crecords import default_records as c_default
        from aiokafka.record._crecords import legacy_records as c_legacy

        modules.append(c_default)
        legacy.append(c_legacy)
    except ImportError:  # aiokafka without its C extensions
        pass
    return modules, legacy


def use_compression_level(codec: str, level: int | None) -> None:
    """Makes aiokafka compress batches at ``level``.

    aiokafka 0.14 has no setting for it: its batch builders call ``lz4_encode``,
    ``zstd_encode`` and ``gzip_encode`` with their default levels (lz4 9: the slow
    high-compression mode, many times the CPU of level 1 for a slightly smaller batch).
    The builders look those names up in their own modules at call
    time, so the level is bound there. Process-wide: every aiokafka producer of this
    process compresses at that level. A test pins that the builders use it."""
    if level is None:
        return
    from aiokafka import codec as aiokafka_codec

    name = {"lz4": "lz4_encode", "zstd": "zstd_encode", "gzip": "gzip_encode"}[codec]
    keyword = "compresslevel" if codec == "gzip" else "level"
    bound = partial(getattr(aiokafka_codec, name), **{keyword: level})
    modules, legacy = batch_builder_modules()
    for module in modules:
        if not hasattr(module, name):
            raise ConfigError(
                f"this aiokafka ({module.__name__}) has no {name}: kafka_compression_level "
                "cannot be applied; use CONNECTOR_KAFKA_CLIENT=librdkafka"
            )
        setattr(module, name, bound)
    for module in legacy:
        if hasattr(module, name):
            setattr(module, name, bound)


def retriable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retriable", False)) or isinstance(exc, asyncio.TimeoutError)


# A record's outcome, reported once: None when Kafka acknowledged it (acks=all), else why
# not. Called on the event loop's thread.
Delivery = Callable[[BaseException | None], None]


class _OpenBatch:
    """A batch of one partition while records may still join it: aiokafka's builder
    (handed to the producer at its first record, as aiokafka's own ``send`` does) and
    the outcome callbacks of the records in it, in order."""

    __slots__ = ("builder", "callbacks")

    def __init__(self, builder: Any) -> None:
        self.builder = builder
        self.callbacks: list[Delivery] = []


class AioProducer:
    """aiokafka behind the sink's producer surface (``start``, ``produce``, ``stop``),
    which librdkafka's (``connector.kafka.rdkafka``) shares: ``produce`` hands a record over and
    ``on_done`` later gets its outcome.

    Records go through aiokafka's batch interface (``create_batch``/``send_batch``), not
    ``send``: ``send`` costs a metadata lookup, three partition sets, a future and a loop
    callback per record (about a sixth of the connector's CPU at 20 000 records/s). Here
    a record is appended to its partition's open batch (aiokafka's builder, left open as
    its documentation allows, so it still lingers ``linger_ms`` and fills up to
    ``max_batch_size``), and the batch's one future settles all its records, in order.
    Partition choice, the size bound and the per-partition order are aiokafka's: the same
    partitioner, the same ``max_request_size`` check, one batch per partition at a time
    in its accumulator.

    The linger is this class's, one for all partitions (aiokafka itself runs with
    ``linger_ms=0``): a new batch stays here until ``linger`` after the first record
    that opened one, then every batch opened meanwhile goes to aiokafka's accumulator at
    once, and its sender takes them in one produce request per broker. aiokafka's own
    linger is per batch, so the records of one burst spread over several requests; at
    the rates users run each batch holds a record or two, and every request costs more
    than the records in it.

    ``produce`` never waits on Kafka. aiokafka's ``send_batch`` looks metadata up for a
    topic it does not know (and waits while a batch of the partition is undrained):
    while the broker is unreachable, that is up to ``request_timeout_ms`` per call, and
    the caller (the WebSocket reader) would stop reading, its heartbeat replies unread,
    until the exchange connection is declared dead. So a batch whose partition is known
    is appended to the accumulator directly, behind that partition's undrained ones; a
    record whose topic has no metadata yet joins a backlog, in order, and one pump task
    hands the backlog to aiokafka with those waits; while the backlog is not empty every
    record joins it (per-partition order). Memory stays bounded by the sink's in-flight
    slots, which every record here holds."""

    __slots__ = (
        "_accumulator",
        "_backlog",
        "_batches",
        "_by_key",
        "_by_partition",
        "_flush",
        "_linger",
        "_max_request_size",
        "_open",
        "_partitioner",
        "_pump",
        "client",
    )

    def __init__(
        self,
        client: AIOKafkaProducer,
        partitioner: KeyPartitioner,
        max_request_size: int,
        linger_s: float = 0.0,
    ) -> None:
        self.client = client
        self._linger = linger_s
        self._open: dict[tuple[str, int], _OpenBatch] = {}  # not handed to aiokafka yet
        self._flush: asyncio.TimerHandle | None = None
        self._partitioner = partitioner
        self._max_request_size = max_request_size
        self._by_key: dict[tuple[str, bytes], _OpenBatch] = {}  # the batch a key used last
        self._by_partition: dict[tuple[str, int], _OpenBatch] = {}
        self._backlog: deque[tuple[str, bytes, bytes, Headers, Delivery]] = deque()
        self._pump: asyncio.Task[None] | None = None
        # aiokafka's undrained batches per partition (its accumulator's own map): where
        # one is pending, send_batch would wait. Without it (another aiokafka), every new
        # batch goes through the pump, which may wait.
        self._accumulator: Any = getattr(client, "_message_accumulator", None)
        self._batches: dict[Any, Any] | None = getattr(self._accumulator, "_batches", None)

    async def start(self) -> None:
        await self.client.start()

    async def stop(self) -> None:
        self._flush_open()  # what lingers here goes to aiokafka, which flushes it
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        self._fail_backlog(asyncio.CancelledError())
        await self.client.stop()

    async def produce(
        self, topic: str, value: bytes, key: bytes, headers: Headers, on_done: Delivery
    ) -> None:
        if self._pump is None:  # else the record queues behind those the pump holds
            if self._join_key(topic, value, key, headers, on_done):
                return
            placed = self._place_now(topic, value, key, headers, on_done)
            if placed is True:
                return
            if placed is not False:
                tp, batch = placed
                self._open[tp] = batch
                if self._flush is None:
                    self._flush = asyncio.get_running_loop().call_later(
                        self._linger, self._flush_open
                    )
                return
        self._backlog.append((topic, value, key, headers, on_done))
        if self._pump is None:
            self._pump = asyncio.create_task(self._drain_backlog(), name="producer-backlog")

    def _join_key(
        self, topic: str, value: bytes, key: bytes, headers: Headers, on_done: Delivery
    ) -> bool:
        """Appends the record to the batch its key used last, if that one takes it."""
        batch = self._by_key.get((topic, key))
        if (
            batch is not None
            and batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
            is not None
        ):
            batch.callbacks.append(on_done)
            return True
        return False

    def _partition_of(self, topic: str, key: bytes, partitions: Any) -> tuple[str, int]:
        candidates = list(partitions)
        return (topic, self._partitioner(key, candidates, candidates))

    def _join_partition(
        self, tp: tuple[str, int], value: bytes, key: bytes, headers: Headers, on_done: Delivery
    ) -> bool:
        """Appends the record to its partition's open batch, if it has room."""
        batch = self._by_partition.get(tp)
        if (
            batch is not None
            and batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
            is not None
        ):
            batch.callbacks.append(on_done)
            self._by_key[tp[0], key] = batch
            return True
        return False

    def _open_batch(
        self, tp: tuple[str, int], value: bytes, key: bytes, headers: Headers, on_done: Delivery
    ) -> _OpenBatch:
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > self._max_request_size:
            raise MessageSizeTooLargeError(
                f"the record is {size} bytes, over max_request_size "
                f"({self._max_request_size}, from CONNECTOR_KAFKA_MAX_BATCH_BYTES and "
                "CONNECTOR_WS_MAX_SIZE_BYTES)"
            )
        batch = _OpenBatch(self.client.create_batch())
        # A fresh builder takes its first record whatever its size.
        batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
        batch.callbacks.append(on_done)
        # Records arriving while send_batch waits join this one, behind this record.
        self._by_partition[tp] = self._by_key[tp[0], key] = batch
        return batch

    def _place_now(
        self, topic: str, value: bytes, key: bytes, headers: Headers, on_done: Delivery
    ) -> bool | tuple[tuple[str, int], _OpenBatch]:
        """Without waiting: True if the record joined its partition's open batch; a new
        batch (to hand over) if aiokafka takes one for that partition at once; False if
        placing it must wait (metadata to fetch, or an undrained batch ahead of it)."""
        partitions = self.client.client.cluster.partitions_for_topic(topic)
        if partitions is None:
            return False
        tp = self._partition_of(topic, key, partitions)
        if self._join_partition(tp, value, key, headers, on_done):
            return True
        accumulator = self._accumulator
        if self._batches is None or accumulator._closed or accumulator._exception is not None:
            return False  # the pump's send_batch says what is wrong
        full = self._open.pop(tp, None)
        if full is not None:
            self._hand_over_now(tp, full)  # the full batch first: per-partition order
        return tp, self._open_batch(tp, value, key, headers, on_done)

    def _flush_open(self) -> None:
        """The linger is over: every batch opened since goes to aiokafka, whose sender
        takes them in one request per broker."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        batches, self._open = self._open, {}
        for tp, batch in batches.items():
            self._hand_over_now(tp, batch)

    def _hand_over_now(self, tp: tuple[str, int], batch: _OpenBatch) -> None:
        """aiokafka's ``send_batch`` without its waits: the partition is known (from the
        metadata) and the batch queues behind the partition's undrained ones."""
        accumulator = self._accumulator
        failure = accumulator._exception
        if accumulator._closed or failure is not None:
            self._fail_open(tp, batch, copy.copy(failure) if failure else ProducerClosed())
            return
        handed = accumulator._append_batch(batch.builder, TopicPartition(*tp))
        handed.future.add_done_callback(partial(self._settled, tp, batch))

    def _fail_open(self, tp: tuple[str, int], batch: _OpenBatch, exc: BaseException) -> None:
        """A batch aiokafka never had fails: its records get ``exc`` through the loop."""
        batch.builder.close()
        batch.builder = _SETTLED
        if self._by_partition.get(tp) is batch:
            del self._by_partition[tp]
        callbacks, batch.callbacks = batch.callbacks, []
        if callbacks:
            asyncio.get_running_loop().call_soon(_settle_all, callbacks, exc)

    async def _drain_backlog(self) -> None:
        try:
            while self._backlog:
                topic, value, key, headers, on_done = self._backlog.popleft()
                try:
                    failure = await self._produce_waiting(topic, value, key, headers, on_done)
                except KafkaError as exc:  # before the record joined a batch
                    on_done(exc)
                    failure = exc
                if failure is not None and retriable(failure):
                    # The rest would wait as long again, one after another: they fail
                    # together now, and the sink resends them all in order.
                    self._fail_backlog(failure)
        finally:
            self._pump = None

    def _fail_backlog(self, exc: BaseException) -> None:
        failed = [entry[4] for entry in self._backlog]
        self._backlog.clear()
        if failed:
            asyncio.get_running_loop().call_soon(_settle_all, failed, exc)

    async def _produce_waiting(
        self, topic: str, value: bytes, key: bytes, headers: Headers, on_done: Delivery
    ) -> Exception | None:
        """The pump's way of placing a record: may wait for metadata and for aiokafka to
        take a new batch. Returns the failure its batch got, if any."""
        if self._join_key(topic, value, key, headers, on_done):
            return None
        # The key's batch is closed (drained, full, failed) or it has none: look its
        # partition up again (the metadata may have changed).
        try:
            partitions = await self.client.partitions_for(topic)
        except asyncio.CancelledError:
            on_done(asyncio.CancelledError())  # stopping: the sink has spooled it
            raise
        tp = self._partition_of(topic, key, partitions)
        if self._join_partition(tp, value, key, headers, on_done):
            return None
        lingering = self._open.pop(tp, None)
        if lingering is not None:  # it holds this partition's earlier records
            self._hand_over_now(tp, lingering)
        return await self._hand_over(tp, self._open_batch(tp, value, key, headers, on_done))

    async def _hand_over(
        self, tp: tuple[str, int], batch: _OpenBatch, own: Delivery | None = None
    ) -> Exception | None:
        """``send_batch``; its failure goes to every record of the batch as a delivery
        report through the loop (never inside a record's own produce), except to ``own``,
        the record whose caller awaits this: raised to it."""
        try:
            fut = await self.client.send_batch(batch.builder, tp[0], partition=tp[1])
        except BaseException as exc:
            batch.builder.close()
            if self._by_partition.get(tp) is batch:
                del self._by_partition[tp]
            others = [cb for cb in batch.callbacks if cb is not own]
            batch.callbacks.clear()
            failure = exc if isinstance(exc, Exception) else asyncio.CancelledError()
            if others:
                asyncio.get_running_loop().call_soon(_settle_all, others, failure)
            if own is not None or not isinstance(exc, Exception):
                raise
            return exc
        fut.add_done_callback(partial(self._settled, tp, batch))
        return None

    def _settled(self, tp: tuple[str, int], batch: _OpenBatch, fut: asyncio.Future[Any]) -> None:
        _settle(batch, fut)
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None and retriable(exc):
            self._fail_after(tp, exc)

    def _fail_after(self, tp: tuple[str, int], exc: BaseException) -> None:
        """A batch of ``tp`` failed (aiokafka expires one after request_timeout_ms without
        idempotence): its partition's later batches, which aiokafka would send next and
        which could be acknowledged before the failed one is resent, fail with it, and
        so does the backlog. The sink resends them all in their original order."""
        if self._batches is not None:
            for later in self._batches.pop(TopicPartition(*tp), ()):
                later.drain_ready()
                later.failure(exception=exc)
        lingering = self._open.pop(tp, None)
        if lingering is not None:
            self._fail_open(tp, lingering, exc)
        self._fail_backlog(exc)


class _Settled:
    """Stands for the builder of a batch that has its outcome: takes no record."""

    @staticmethod
    def append(**_: Any) -> None:
        return None

    @staticmethod
    def close() -> None:
        return None


_SETTLED = _Settled()


def _settle(batch: _OpenBatch, fut: asyncio.Future[Any]) -> None:
    # No record may join a batch that has an outcome (one that failed before the sender
    # built it would still take records), and the batch keeps neither its buffer nor its
    # records (the maps still point to it until the next record of its key).
    batch.builder.close()
    batch.builder = _SETTLED
    callbacks, batch.callbacks = batch.callbacks, []
    _settle_all(callbacks, asyncio.CancelledError() if fut.cancelled() else fut.exception())


def _settle_all(callbacks: list[Delivery], exc: BaseException | None) -> None:
    for on_done in callbacks:
        on_done(exc)
