"""Kafka sink against a real broker: pipelining, order, permanent failures, an outage."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from connector.errors import ConfigError
from connector.kafka.aio import (
    AioProducer,
    KeyPartitioner,
    batch_builder_modules,
    use_compression_level,
)
from connector.kafka.rdkafka import rdkafka_config
from connector.kafka.sink import KafkaSink
from connector.kafka.topics import ensure_topics
from connector.metrics import Metrics
from connector.settings import load_settings
from tests.conftest import Broker
from tests.harness import consume
from tests.netfault import cuttable_broker

pytestmark = pytest.mark.integration


def _settings(broker_env: dict[str, str], **kw: object):  # type: ignore[no-untyped-def]
    return load_settings(
        kafka_bootstrap_servers=broker_env["KAFKA_BOOTSTRAP_SERVERS"],
        kafka_enable_idempotence=broker_env["CONNECTOR_KAFKA_ENABLE_IDEMPOTENCE"] == "true",
        **kw,
    )


CLIENTS = pytest.mark.parametrize("client", ["aiokafka", "librdkafka"])


@CLIENTS
async def test_many_records_in_flight_all_acked_in_order(
    broker: Broker, topic_prefix: str, client: str
) -> None:
    topic = f"{topic_prefix}.sink"
    await ensure_topics(broker.bootstrap, [topic], 1, 1)
    metrics = Metrics()
    sink = KafkaSink(
        _settings(broker.env(), kafka_max_in_flight=500, kafka_client=client),
        broker.bootstrap,
        metrics,
    )
    await sink.start()
    route = metrics.route("bitstamp", "live_trades", "btcusd")
    for i in range(5000):
        await sink.send(topic, b"btcusd", b"%06d" % i, [("h", b"v")], route, 0.0)
    assert await sink.flush(30)
    assert await sink.close() == 0
    assert sink.delivered == 5000 and sink.failed == 0
    assert route.published == 5000
    values = await consume(broker.bootstrap, topic, 5000)
    assert values == [b"%06d" % i for i in range(5000)]


async def test_aiokafka_batches_settle_each_record_once_and_a_failed_handover_fails_its_joiners(
    broker: Broker, topic_prefix: str
) -> None:
    """The aiokafka producer appends records to their partition's open batch and settles
    them from the batch's one outcome. Every record gets exactly one outcome, in order;
    records that joined a batch whose hand-over to aiokafka failed get that failure (none
    is left without an outcome), and the next record starts a new batch."""
    from aiokafka.errors import KafkaTimeoutError

    topic = f"{topic_prefix}.batches"
    await ensure_topics(broker.bootstrap, [topic], 3, 1)
    sink = KafkaSink(_settings(broker.env()), broker.bootstrap, Metrics())
    await sink.start()
    producer = sink._producer
    assert isinstance(producer, AioProducer)
    outcomes: dict[bytes, list[BaseException | None]] = {}
    order: list[bytes] = []

    def on_done(value: bytes, exc: BaseException | None) -> None:
        outcomes.setdefault(value, []).append(exc)
        order.append(value)

    async def produce(key: bytes, value: bytes) -> None:
        await producer.produce(topic, value, key, [], partial(on_done, value))

    try:
        keys = [b"btcusd", b"ethusd", b"xrpusd", b"solusd"]
        for i in range(2000):  # many records per batch, interleaved keys
            await produce(keys[i % 4], b"%04d" % i)
        async with asyncio.timeout(30):
            while len(order) < 2000:
                await asyncio.sleep(0.01)
        assert all(v == [None] for v in outcomes.values()) and len(outcomes) == 2000
        for key in keys:  # each key's records settle in the order they were produced
            mine = [v for v in order if int(v) % 4 == keys.index(key)]
            assert mine == sorted(mine)

        # A hand-over through the pump (a topic whose metadata is not known yet) that
        # fails: the record's batch and the records queued behind it all get the
        # failure (retriable: the sink resends them in order); none is left without one.
        client = producer.client
        real = client.send_batch
        release = asyncio.Event()

        async def failing(batch: object, t: str, **kw: object) -> object:
            await release.wait()
            raise KafkaTimeoutError()

        fresh = f"{topic_prefix}.fresh"
        await ensure_topics(broker.bootstrap, [fresh], 1, 1)
        client.send_batch = failing
        for v in (b"first", b"j1", b"j2", b"j3"):
            await producer.produce(fresh, v, b"btcusd", [], partial(on_done, v))
        await asyncio.sleep(0.5)  # the pump fetched the metadata and waits in send_batch
        assert not any(v in outcomes for v in (b"first", b"j1", b"j2", b"j3"))
        release.set()
        await asyncio.sleep(0.05)
        for v in (b"first", b"j1", b"j2", b"j3"):
            assert len(outcomes[v]) == 1 and isinstance(outcomes[v][0], KafkaTimeoutError)
        client.send_batch = real
        await produce(b"btcusd", b"after")
        async with asyncio.timeout(10):
            while b"after" not in outcomes:
                await asyncio.sleep(0.01)
        assert outcomes[b"after"] == [None]
    finally:
        await sink.close()


async def test_batches_opened_within_the_linger_reach_kafka_in_one_request(
    broker: Broker, topic_prefix: str
) -> None:
    """The linger is one for all partitions: the first records of ten topics, produced
    within it, wait here and then go to aiokafka together, in one produce request, and
    every record is acknowledged."""
    topics = [f"{topic_prefix}.linger{i}" for i in range(10)]
    await ensure_topics(broker.bootstrap, topics, 1, 1)
    sink = KafkaSink(_settings(broker.env(), kafka_linger_ms=200), broker.bootstrap, Metrics())
    await sink.start()
    producer = sink._producer
    assert isinstance(producer, AioProducer)
    for topic in topics:  # metadata, and a first batch each, settled
        await producer.produce(topic, b"warm", b"k", [], lambda exc: None)
    await sink.flush(10)
    requests: list[int] = []
    real_send = producer.client.client.send

    async def counting(node_id: int, request: object, **kw: object) -> object:
        if type(request).__name__.startswith("ProduceRequest"):
            requests.append(sum(len(parts) for _, parts in request._topics))  # type: ignore[attr-defined]
        return await real_send(node_id, request, **kw)

    producer.client.client.send = counting  # type: ignore[method-assign]
    done: list[BaseException | None] = []
    try:
        for topic in topics:
            await producer.produce(topic, b"v", b"k", [], done.append)
            await asyncio.sleep(0.01)  # spread over 100 ms, within the 200 ms linger
        assert requests == [] and len(producer._open) == 10  # all still lingering here
        async with asyncio.timeout(10):
            while len(done) < 10:
                await asyncio.sleep(0.01)
        assert done == [None] * 10
        assert requests == [10]  # one request with the ten partitions
    finally:
        producer.client.client.send = real_send  # type: ignore[method-assign]
        await sink.close()


async def test_permanent_rejection_is_counted_not_silent(
    broker: Broker, topic_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"{topic_prefix}.big"
    await ensure_topics(broker.bootstrap, [topic], 1, 1)
    metrics = Metrics()
    settings = _settings(broker.env(), kafka_max_batch_bytes=16384, ws_max_size_bytes=65536)
    sink = KafkaSink(settings, broker.bootstrap, metrics)
    await sink.start()
    route = metrics.route("bitstamp", "order_book", "btcusd")
    await sink.send(topic, b"k", b"x" * 200_000, [], route, 0.0)  # over max_request_size
    await sink.send(topic, b"k", b"small", [], route, 0.0)
    assert await sink.flush(30)
    await sink.close()
    assert (sink.delivered, sink.failed) == (1, 1)
    failed = metrics.events_failed.labels(
        "bitstamp", "order_book", "btcusd", "MessageSizeTooLargeError"
    )
    assert failed._value.get() == 1
    assert "rejected a 200000-byte record" in caplog.text


@CLIENTS
async def test_outage_then_recovery_delivers_everything_in_order(
    caplog: pytest.LogCaptureFixture, client: str
) -> None:
    """Cuts the network to the broker mid-stream, then restores it.

    The embedded broker advertises the proxy's port, so every producer connection goes
    through the link we cut. The broker keeps its data: every record must be there, once,
    in order.
    """
    caplog.set_level(logging.INFO)
    topic = "outage.test"
    async with cuttable_broker() as (broker, link):
        bootstrap = broker.bootstrap
        await ensure_topics(bootstrap, [topic], 1, 1)
        metrics = Metrics()
        settings = load_settings(
            kafka_bootstrap_servers=bootstrap,
            kafka_enable_idempotence=False,
            kafka_request_timeout_ms=2000,
            kafka_retry_backoff_max_s=1.0,
            kafka_send_timeout_s=1.0,
            kafka_client=client,
        )
        sink = KafkaSink(settings, bootstrap, metrics)
        await sink.start()
        route = metrics.route("bitstamp", "live_trades", "btcusd")
        for i in range(100):
            await sink.send(topic, b"k", b"%04d" % i, [], route, 0.0)
        assert await sink.flush(20)
        await link.cut()
        for i in range(100, 300):
            await sink.send(topic, b"k", b"%04d" % i, [], route, 0.0)
        await asyncio.sleep(5)  # sends time out (2 s) and go to ordered retry
        assert sink.pending == 200 and sink.delivered == 100
        await link.restore()
        assert await sink.flush(60), f"{sink.pending} records still pending"
        await sink.close()
        values = await consume(bootstrap, topic, 300)
    assert sink.failed == 0 and sink.delivered == 300
    assert values == [b"%04d" % i for i in range(300)]  # all of them, once, in order
    assert "retrying in order" in caplog.text
    assert "Kafka sends recovered after" in caplog.text
    # the watchdog said once that Kafka was unreachable, with what it held
    assert caplog.text.count("Kafka unreachable since") == 1
    assert "(nothing acknowledged for 1s): 200 record(s) held in memory" in caplog.text
    assert (
        sum(
            s.value
            for m in metrics.send_retries.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )
        > 0
    )


async def test_auto_replication_factor_fits_the_cluster(broker: Broker, topic_prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    topic = f"{topic_prefix}.auto-rf"
    assert await ensure_topics(broker.bootstrap, [topic], 2, -1) == [topic]
    assert await ensure_topics(broker.bootstrap, [topic], 2, -1) == []  # exists: untouched
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        (desc,) = await admin.describe_topics([topic])
        brokers = len((await admin.describe_cluster())["brokers"])
    finally:
        await admin.close()
    assert len(desc["partitions"]) == 2
    assert all(len(p["replicas"]) == min(3, brokers) for p in desc["partitions"])


async def test_outage_spills_to_the_spool_and_replays_in_order(tmp_path) -> None:  # type: ignore[no-untyped-def]
    topic = "spool.test"
    async with cuttable_broker() as (broker, link):
        bootstrap = broker.bootstrap
        await ensure_topics(bootstrap, [topic], 1, 1)
        metrics = Metrics()
        settings = load_settings(
            kafka_bootstrap_servers=bootstrap,
            kafka_enable_idempotence=False,
            kafka_request_timeout_ms=2000,
            kafka_retry_backoff_max_s=1.0,
            kafka_max_in_flight=50,
            spool_dir=tmp_path / "spool",
        )
        sink = KafkaSink(settings, bootstrap, metrics)
        await sink.start()
        route = metrics.route("bitstamp", "live_trades", "btcusd")
        for i in range(100):
            await sink.send(topic, b"k", b"%05d" % i, [], route, 0.0)
        assert await sink.flush(20)
        await link.cut()
        async with asyncio.timeout(30):  # reading never stops: sends return during the outage
            for i in range(100, 3000):
                await sink.send(topic, b"k", b"%05d" % i, [("h", b"v")], route, 0.0)
                if i == 150:
                    await asyncio.sleep(3)  # let the first sends time out: retry mode
        assert sink.spooled > 2000 and sink.pending <= 50
        await asyncio.sleep(2)
        await link.restore()
        assert await sink.flush(90), f"{sink.pending} pending"
        async with asyncio.timeout(30):
            while sink._spooling:
                await asyncio.sleep(0.1)
        await sink.close()
        values = await consume(bootstrap, topic, 3000)
    assert values == [b"%05d" % i for i in range(3000)]  # all, once, in order
    assert metrics.replayed._value.get() == sink.spooled
    assert not list((tmp_path / "spool").glob("*.seg")) or all(
        p.stat().st_size == 0 for p in (tmp_path / "spool").glob("*.seg")
    )


async def test_shutdown_during_an_outage_keeps_records_for_the_next_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    topic = "spool.restart"
    async with cuttable_broker() as (broker, link):
        bootstrap = broker.bootstrap
        await ensure_topics(bootstrap, [topic], 1, 1)
        settings = load_settings(
            kafka_bootstrap_servers=bootstrap,
            kafka_enable_idempotence=False,
            kafka_request_timeout_ms=2000,
            kafka_retry_backoff_max_s=1.0,
            spool_dir=tmp_path / "spool",
        )
        first = KafkaSink(settings, bootstrap, Metrics())
        await first.start()
        route = Metrics().route("bitstamp", "live_trades", "btcusd")
        await link.cut()
        for i in range(300):
            await first.send(topic, b"k", b"%04d" % i, [], route, 0.0)
        with pytest.raises(ConfigError, match="in use by another connector process"):
            KafkaSink(settings, bootstrap, Metrics())  # one spool, one process
        assert await first.close(deadline_s=1.0) == 0  # none lost: all kept in the spool
        await link.restore()
        metrics = Metrics()
        second = KafkaSink(settings, bootstrap, metrics)  # the next start
        await second.start()
        await second.send(topic, b"k", b"new", [], route, 0.0)  # queues behind the spool
        assert await second.flush(60)
        async with asyncio.timeout(30):
            while second._spooling:
                await asyncio.sleep(0.1)
        await second.close()
        values = await consume(bootstrap, topic, 301)
    assert values == [b"%04d" % i for i in range(300)] + [b"new"]
    assert metrics.replayed._value.get() == 301  # the new record queued behind the spool


async def test_write_ahead_sends_through_the_spool_and_a_kill_replays_only_the_unacked(
    broker: Broker, topic_prefix: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    topic = f"{topic_prefix}.wal"
    await ensure_topics(broker.bootstrap, [topic], 1, 1)
    spool_dir = tmp_path / "spool"
    settings = _settings(
        broker.env(),
        spool_dir=spool_dir,
        spool_write_ahead=True,
        spool_watermark_interval_s=0.1,
    )
    metrics = Metrics()
    sink = KafkaSink(settings, broker.bootstrap, metrics)
    await sink.start()
    route = metrics.route("bitstamp", "live_trades", "btcusd")
    for i in range(2000):
        await sink.send(topic, b"k", b"%05d" % i, [("h", b"v")], route, 1.0)
    assert await sink.flush(30)
    assert metrics.spooled._value.get() == 2000  # every record went to disk first
    assert metrics.replayed._value.get() == 2000  # ... and reached Kafka from there
    assert metrics.ack_latency.sum > 0  # the receive time survived the disk
    await asyncio.sleep(0.5)  # the watermark is saved
    assert (spool_dir / "spool.ack").exists()
    # A kill: no close(). Anything written after the last watermark would come again;
    # everything acknowledged before it must not.
    for task in sink._tasks:
        task.cancel()
    await asyncio.gather(*sink._tasks, return_exceptions=True)
    await sink._stop_producer()
    spool = sink._spool
    assert spool is not None and sink._lock_fd is not None
    for f in (spool._writer, spool._reader):
        if f is not None:
            f.close()  # no Spool.close(): it would save the watermark once more
    os.close(sink._lock_fd)
    again = KafkaSink(settings, broker.bootstrap, Metrics())
    assert list(again.spooled_records()) == []
    await again.start()
    await again.send(topic, b"k", b"after", [], route, 1.0)
    assert await again.flush(30)
    await again.close()
    values = await consume(broker.bootstrap, topic, 2001)
    assert values == [b"%05d" % i for i in range(2000)] + [b"after"]


async def test_a_topic_that_disappeared_is_recreated_and_records_resent_in_order(
    broker: Broker, topic_prefix: str
) -> None:
    """The topic is deleted mid-stream. A broker without auto-creation then answers
    UnknownTopicOrPartition; the embedded broker recreates topics itself on produce, so
    here the producer's first sends to the topic fail as they would on such a broker
    (fault injection in the client, the broker is real). The sink recreates the topic
    with the configured partitions and resends everything in order."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import UnknownTopicOrPartitionError

    topic = f"{topic_prefix}.gone"
    await ensure_topics(broker.bootstrap, [topic], 3, 1)
    metrics = Metrics()
    settings = _settings(broker.env(), kafka_retry_backoff_max_s=0.5, topic_partitions=3)
    created: list[list[str]] = []

    async def creator(topics: list[str]) -> list[str]:
        made = await ensure_topics(broker.bootstrap, topics, 3, 1)
        created.append(made)
        return made

    sink = KafkaSink(settings, broker.bootstrap, metrics, creator)
    await sink.start()
    route = metrics.route("bitstamp", "live_trades", "btcusd")
    for i in range(100):
        await sink.send(topic, b"k", b"%04d" % i, [], route, 0.0)
    assert await sink.flush(20)
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        client = sink._producer.client  # type: ignore[union-attr]  # aiokafka's
        accumulator = client._message_accumulator
        real_append = accumulator._append_batch
        refusals = 5

        def append(builder: object, tp: Any) -> Any:
            # The batch aiokafka takes is refused as the broker would refuse it.
            nonlocal refusals
            batch = real_append(builder, tp)
            if tp.topic == topic and refusals:
                refusals -= 1
                accumulator._batches[tp].remove(batch)
                batch.drain_ready()
                batch.failure(exception=UnknownTopicOrPartitionError())
            return batch

        accumulator._append_batch = append
        for i in range(100, 200):
            await sink.send(topic, b"k", b"%04d" % i, [], route, 0.0)
        assert await sink.flush(30), f"{sink.pending} pending"
        (desc,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    await sink.close()
    values = await consume(broker.bootstrap, topic, 100)
    assert created and created[0] == [topic]  # recreated by the sink, at the first retry
    assert len(desc["partitions"]) == 3  # with the configured partitions
    assert metrics.topics_recreated._value.get() >= 1
    # the deleted topic's data is gone; what came after: once each, in order
    assert values == [b"%04d" % i for i in range(100, 200)]


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=20), st.integers(1, 64))
def test_key_partitioner_places_keys_as_the_default_one(keys: list[bytes], count: int) -> None:
    """The cached partitioner must put every key where aiokafka's (and the Java client's)
    default one does, or a key's records would change partition on upgrade."""
    partitions = list(range(count))
    cached = KeyPartitioner()
    for key in keys + keys:  # the second round is served from the cache
        assert cached(key, partitions, partitions) == DefaultPartitioner()(
            key, partitions, partitions
        )
    assert cached(None, partitions, [count - 1]) == count - 1  # keyless: an available one


@CLIENTS
async def test_keys_land_on_the_java_clients_partitions(
    broker: Broker, topic_prefix: str, client: str
) -> None:
    """Both producer libraries place a key where the Java client does (murmur2): a key's
    records stay on one partition when a deployment switches CONNECTOR_KAFKA_CLIENT, and
    keyed joins downstream see the usual layout. (librdkafka's own default partitioner,
    consistent_random, hashes with CRC32 instead.)"""
    topic = f"{topic_prefix}.keys"
    await ensure_topics(broker.bootstrap, [topic], 6, 1)
    metrics = Metrics()
    sink = KafkaSink(_settings(broker.env(), kafka_client=client), broker.bootstrap, metrics)
    await sink.start()
    route = metrics.route("bitstamp", "live_trades", "btcusd")
    keys = [m.encode() for m in ("btcusd", "ethusd", "xrpusd", "solusd", "ltcusd", "adausd")]
    keys += [b"market-%d" % i for i in range(30)]
    for key in keys:
        await sink.send(topic, key, key, [], route, 0.0)
    assert await sink.flush(30)
    await sink.close()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    placed: dict[bytes, int] = {}
    try:
        async with asyncio.timeout(30):
            while len(placed) < len(keys):
                for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                    placed.update((m.key, tp.partition) for m in msgs if m.key is not None)
    finally:
        await consumer.stop()
    expected = {k: DefaultPartitioner()(k, list(range(6)), list(range(6))) for k in keys}
    assert placed == expected
    assert len(set(placed.values())) > 1  # the keys did spread: the test can tell


@pytest.fixture
def aiokafka_codecs() -> Iterator[None]:
    """use_compression_level is process-wide: restore aiokafka's own functions after."""
    modules, legacy = batch_builder_modules()
    names = ("lz4_encode", "zstd_encode", "gzip_encode")
    saved = [(m, n, getattr(m, n)) for m in modules + legacy for n in names if hasattr(m, n)]
    yield
    for module, name, value in saved:
        setattr(module, name, value)


def _batch(compression: int) -> bytes:
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 22,
    )
    for i in range(50):  # book-like values: compressible, as the connector's are
        level = b"".join(b"%d.%02d\x0a0.%05d" % (60000 + j, i % 100, j * 7) for j in range(100))
        builder.append(i, timestamp=1_700_000_000_000, key=b"btcusd", value=level, headers=[])
    return bytes(builder.build())


@pytest.mark.parametrize("codec,code", [("lz4", 3), ("zstd", 4), ("gzip", 1)])
def test_aiokafka_batches_are_compressed_at_the_configured_level(
    aiokafka_codecs: None, codec: str, code: int
) -> None:
    """aiokafka has no level setting; the connector binds one into the functions its batch
    builders call. The compressed part of a batch must be exactly the codec's output at
    that level (an aiokafka upgrade that stops calling them fails here)."""
    from aiokafka import codec as aiokafka_codec

    header = 61  # a v2 record batch's header; what follows is the (compressed) records
    records = _batch(0)[header:]
    encode = getattr(aiokafka_codec, f"{codec}_encode")
    keyword = "compresslevel" if codec == "gzip" else "level"
    sizes = {}
    for level in (1, 9):
        use_compression_level(codec, level)
        body = _batch(code)[header:]
        if codec == "gzip":  # gzip embeds a timestamp: compare what it decompresses to
            assert aiokafka_codec.gzip_decode(body) == records
            sizes[level] = len(body)
            assert abs(len(body) - len(encode(records, **{keyword: level}))) <= 16
        else:
            assert body == encode(records, **{keyword: level})
            sizes[level] = len(body)
    assert sizes[9] != sizes[1]  # the level changed what was built


def test_librdkafka_gets_the_compression_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_KAFKA_COMPRESSION", "zstd")
    monkeypatch.setenv("CONNECTOR_KAFKA_COMPRESSION_LEVEL", "7")
    settings = load_settings()
    config = rdkafka_config(settings, "127.0.0.1:9092", {"security_protocol": "PLAINTEXT"})
    assert (config["compression.type"], config["compression.level"]) == ("zstd", 7)
    monkeypatch.setenv("CONNECTOR_KAFKA_COMPRESSION", "snappy")
    monkeypatch.delenv("CONNECTOR_KAFKA_COMPRESSION_LEVEL")
    config = rdkafka_config(load_settings(), "127.0.0.1:9092", {"security_protocol": "PLAINTEXT"})
    assert "compression.level" not in config  # snappy has no levels
