"""Router and schema registry client (against a local fake of the Confluent REST API)."""

from __future__ import annotations

import pytest

from connector.encoding.avro import AvroDecoder, load_schemas
from connector.encoding.registry import SchemaRegistryClient
from connector.errors import SchemaError
from connector.exchanges.bitstamp.decoder import BitstampDecoder
from connector.kafka.router import Router, topic_name
from connector.metrics import Metrics
from tests import frames as F
from tests.fake_registry import FakeRegistry


def test_default_topic_template() -> None:
    assert topic_name("{exchange}.{channel}.{market}", "bitstamp", "live_trades", "btcusd") == (
        "bitstamp.live_trades.btcusd"
    )


async def test_single_object_route() -> None:
    router = Router("{exchange}.{channel}.{market}", load_schemas(), Metrics())
    route = await router.prepare("bitstamp", "live_trades", "btcusd-perp", "connector.Trade")
    assert route.topic == "bitstamp.live_trades.btcusd-perp"
    assert route.key == b"btcusd-perp"
    assert dict(route.headers) == {
        "schema": b"connector.Trade",
        "content-type": b"application/avro; format=single-object",
    }
    assert router.get("bitstamp", "live_trades", "btcusd-perp") is route


async def test_confluent_route_registers_topic_value_subject() -> None:
    schemas = load_schemas()
    with FakeRegistry() as fake:
        registry = SchemaRegistryClient(fake.url)
        router = Router("{exchange}.{channel}.{market}", schemas, Metrics(), registry)
        trades = await router.prepare("bitstamp", "live_trades", "btcusd", "connector.Trade")
        again = await router.prepare("bitstamp", "live_trades", "ethusd", "connector.Trade")
        book = await router.prepare("bitstamp", "order_book", "btcusd", "connector.BookSnapshot")
        await registry.close()
    assert set(fake.subjects) == {
        "bitstamp.live_trades.btcusd-value",
        "bitstamp.live_trades.ethusd-value",
        "bitstamp.order_book.btcusd-value",
    }
    assert trades.encoder.prefix == b"\x00" + fake.subjects["bitstamp.live_trades.btcusd-value"][
        0
    ].to_bytes(4, "big")
    assert trades.encoder.prefix == again.encoder.prefix  # same schema, same id
    assert book.encoder.prefix != trades.encoder.prefix
    assert dict(trades.headers)["content-type"] == b"application/vnd.confluent.avro"
    # A consumer resolves the id through the registry and decodes.
    (event,) = BitstampDecoder("c").feed(F.raw(F.TRADE), 1)
    value = trades.encoder.encode(event)  # type: ignore[arg-type]
    decoder = AvroDecoder([])
    sid = decoder.schema_id(value)
    assert sid is not None
    decoder.add_schema_id(sid, fake.schemas[sid])
    assert decoder.decode(value)[1]["trade_id"] == "316811409"


async def test_registry_retries_transient_errors_and_reports_permanent_ones() -> None:
    with FakeRegistry() as fake:
        fake.fail_next = [503, 500]
        client = SchemaRegistryClient(fake.url, retry_for_s=10)
        assert await client.register("a-value", '{"type":"string"}') == 1
        with pytest.raises(SchemaError, match="answered 422"):
            await client.register("a-value", "not json")
        with pytest.raises(SchemaError, match="answered 404"):
            await client.schema_by_id(99)
        await client.close()


async def test_unreachable_registry_is_a_clear_error() -> None:
    client = SchemaRegistryClient("http://127.0.0.1:9", timeout_s=0.5, retry_for_s=1)
    with pytest.raises(SchemaError, match="unreachable"):
        await client.register("x-value", '{"type":"string"}')
    await client.close()
