"""The compiled Avro writer is byte-for-byte fastavro's output, on generated events."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.encoding.avro import load_schemas
from connector.encoding.writer import compile_writer, zigzag
from connector.errors import SchemaError
from connector.events import (
    BookDelta,
    BookSnapshot,
    FundingRate,
    MarketEvent,
    OrderEvent,
    OrderEventType,
    Side,
    Trade,
)

SCHEMAS = load_schemas()
WRITERS = {name: compile_writer(s.source) for name, s in SCHEMAS.items()}

text = st.text(max_size=80)  # includes non-ASCII and strings of 64+ characters
short = st.text(alphabet="0123456789.", min_size=1, max_size=20)
longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
maybe = st.none() | text


def common() -> dict[str, Any]:
    return {
        "exchange": text,
        "market": text,
        "channel": text,
        "exchange_ts_us": longs,
        "exchange_ts_raw": text,
        "receive_ts_us": longs,
        "connection_id": text,
        "sequence": longs,
        "extra": st.dictionaries(text, text, max_size=3),
    }


levels2 = st.tuples(short | text, short | text)
levels3 = st.tuples(short | text, short | text, short | text)
books = (
    st.lists(levels2, max_size=30)
    | st.lists(levels3, max_size=30)
    | st.lists(levels2 | levels3, max_size=10)
)

events = st.one_of(
    st.builds(
        Trade,
        **common(),
        trade_id=text,
        price=text,
        amount=text,
        side=st.sampled_from(Side),
        buy_order_id=maybe,
        sell_order_id=maybe,
    ),
    st.builds(
        OrderEvent,
        **common(),
        event_type=st.sampled_from(OrderEventType),
        order_id=text,
        side=st.sampled_from(Side),
        price=text,
        amount=text,
        amount_at_create=maybe,
        amount_traded=maybe,
        order_subtype=st.none() | st.integers(-(2**31), 2**31 - 1),
        is_liquidation=st.none() | st.booleans(),
        datetime_raw=maybe,
        event_id=maybe,
        pre_event_id=maybe,
        order_source=maybe,
    ),
    st.builds(
        BookSnapshot,
        **common(),
        bids=books.map(tuple),
        asks=books.map(tuple),
        exchange_sequence=st.none() | longs,
    ),
    st.builds(
        BookDelta,
        **common(),
        bids=books.map(tuple),
        asks=books.map(tuple),
        exchange_sequence=st.none() | longs,
    ),
    st.builds(
        FundingRate,
        **common(),
        funding_rate=text,
        mark_price=maybe,
        index_price=maybe,
        next_funding_time_us=st.none() | longs,
        next_funding_time_raw=maybe,
    ),
)


def fastavro_bytes(event: MarketEvent) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SCHEMAS[event.SCHEMA].parsed, event.to_record())
    return buf.getvalue()


@settings(max_examples=600, deadline=None)
@given(events)
def test_compiled_writer_equals_fastavro(event: MarketEvent) -> None:
    assert WRITERS[event.SCHEMA](event) == fastavro_bytes(event)


def test_book_with_many_levels_uses_the_same_bytes() -> None:
    levels = tuple((f"{37000 + i}.5", f"0.{i:08d}") for i in range(100))
    ids = tuple((p, a, str(10**18 + i)) for i, (p, a) in enumerate(levels))
    # Strings the one-character length prefix cannot carry take the generic path: 64
    # characters (a two-byte varint), 300 (not a byte at all), non-ASCII (bytes ≠ chars).
    odd = (("1" * 64, "2"), ("3", "4" * 300), ("é", "5"), ("6", "7"))
    odd_ids = tuple((p, a, "9" * 70) for p, a in odd)
    cases = ((levels, levels), (ids, ids), (levels, ()), (odd, levels), (ids, odd_ids))
    for bids, asks in cases:
        event = _book(bids, asks)
        assert WRITERS[event.SCHEMA](event) == fastavro_bytes(event)


# Every boundary of the 14-bit tables, and of the varint's byte count.
_EDGES = [0, 1, -1, 63, -64, 64, 8191, -8192, 8192, 2**62, 2**63 - 1, -(2**63)] + [
    sign * (2 ** (bits - 1)) + delta
    for bits in (7, 14, 21, 28, 35, 42, 49, 56, 63)
    for sign in (1, -1)
    for delta in (-1, 0, 1)
    if -(2**63) <= sign * (2 ** (bits - 1)) + delta < 2**63
]


def _fastavro_long(n: int) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", n)
    return buf.getvalue()


@pytest.mark.parametrize("n", _EDGES)
def test_zigzag_matches_the_spec(n: int) -> None:
    assert zigzag(n) == _fastavro_long(n)


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.integers(-(2**20), 2**20))
def test_zigzag_matches_fastavro_for_every_long(n: int) -> None:
    assert zigzag(n) == _fastavro_long(n)


@pytest.mark.parametrize("n", [2**63, 2**64, 2**100, -(2**63) - 1, -(2**80)])
def test_zigzag_refuses_what_is_not_a_64_bit_long(n: int) -> None:
    with pytest.raises(ValueError, match="64 bits"):
        zigzag(n)


def test_unsupported_schemas_are_rejected_at_compile_time() -> None:
    with pytest.raises(SchemaError, match="unions"):
        compile_writer(
            {"type": "record", "name": "X", "fields": [{"name": "a", "type": ["string", "long"]}]}
        )
    with pytest.raises(SchemaError, match="fixed"):
        compile_writer({"type": "record", "name": "X", "fields": [{"name": "a", "type": "fixed"}]})
    with pytest.raises(SchemaError, match="must be a record"):
        compile_writer({"type": "enum", "name": "E", "symbols": ["A"]})


@pytest.mark.parametrize(
    "field, value",
    [
        ("sequence", 1.5),  # long
        ("sequence", True),  # a bool is not an Avro long
        ("sequence", 2**63),  # beyond 64 bits
        ("price", 1),  # string
        ("price", b"1"),
        ("backfilled", 1),  # boolean
        ("side", "SIDEWAYS"),  # enum
        ("buy_order_id", 7),  # [null, string]
        ("extra", {"k": 1}),  # map of strings
    ],
)
def test_wrong_types_raise_instead_of_writing_garbage(field: str, value: object) -> None:
    from connector.encoding.avro import single_object_encoder
    from connector.errors import EncodeError

    fields: dict[str, Any] = {
        "exchange": "bitstamp",
        "market": "m",
        "channel": "c",
        "exchange_ts_us": 1,
        "exchange_ts_raw": "1",
        "receive_ts_us": 1,
        "connection_id": "c",
        "sequence": 1,
        "trade_id": "1",
        "price": "1",
        "amount": "1",
        "side": Side.BUY,
    }
    good = Trade(**fields)
    encoder = single_object_encoder(SCHEMAS[good.SCHEMA])
    assert encoder.encode(good)  # the same event with good values encodes
    with pytest.raises(EncodeError, match=r"does not fit connector\.Trade"):
        encoder.encode(Trade(**{**fields, field: value}))


def _book(bids: Any, asks: Any = (("2", "1"),)) -> BookSnapshot:
    return BookSnapshot(
        exchange="bitstamp",
        market="btcusd",
        channel="order_book",
        exchange_ts_us=1,
        exchange_ts_raw="1",
        receive_ts_us=2,
        connection_id="c",
        sequence=3,
        bids=bids,
        asks=asks,
    )


@pytest.mark.parametrize(
    "bad",
    [
        (b"1", "2"),  # bytes: an f-string alone would write "b'1'"
        (["1"], "2"),  # a list: it has a len() and would be formatted as "['1']"
        ("1", 2),
        (None, "2"),
        ("1",),  # too few fields
        ("1", "2", "3", "4"),  # too many
        ("1", "2", b"3"),  # an order id of the wrong type
    ],
)
@pytest.mark.parametrize("first", [True, False])
def test_wrong_types_in_book_levels_raise(bad: tuple[Any, ...], first: bool) -> None:
    from connector.encoding.avro import single_object_encoder
    from connector.errors import EncodeError

    good = ("37000.5", "0.1")
    encoder = single_object_encoder(SCHEMAS["connector.BookSnapshot"])
    assert encoder.encode(_book((good, good)))
    with pytest.raises(EncodeError, match=r"does not fit connector\.BookSnapshot"):
        encoder.encode(_book((bad, good) if first else (good, bad)))


def test_null_order_ids_and_mixed_widths_match_fastavro() -> None:
    cases = [
        (("1", "2", None), ("3", "4", "5")),  # a null id in three-wide levels
        (("1", "2", "9"), ("3", "4")),  # three-wide first, then two-wide
        (("1", "2"), ("3", "4", "5")),
        (("1", "2"), ("3", "4", None)),
    ]
    for bids in cases:
        event = _book(bids)
        assert WRITERS[event.SCHEMA](event) == fastavro_bytes(event)
