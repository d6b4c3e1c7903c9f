"""Kafka sink: acks=all, bounded, pipelined, ordered retries, nothing dropped silently.

Design (after aiokafka's accumulator/sender split):
- ``send`` takes one of ``max_in_flight`` slots (backpressure: the caller waits when
  Kafka is slow) and hands the record to aiokafka without awaiting the ack, so many
  records are in flight and batched. Records join their partition's open batch through
  aiokafka's batch interface; one future per batch settles its records (``AioProducer``).
- An ack (acks=all) frees the slot. A retriable failure (timeout, no leader, unknown
  topic, connection loss) switches the sink to *retry mode*: new records queue behind the
  failed ones, in-flight records settle, then everything is resent in original order
  (aiokafka keeps one batch per partition in flight, so per-partition order holds).
  Backoff between rounds is capped, jittered exponential.
- A non-retriable failure (e.g. record too large) is counted and logged with its topic.
- A topic that disappeared (``UnknownTopicOrPartition``: a broker restarted without
  persistence, an operator deleted it) is recreated with the configured partitions and
  replication (``topic_creator``, when topic creation is on) before the next retry round.
- Every attempt is bounded in time: aiokafka expires a batch after request_timeout_ms
  (without idempotence); with idempotence aiokafka retries forever by design. A
  watchdog logs Kafka unreachable once records wait ``kafka_send_timeout_s`` with no
  acknowledgement, every 30 s while it lasts, and restored.
- ``send`` never waits on the broker itself: aiokafka's waits (an undrained batch of
  the partition, metadata) happen in ``AioProducer``'s backlog pump, so the WebSocket
  reader keeps reading through an outage.
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
import fcntl
import heapq
import logging
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    BrokerResponseError,
    KafkaError,
    MessageSizeTooLargeError,
    UnknownTopicOrPartitionError,
)
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from connector.errors import ConfigError, DeliveryError, SpoolInUse
from connector.kafka_security import client_options
from connector.metrics import Metrics, RouteMetrics
from connector.settings import Settings
from connector.spool import Spool, SpooledRecord, SpoolFull

if TYPE_CHECKING:
    from connector.rdkafka import RdKafkaProducer

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
    ``zstd_encode`` and ``gzip_encode`` with their default levels (lz4 9, the slow
    high-compression mode: ~47 µs per 100-level book record, against ~3.4 µs at 1 for a
    batch ~15 % larger). The builders look those names up in their own modules at call
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


OUTAGE_NOTE_S = 30.0  # how often an outage is logged while it lasts
DEFAULT_SPOOL_SLOTS = 8  # connectors on one machine sharing the default place


def default_spool_base() -> Path:
    """Where spools go when CONNECTOR_SPOOL_DIR is unset: the XDG state directory."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "exchange-connector"


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
    which librdkafka's (``connector.rdkafka``) shares: ``produce`` hands a record over and
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

    ``produce`` never waits on Kafka. aiokafka's ``send_batch`` waits while its
    accumulator still holds an undrained batch of that partition, and looks metadata up
    for a topic it does not know: while the broker is unreachable, that is up to
    ``request_timeout_ms`` per call, and the caller (the WebSocket reader) would stop
    reading, its heartbeat replies unread, until the exchange connection is declared
    dead. So a record that cannot be placed at once joins a backlog, in order, and one
    pump task hands the backlog to aiokafka with those waits; while the backlog is not
    empty every record joins it (per-partition order). Memory stays bounded by the
    sink's in-flight slots, which every record here holds."""

    __slots__ = (
        "_backlog",
        "_batches",
        "_by_key",
        "_by_partition",
        "_max_request_size",
        "_partitioner",
        "_pump",
        "client",
    )

    def __init__(
        self, client: AIOKafkaProducer, partitioner: KeyPartitioner, max_request_size: int
    ) -> None:
        self.client = client
        self._partitioner = partitioner
        self._max_request_size = max_request_size
        self._by_key: dict[tuple[str, bytes], _OpenBatch] = {}  # the batch a key used last
        self._by_partition: dict[tuple[str, int], _OpenBatch] = {}
        self._backlog: deque[tuple[str, bytes, bytes, Headers, Delivery]] = deque()
        self._pump: asyncio.Task[None] | None = None
        # aiokafka's undrained batches per partition (its accumulator's own map): where
        # one is pending, send_batch would wait. Without it (another aiokafka), every new
        # batch goes through the pump, which may wait.
        self._batches: dict[Any, Any] | None = getattr(
            getattr(client, "_message_accumulator", None), "_batches", None
        )

    async def start(self) -> None:
        await self.client.start()

    async def stop(self) -> None:
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
                # Nothing of this partition is undrained and its metadata is known:
                # send_batch returns without waiting. A failure is this record's to raise.
                await self._hand_over(*placed, own=on_done)
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
        if self._batches is None or self._batches.get(TopicPartition(*tp)):
            return False
        return tp, self._open_batch(tp, value, key, headers, on_done)

    async def _drain_backlog(self) -> None:
        try:
            while self._backlog:
                topic, value, key, headers, on_done = self._backlog.popleft()
                try:
                    failure = await self._produce_waiting(topic, value, key, headers, on_done)
                except KafkaError as exc:  # before the record joined a batch
                    on_done(exc)
                    failure = exc
                if failure is not None and _retriable(failure):
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
        if exc is not None and _retriable(exc):
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


def _retriable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retriable", False)) or isinstance(exc, asyncio.TimeoutError)


class KafkaSink:
    def __init__(self, settings: Settings, bootstrap_servers: str, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        # First: a spool in use by another process is a configuration error, raised
        # before anything that needs closing exists.
        self._lock_fd: int | None = None
        self._spool: Spool | None = None
        if settings.spool_dir is not None:
            self._spool = self._open_spool(settings, settings.spool_dir)
        elif settings.spool:
            self._spool = self._open_default_spool(settings)
        self._producer: AioProducer | RdKafkaProducer
        if settings.kafka_client == "librdkafka":
            from connector.rdkafka import RdKafkaProducer, rdkafka_config

            try:
                config = rdkafka_config(settings, bootstrap_servers, client_options(settings))
                self._producer = RdKafkaProducer(config, settings.kafka_request_timeout_ms / 1000)
            except ImportError as exc:
                raise ConfigError(
                    "CONNECTOR_KAFKA_CLIENT=librdkafka needs confluent-kafka: "
                    "pip install 'exchange-kafka-connector[librdkafka]'"
                ) from exc
        else:
            use_compression_level(settings.kafka_compression, settings.compression_level)
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
                linger_ms=settings.kafka_linger_ms,
                max_batch_size=settings.kafka_max_batch_bytes,
                max_request_size=max_request_size,
                request_timeout_ms=settings.kafka_request_timeout_ms,
                partitioner=partitioner,
                **client_options(settings),
            )
            self._producer = AioProducer(client, partitioner, max_request_size)
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
        # Creates missing topics, returns the names created (set by the app when
        # topic creation is on); used when a topic disappears.
        self.topic_creator: Callable[[list[str]], Awaitable[list[str]]] | None = None
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

    def _open_default_spool(self, settings: Settings) -> Spool | None:
        """The spool in its default place, or in the first free sibling (another
        connector on this machine holds it); None, with a warning, if none can be used."""
        base = default_spool_base()
        reasons = []
        for slot in range(DEFAULT_SPOOL_SLOTS):
            directory = base / ("spool" if slot == 0 else f"spool-{slot}")
            try:
                spool = self._open_spool(settings, directory)
            except SpoolInUse as exc:
                reasons.append(str(exc))
                continue
            except ConfigError as exc:
                reasons.append(str(exc))
                break
            log.info(
                "spool at %s: what Kafka has not taken past kafka_max_in_flight records goes "
                "there (CONNECTOR_SPOOL_DIR sets the place, CONNECTOR_SPOOL=false turns it off)",
                directory,
            )
            return spool
        log.warning(
            "no spool (%s): once kafka_max_in_flight records are unacknowledged, reading "
            "waits for Kafka; set CONNECTOR_SPOOL_DIR to a writable directory",
            "; ".join(reasons),
        )
        return None

    def _open_spool(self, settings: Settings, directory: Path) -> Spool:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(directory / "spool.lock", os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            raise ConfigError(f"spool_dir (CONNECTOR_SPOOL_DIR) {directory}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolInUse(
                f"spool_dir (CONNECTOR_SPOOL_DIR) {directory} is in use by another connector "
                "process; give each process its own directory"
            ) from None
        self._lock_fd = fd
        return Spool(
            directory,
            segment_bytes=settings.spool_segment_bytes,
            max_bytes=settings.spool_max_bytes,
            fsync=settings.spool_fsync,
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
        if _retriable(exc) and not self._closing:
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
        if self.topic_creator is None:
            log.error(
                "topic(s) %s unknown to Kafka and topic creation is off "
                "(CONNECTOR_CREATE_TOPICS=false): retrying until they exist",
                ", ".join(topics),
            )
            return
        try:
            created = await asyncio.wait_for(
                self.topic_creator(topics), self._settings.kafka_request_timeout_ms / 1000
            )
        except (DeliveryError, TimeoutError) as exc:
            log.error("cannot recreate topic(s) %s: %s; retrying", ", ".join(topics), exc)
            self._missing_topics.update(topics)
            return
        if created:
            self._metrics.topics_recreated.inc(len(created))
            log.warning(
                "topic(s) %s had disappeared (a broker restarted without persistence, or "
                "deleted): recreated; records resend in order",
                ", ".join(created),
            )

    async def _save_watermarks(self) -> None:
        """Persists how far Kafka acknowledged the spool (bounds a crash's replay)."""
        assert self._spool is not None
        while True:
            await asyncio.sleep(self._settings.spool_watermark_interval_s)
            self._spool.save_watermark()

    async def _watchdog(self) -> None:
        """One log line per state change of Kafka's availability, not one per client
        retry: unreachable (nothing acknowledged for kafka_send_timeout_s while records wait,
        or ordered retries under way), every OUTAGE_NOTE_S while it lasts, restored."""
        after = self._settings.kafka_send_timeout_s
        down_at = 0.0  # monotonic; 0 while Kafka takes records
        next_note = 0.0
        delivered_before = replayed_before = 0
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            oldest = next(iter(self._unacked.values()), None)
            waiting = (
                oldest is not None
                and now - oldest.first_sent > after
                and now - self._last_ack > after
            )
            if not down_at:
                if waiting or self._retrying:
                    down_at = min(now, oldest.first_sent) if oldest is not None else now
                    next_note = down_at + OUTAGE_NOTE_S
                    delivered_before, replayed_before = self.delivered, self._replayed
                    since = time.strftime("%H:%M:%S", time.gmtime(time.time() - (now - down_at)))
                    log.warning(
                        "Kafka unreachable since %s UTC (%s): %s; reading goes on",
                        since,
                        self._last_error or f"nothing acknowledged for {after:.0f}s",
                        self._held(),
                    )
            elif not waiting and not self._retrying:
                log.info(
                    "Kafka restored after %.0fs: %d record(s) delivered since, %d of them "
                    "replayed from the spool; %s",
                    now - down_at,
                    self.delivered - delivered_before,
                    self._replayed - replayed_before,
                    self._held(),
                )
                down_at = 0.0
            elif now >= next_note:
                next_note += OUTAGE_NOTE_S
                log.warning(
                    "Kafka still unreachable after %.0fs (%s): %s",
                    now - down_at,
                    self._last_error or "no acknowledgement",
                    self._held(),
                )

    def _held(self) -> str:
        spooled = "" if self._spool is None else f", {self._spool.records} in the spool"
        return f"{self._pending} record(s) held in memory{spooled}"
