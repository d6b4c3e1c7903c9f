"""The one-pass produce request and response (connector.kafka.produce_wire): byte for byte
aiokafka's own encoding and decoding, for every version they stand in for, and what a
real broker accepts and answers."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.producer import sender as aiokafka_sender
from aiokafka.protocol import produce as aiokafka_produce
from hypothesis import given
from hypothesis import strategies as st

from connector.kafka import produce_wire
from connector.kafka.aio import AioProducer
from connector.kafka.sink import KafkaSink
from connector.kafka.topics import ensure_topics
from connector.metrics import Metrics
from connector.settings import load_settings
from tests.conftest import Broker
from tests.harness import consume

VERSIONS = range(3, 8)
topic_names = st.text(min_size=1, max_size=40)
records = st.one_of(st.none(), st.binary(max_size=300), st.binary(max_size=50).map(bytearray))
partitions = st.lists(st.tuples(st.integers(0, 2**31 - 1), records), max_size=4)
request_topics = st.lists(st.tuples(topic_names, partitions), max_size=4)
int16 = st.integers(-(2**15), 2**15 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)


@given(
    version=st.sampled_from(VERSIONS),
    transactional_id=st.one_of(st.none(), st.text(max_size=20)),
    acks=st.sampled_from([-1, 0, 1]),
    timeout=int32,
    topics=request_topics,
)
def test_a_request_is_encoded_as_aiokafka_encodes_it(
    version: int,
    transactional_id: str | None,
    acks: int,
    timeout: int,
    topics: list[tuple[str, list[tuple[int, bytes | None]]]],
) -> None:
    theirs = getattr(aiokafka_produce, f"ProduceRequest_v{version}")
    ours = produce_wire.REQUESTS[version]
    assert issubclass(ours, theirs) and ours.RESPONSE_TYPE is not theirs.RESPONSE_TYPE
    args = (transactional_id, acks, timeout, topics)
    assert ours(*args).encode() == theirs(*args).encode()


@given(
    version=st.sampled_from(VERSIONS),
    data=st.data(),
    throttle=int32,
)
def test_a_response_is_decoded_as_aiokafka_decodes_it(
    version: int, data: st.DataObject, throttle: int
) -> None:
    fields = (st.integers(0, 2**31 - 1), int16, int64, int64) + ((int64,) if version >= 5 else ())
    results = st.lists(st.tuples(*fields), max_size=4)
    topics = data.draw(st.lists(st.tuples(topic_names, results), max_size=4))
    theirs = getattr(aiokafka_produce, f"ProduceResponse_v{version}")
    raw = theirs(topics, throttle).encode()
    expected = theirs.decode(raw)
    got = produce_wire.REQUESTS[version].RESPONSE_TYPE.decode(raw)
    assert isinstance(got, theirs) and version == got.API_VERSION
    assert got.throttle_time_ms == expected.throttle_time_ms
    assert [(t, [tuple(p) for p in ps]) for t, ps in got.topics] == [
        (t, [tuple(p) for p in ps]) for t, ps in expected.topics
    ]


def test_a_truncated_response_is_a_value_error_as_with_aiokafka() -> None:
    theirs = aiokafka_produce.ProduceResponse_v7
    raw = theirs([("bench.t", [(0, 0, 5, -1, 0)])], 0).encode()
    for cut in (3, 10, len(raw) - 1):
        with pytest.raises(ValueError):
            produce_wire.REQUESTS[7].RESPONSE_TYPE.decode(raw[:cut])


def test_versions_below_3_keep_aiokafka_s_classes() -> None:
    request = produce_wire.ProduceRequest(None, -1, 1000, [("t", [(0, b"x")])])
    assert type(request.prepare({0: (0, 2)})) is aiokafka_produce.ProduceRequest_v2
    assert type(request.prepare({0: (0, 7)})) is produce_wire.REQUESTS[7]


@pytest.mark.integration
async def test_the_broker_takes_the_requests_and_its_answers_settle_every_record(
    broker: Broker, topic_prefix: str
) -> None:
    """The aiokafka sink's producer sends with these classes (installed when it is made),
    the broker negotiates one of their versions, and every record is acknowledged and
    read back in order, across topics and requests."""
    topics = [f"{topic_prefix}.wire{i}" for i in range(3)]
    await ensure_topics(broker.bootstrap, topics, 1, 1)
    env = broker.env()
    settings = load_settings(
        kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
        kafka_enable_idempotence=env["CONNECTOR_KAFKA_ENABLE_IDEMPOTENCE"] == "true",
    )
    sink = KafkaSink(settings, broker.bootstrap, Metrics())
    await sink.start()
    producer = sink._producer
    assert isinstance(producer, AioProducer)
    assert aiokafka_sender.ProduceRequest is produce_wire.ProduceRequest
    outcomes: list[BaseException | None] = []
    try:
        for i in range(300):
            topic = topics[i % 3]
            await producer.produce(topic, str(i).encode(), b"k", [], outcomes.append)
            if i % 50 == 0:
                await asyncio.sleep(0.01)  # several requests
        async with asyncio.timeout(20):
            while len(outcomes) < 300:
                await asyncio.sleep(0.01)
        conns = list(producer.client.client._conns.values())
        negotiated = produce_wire.ProduceRequest(None, -1, 1, []).prepare(conns[0]._versions)
    finally:
        await sink.close()
    assert outcomes == [None] * 300
    assert type(negotiated) in produce_wire.REQUESTS.values()
    for t, topic in enumerate(topics):
        got = await consume(broker.bootstrap, topic, 100, timeout=20)
        assert got == [str(i).encode() for i in range(t, 300, 3)]
