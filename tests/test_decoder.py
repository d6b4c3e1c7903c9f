"""Pure decoder: documented frames, edge cases, and a property test on arbitrary input."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.errors import ProtocolError
from connector.events import (
    BookDelta,
    BookSnapshot,
    ExchangeError,
    FundingRate,
    HeartbeatReply,
    OrderEvent,
    OrderEventType,
    ReconnectRequested,
    Side,
    SubscriptionSucceeded,
    Trade,
    UnsubscriptionSucceeded,
)
from connector.exchanges.bitstamp.decoder import BitstampDecoder
from tests import frames as F


def one(frame: dict[str, Any] | bytes | str, dec: BitstampDecoder | None = None) -> Any:
    dec = dec or BitstampDecoder("conn-1")
    data = frame if isinstance(frame, bytes | str) else F.raw(frame)
    out = dec.feed(data, 1_700_000_001_000_000)
    assert len(out) == 1
    return out[0]


def test_trade_keeps_exact_text_and_all_fields() -> None:
    t = one(F.TRADE)
    assert isinstance(t, Trade)
    assert (t.exchange, t.market, t.channel) == ("bitstamp", "btcusd", "live_trades")
    assert t.trade_id == "316811409"
    assert t.price == "37012"
    assert t.amount == "0.00050000"  # not 0.0005: the exchange's text, trailing zeros kept
    assert t.side is Side.SELL
    assert t.exchange_ts_us == 1_700_000_000_123_456
    assert t.exchange_ts_raw == "1700000000123456"
    assert t.receive_ts_us == 1_700_000_001_000_000
    assert t.buy_order_id == "1700000000000001"
    assert t.sell_order_id == "1700000000000002"
    assert t.connection_id == "conn-1"
    assert t.sequence == 1
    assert t.extra == {}


def test_perp_trade_id_above_2_pow_53_is_exact() -> None:
    t = one(F.PERP_TRADE)
    assert t.market == "btcusd-perp"
    assert t.trade_id == "9007199254740993"
    assert int(t.trade_id) == 2**53 + 1
    assert t.side is Side.BUY


def test_perp_id_without_id_str_is_still_exact() -> None:
    frame = orjson.loads(F.raw(F.PERP_TRADE))
    del frame["data"]["id_str"]
    assert one(frame).trade_id == "9007199254740993"


def test_price_only_as_json_number_keeps_its_text() -> None:
    # No *_str twin: the frame is re-read keeping the number's original text.
    text = (
        '{"event":"trade","channel":"live_trades_btcusd","data":{"id":1,"type":0,'
        '"price":37000.10,"amount":0.00010000,"microtimestamp":"1700000000000000"}}'
    )
    t = one(text)
    assert t.price == "37000.10"
    assert t.amount == "0.00010000"


def test_unknown_fields_are_kept_in_extra() -> None:
    frame = orjson.loads(F.raw(F.TRADE))
    frame["data"]["new_field"] = {"nested": [1, 2]}
    frame["data"]["flag"] = "x"
    t = one(frame)
    assert t.extra == {"new_field": '{"nested":[1,2]}', "flag": "x"}


def test_trade_without_optional_order_ids() -> None:
    frame = orjson.loads(F.raw(F.TRADE))
    del frame["data"]["buy_order_id"], frame["data"]["sell_order_id"]
    t = one(frame)
    assert t.buy_order_id is None and t.sell_order_id is None


def test_trade_seconds_timestamp_when_no_microtimestamp() -> None:
    frame = orjson.loads(F.raw(F.TRADE))
    del frame["data"]["microtimestamp"]
    t = one(frame)
    assert t.exchange_ts_us == 1_700_000_000_000_000
    assert t.exchange_ts_raw == "1700000000"


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (F.ORDER_CREATED, OrderEventType.CREATED),
        ({**F.ORDER_CREATED, "event": "order_deleted"}, OrderEventType.DELETED),
        (F.ORDER_CHANGED_NEW_FORMAT, OrderEventType.CHANGED),
    ],
)
def test_live_orders(frame: dict[str, Any], kind: OrderEventType) -> None:
    o = one(frame)
    assert isinstance(o, OrderEvent)
    assert o.event_type is kind
    assert o.order_id == "1700000000000123"
    assert o.side is Side.BUY
    assert o.price == "36999"
    assert o.amount_at_create == "0.50000000"
    assert o.order_subtype == 0
    assert o.is_liquidation is False
    assert o.datetime_raw == "1700000000"
    assert o.exchange_ts_us == 1_700_000_000_654_321


def test_live_orders_new_format_chain_fields() -> None:
    o = one(F.ORDER_CHANGED_NEW_FORMAT)
    assert (o.event_id, o.pre_event_id, o.order_source) == ("88001", "88000", "orderbook")
    assert o.amount == "0.25000000" and o.amount_traded == "0.25000000"
    old = one(F.ORDER_CREATED)
    assert (old.event_id, old.pre_event_id, old.order_source) == (None, None, None)


def test_order_book_snapshot() -> None:
    b = one(F.ORDER_BOOK)
    assert type(b) is BookSnapshot
    assert b.channel == "order_book"
    assert b.bids == (("36999", "0.50000000"), ("36998", "1.25000000"))
    assert b.asks == (("37001", "0.10000000"),)


def test_detail_order_book_has_order_ids() -> None:
    b = one(F.DETAIL_ORDER_BOOK)
    assert type(b) is BookSnapshot
    assert b.channel == "detail_order_book"
    assert b.bids[0] == ("36999", "0.50000000", "1700000000000123")


def test_diff_order_book_zero_amounts_kept_verbatim() -> None:
    d = one(F.DIFF_ORDER_BOOK)
    assert type(d) is BookDelta
    assert d.bids[0] == ("36999", "0.00000000")
    assert d.asks[0] == ("37001", "0")


def test_funding_rate_millisecond_timestamps_normalised() -> None:
    f = one(F.FUNDING_RATE)
    assert isinstance(f, FundingRate)
    assert f.market == "btcusd-perp"
    assert f.funding_rate == "0.0000100"
    assert f.exchange_ts_us == 1_700_000_000_123_000
    assert f.exchange_ts_raw == "1700000000123"
    assert f.next_funding_time_us == 1_700_003_600_000_000
    assert f.next_funding_time_raw == "1700003600000"
    assert f.extra == {}  # `market` agrees with the channel


def test_funding_rate_saved_event_name_from_the_doc_table() -> None:
    assert isinstance(one({**F.FUNDING_RATE, "event": "funding_rate_saved"}), FundingRate)


def test_doc_control_frames() -> None:
    assert one(F.DOC_HEARTBEAT_REPLY) == HeartbeatReply("success")
    assert one(F.DOC_REQUEST_RECONNECT) == ReconnectRequested()
    assert one(F.DOC_ERROR) == ExchangeError("", None, "Bad request.")
    assert one(F.SUBSCRIBED) == SubscriptionSucceeded("live_trades_btcusd")
    assert one(F.UNSUBSCRIBED) == UnsubscriptionSucceeded("live_trades_btcusd")


def test_sequence_counts_published_events_only() -> None:
    dec = BitstampDecoder("c")
    assert one(F.TRADE, dec).sequence == 1
    one(F.DOC_HEARTBEAT_REPLY, dec)
    bad = orjson.loads(F.raw(F.TRADE))
    del bad["data"]["price_str"], bad["data"]["price"]
    with pytest.raises(ProtocolError):
        one(bad, dec)
    assert one(F.ORDER_BOOK, dec).sequence == 2


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"\x00\x01\x02", "invalid_json"),
        (b"[1,2,3]", "not_an_object"),
        (b'{"channel":"live_trades_btcusd"}', "missing_field"),
        (b'{"event":"mystery","channel":"live_trades_btcusd","data":{}}', "unknown_event"),
        (b'{"event":"bts:mystery","channel":"","data":{}}', "unknown_event"),
        (b'{"event":"trade","channel":"weird_btcusd","data":{}}', "unknown_channel"),
        (b'{"event":"trade","channel":"order_book_btcusd","data":{}}', "unknown_event"),
        (b'{"event":"trade","channel":"live_trades_btcusd","data":[]}', "invalid_field"),
        (b'{"event":"trade","channel":"live_trades_btcusd","data":{"id":1}}', "missing_field"),
        (
            b'{"event":"trade","channel":"live_trades_btcusd","data":{"id":1,"type":0,'
            b'"price_str":true,"amount_str":"1","microtimestamp":"1"}}',
            "invalid_field",
        ),
        (
            b'{"event":"data","channel":"order_book_btcusd","data":{"bids":[["1"]],"asks":[],'
            b'"microtimestamp":"1700000000000000"}}',
            "invalid_field",
        ),
        (
            b'{"event":"data","channel":"order_book_btcusd","data":{"bids":[["1",""]],'
            b'"asks":[],"microtimestamp":"1700000000000000"}}',
            "invalid_field",
        ),
        (
            b'{"event":"data","channel":"order_book_btcusd","data":{"bids":[["1",["2"]]],'
            b'"asks":[],"microtimestamp":"1700000000000000"}}',
            "invalid_field",
        ),
        (
            b'{"event":"data","channel":"order_book_btcusd","data":{"bids":[],"asks":[],'
            b'"microtimestamp":"yesterday"}}',
            "invalid_field",
        ),
        (b'{"event":"trade","channel":3,"data":{}}', "invalid_field"),
    ],
)
def test_malformed_frames_raise_protocol_error(frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        BitstampDecoder("c").feed(frame, 0)
    assert info.value.reason == reason
    assert info.value.frame == frame


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "id",
        "id_str",
        "price",
        "price_str",
        "amount",
        "amount_str",
        "type",
        "microtimestamp",
        "timestamp",
        "bids",
        "asks",
        "order_type",
        "datetime",
        "funding_rate",
        "order_subtype",
        "is_liquidation",
        "next_funding_time",
        "event_id",
        "buy_order_id",
    ]
)
frames_like_bitstamp = st.fixed_dictionaries(
    {
        "event": st.sampled_from(
            [
                "trade",
                "order_created",
                "order_changed",
                "order_deleted",
                "data",
                "funding_rate",
                "bts:error",
                "bts:heartbeat",
                "bts:subscription_succeeded",
                "x",
            ]
        ),
        "channel": st.sampled_from(
            [
                "live_trades_btcusd",
                "live_orders_ethusd",
                "order_book_btcusd",
                "detail_order_book_btcusd",
                "diff_order_book_btcusd-perp",
                "funding_rate_btcusd-perp",
                "",
                "live_trades_",
            ]
        ),
        "data": st.dictionaries(field_names, json_values, max_size=10) | json_values,
    }
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_raise_only_protocol_error(frame: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        BitstampDecoder("c").feed(frame, 0)


@settings(max_examples=1500, deadline=None)
@given(frames_like_bitstamp)
def test_arbitrary_bitstamp_shaped_frames_raise_only_protocol_error(frame: dict[str, Any]) -> None:
    text = json.dumps(frame)
    try:
        out = BitstampDecoder("c").feed(text, 0)
    except ProtocolError:
        return
    assert len(out) == 1


@pytest.mark.parametrize("value", [[1], {"side": 1}, []])
@pytest.mark.parametrize(
    "frame, key",
    [
        (F.ORDER_CREATED, "order_type"),
        (F.TRADE, "type"),
        (
            {
                "event": "trade",
                "channel": "private-my_trades_btcusd-7",
                "data": {"id": 12, "side": "sell", "microtimestamp": "1700000000000001"},
            },
            "side",
        ),
    ],
)
def test_a_side_that_cannot_be_looked_up_is_an_invalid_field(
    frame: dict[str, Any], key: str, value: object
) -> None:
    """A list or object as the side used to escape ``feed`` as a TypeError (unhashable)."""
    bad = {**frame, "data": {**frame["data"], key: value}}
    with pytest.raises(ProtocolError) as err:
        BitstampDecoder("c").feed(json.dumps(bad), 5)
    assert (err.value.reason, key in err.value.detail) == ("invalid_field", True)


def test_private_events_keep_exact_text_and_reject_the_unexpected() -> None:
    from connector.events import PrivateEvent

    decoder = BitstampDecoder("c")
    frame = (
        '{"event":"trade","channel":"private-my_trades_btcusd-7","data":{"id":12,'
        '"order_id":11,"amount":0.10000000,"price":37000.10,"fee":"0.01","side":"sell",'
        '"microtimestamp":"1700000000000001"}}'
    )
    (event,) = decoder.feed(frame, 5)
    assert isinstance(event, PrivateEvent)
    assert (event.channel, event.market, event.entity_id, event.side) == (
        "private_my_trades",
        "btcusd",
        "12",
        "SELL",
    )
    assert (event.price, event.amount) == ("37000.10", "0.10000000")  # as sent, not floats
    assert event.extra == {"order_id": "11", "fee": "0.01"}
    bad = '{"event":"order_created","channel":"private-my_trades_btcusd-7","data":{}}'
    with pytest.raises(ProtocolError) as err:
        decoder.feed(bad, 5)
    assert err.value.reason == "unknown_event"
    no_time = '{"event":"settlement","channel":"private-my_settlements-7","data":{"id":1}}'
    with pytest.raises(ProtocolError) as err:
        decoder.feed(no_time, 5)
    assert err.value.reason == "missing_field"


# --- the typed fast path for book and live_orders frames ------------------------------
def _outcome(feed: Any, frame: bytes | str) -> Any:
    try:
        return feed(frame, 1_700_000_001_000_000)
    except ProtocolError as exc:
        return ("ProtocolError", exc.reason, exc.frame == frame)


def _assert_fast_path_equals_general(
    frame: dict[str, Any], spaced: bool, channel_first: bool, as_text: bool
) -> None:
    if channel_first:
        frame = {"channel": frame["channel"], **frame}
    text = json.dumps(frame) if spaced else json.dumps(frame, separators=(",", ":"))
    data: bytes | str = text if as_text else text.encode()
    fast, general = BitstampDecoder("c"), BitstampDecoder("c")
    assert _outcome(fast.feed, data) == _outcome(general._feed, data)
    assert fast.sequence == general.sequence


@pytest.mark.parametrize(
    "frame",
    [
        F.ORDER_BOOK,
        F.DETAIL_ORDER_BOOK,
        F.DIFF_ORDER_BOOK,
        F.ORDER_CREATED,
        F.ORDER_CHANGED_NEW_FORMAT,
    ],
)
@pytest.mark.parametrize("spaced", [False, True])
@pytest.mark.parametrize("as_text", [False, True])
def test_documented_frames_take_the_typed_fast_path(
    frame: dict[str, Any], spaced: bool, as_text: bool
) -> None:
    text = json.dumps(frame) if spaced else json.dumps(frame, separators=(",", ":"))
    data: bytes | str = text if as_text else text.encode()
    fast = BitstampDecoder("c")._fast(data, 5)
    assert fast is not None  # a regression here only costs speed: this test catches it
    assert [fast] == BitstampDecoder("c")._feed(data, 5)


_number = st.text(alphabet="0123456789.", min_size=1, max_size=12)
_odd_value = st.sampled_from(["", 1, 0.5, None, True, "1e5", "\u00e9"])
_pairs = st.lists(st.tuples(_number, _number).map(list), max_size=5)
_triples = st.lists(st.tuples(_number, _number, _number).map(list), max_size=5)
_odd_levels = st.lists(  # mixed widths, numbers, empty strings, nulls
    st.lists(_number | _odd_value, min_size=1, max_size=4), max_size=4
)


def _book_frame(channel: str) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly the channel's documented shape, sometimes not."""
    right = _triples if channel.startswith("detail") else _pairs
    levels = st.sampled_from([right, right, right, _pairs, _triples, _odd_levels]).flatmap(
        lambda s: s
    )
    return st.fixed_dictionaries(
        {
            "event": st.sampled_from(["data"] * 6 + ["trade"]),
            "channel": st.just(channel),
            "data": st.fixed_dictionaries(
                {
                    "bids": levels,
                    "asks": levels,
                    "microtimestamp": st.sampled_from(
                        ["1700000000100000"] * 15 + ["", "abc", 1700000000100000, 1.5, None]
                    ),
                },
                optional={
                    "timestamp": json_values,
                    "extra_field": json_values,
                    "nested": st.just({"channel": "order_book_xrpusd"}),
                },
            ),
        },
        optional={"unknown_top": json_values},
    )


_book_frames = st.sampled_from(
    [
        "order_book_btcusd",
        "detail_order_book_ethusd",
        "diff_order_book_btcusd-perp",
        "live_trades_btcusd",
        "order_book_",
    ]
).flatmap(_book_frame)


@settings(max_examples=2000, deadline=None)
@given(
    _book_frames,
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_book_fast_path_equals_the_general_path(
    frame: dict[str, Any], spaced: bool, channel_first: bool, as_text: bool
) -> None:
    """Whatever the fast path accepts, it decodes exactly as the general path does; the
    rest goes the general way (same events, same errors, same numbering)."""
    _assert_fast_path_equals_general(frame, spaced, channel_first, as_text)


def test_book_fast_path_is_exact_on_the_simulator_frames() -> None:
    from connector.exchanges.bitstamp.simulator import Simulator

    sim = Simulator()
    fast, general = BitstampDecoder("c"), BitstampDecoder("c")
    for channel in ("order_book", "detail_order_book", "diff_order_book"):
        for _ in range(20):
            data = orjson.dumps(sim.make_event(channel, "btcusd")).decode()
            event = fast._fast(data, 7)
            assert event is not None
            assert [event] == general._feed(data, 7)
            assert len(event.bids) == len(json.loads(data)["data"]["bids"])


def test_order_fast_path_knows_exactly_the_general_paths_fields() -> None:
    """A field the fast path does not know goes to ``extra`` on the general path, so the
    fast path must refuse it: its struct's fields are the general path's known ones."""
    from connector.exchanges.bitstamp.decoder import _ORDER_KNOWN, _Order

    assert frozenset(_Order.__struct_fields__) == _ORDER_KNOWN


_ORDER_DOC: dict[str, Any] = F.ORDER_CHANGED_NEW_FORMAT["data"]  # type: ignore[assignment]
# Values that are not the documented ones for some or all fields: the general path decides
# (a number for text, an empty string, a null, a big int orjson would round, ...).
_ODD_SCALARS = [None, "", 7, 0.25, True, False, "12", "x", "-5", "1.5e3", "buy", [1], {"a": 1}]
_ODD_INTS = [2**31, -(2**31), 2**70, 1700000000]  # out of int32, a big int orjson rounds
_odd_order_value = st.sampled_from([*_ODD_SCALARS, *_ODD_INTS]) | json_values


@st.composite
def _order_frames(draw: st.DrawFn) -> dict[str, Any]:
    """The documented live_orders frame with a few changes at most: fields changed,
    dropped or added, another event or channel. Most frames stay valid, so the fast path
    accepts many and each change is tried against an otherwise good frame."""
    data = dict(_ORDER_DOC)
    for key in draw(st.lists(st.sampled_from(sorted(data)), max_size=2)):
        data[key] = draw(_odd_order_value)
    for key in draw(st.lists(st.sampled_from(sorted(data)), max_size=1)):
        data.pop(key, None)
    if draw(st.integers(0, 5)) == 0:
        data[draw(st.sampled_from(["extra_field", "nested", "id_str2"]))] = draw(json_values)
    frame: dict[str, Any] = {
        "event": draw(
            st.sampled_from(["order_created", "order_changed", "order_deleted"] * 4 + ["data"])
        ),
        "channel": draw(st.sampled_from(["live_orders_btcusd"] * 6 + ["live_orders_"])),
        "data": data,
    }
    if draw(st.integers(0, 7)) == 0:
        frame["unknown_top"] = draw(json_values)
    return frame


@settings(max_examples=3000, deadline=None)
@given(_order_frames(), st.booleans(), st.booleans(), st.booleans())
def test_order_fast_path_equals_the_general_path(
    frame: dict[str, Any], spaced: bool, channel_first: bool, as_text: bool
) -> None:
    """Whatever the order fast path accepts, it decodes exactly as the general path does;
    the rest goes the general way (same events, same errors, same numbering)."""
    _assert_fast_path_equals_general(frame, spaced, channel_first, as_text)


def test_order_fast_path_is_exact_on_the_simulator_frames() -> None:
    from connector.exchanges.bitstamp.simulator import Simulator

    sim = Simulator()
    fast, general = BitstampDecoder("c"), BitstampDecoder("c")
    for _ in range(200):
        data = orjson.dumps(sim.make_event("live_orders", "btcusd")).decode()
        event = fast._fast(data, 7)
        assert event is not None
        assert [event] == general._feed(data, 7)


def test_an_extra_int_beyond_64_bits_is_kept_whole() -> None:
    """A float-only decimal sends the frame to the exact-numbers parse, which keeps big
    ints whole; orjson cannot write those back (its TypeError used to escape ``feed``)."""
    data = {k: v for k, v in F.ORDER_CREATED["data"].items() if k != "amount_str"}  # type: ignore[union-attr]
    frame = {**F.ORDER_CREATED, "data": {**data, "note": -(2**63) - 1}}
    (event,) = BitstampDecoder("c").feed(json.dumps(frame), 5)
    assert event.amount == "0.5"  # the float's own text
    assert event.extra == {"note": str(-(2**63) - 1)}
