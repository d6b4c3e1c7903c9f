"""Pure recovery helpers: REST payloads → events, spans, deduplication."""

from __future__ import annotations

import pytest

from connector.errors import ProtocolError
from connector.events import Side
from connector.exchanges.bitstamp.recovery import (
    backfill_span,
    snapshot_from_rest,
    trades_from_rest,
)
from connector.stream.recent import RecentTrades

REST_TRADES = [  # newest first, as Bitstamp answers
    {"date": "1700000003", "tid": "105", "price": "37003", "amount": "0.3", "type": "1"},
    {"date": "1700000002", "tid": "104", "price": "37002", "amount": "0.2", "type": "0"},
    {"date": "1700000001", "tid": "103", "price": "37001", "amount": "0.10000000", "type": 0},
    {"date": "1699999990", "tid": "90", "price": "36990", "amount": "1", "type": "0"},
]


def backfill(after_id: int | None, since_us: int, recent: RecentTrades | None = None):  # type: ignore[no-untyped-def]
    return trades_from_rest(
        REST_TRADES,
        "btcusd",
        connection_id="c",
        receive_ts_us=9,
        after_id=after_id,
        since_us=since_us,
        recent=recent or RecentTrades(),
    )


def test_backfill_takes_trades_after_the_last_published_id_oldest_first() -> None:
    trades = backfill(after_id=103, since_us=0)
    assert [t.trade_id for t in trades] == ["104", "105"]
    t = trades[0]
    assert (t.price, t.amount, t.side, t.backfilled, t.sequence) == (
        "37002",
        "0.2",
        Side.BUY,
        True,
        0,
    )
    assert t.exchange_ts_us == 1_700_000_002_000_000 and t.exchange_ts_raw == "1700000002"


def test_backfill_without_a_last_id_uses_the_gap_start() -> None:
    trades = backfill(after_id=None, since_us=1_700_000_001_500_000)
    assert [t.trade_id for t in trades] == ["103", "104", "105"]  # second resolution: 103 kept
    assert trades[0].amount == "0.10000000"


def test_backfill_skips_trades_already_published() -> None:
    recent = RecentTrades()
    recent.add("btcusd", "104")
    assert [t.trade_id for t in backfill(after_id=90, since_us=0, recent=recent)] == ["103", "105"]


@pytest.mark.parametrize(
    "payload",
    [
        {"x": 1},
        [1],
        [{"tid": "x1", "date": "1", "price": "1", "amount": "1"}],
        [{"tid": "1", "date": "soon", "price": "1", "amount": "1"}],
        [{"tid": "1", "date": "1", "price": 1.5, "amount": "1"}],
        [{"tid": "1", "date": "1", "price": "1", "amount": "1", "type": [0]}],  # unhashable
    ],
)
def test_bad_rest_trades_are_protocol_errors(payload: object) -> None:
    with pytest.raises(ProtocolError):
        trades_from_rest(
            payload,
            "m",
            connection_id="c",
            receive_ts_us=0,
            after_id=None,
            since_us=0,
            recent=RecentTrades(),
        )


def test_snapshot_from_rest() -> None:
    snap = snapshot_from_rest(
        {
            "timestamp": "1700000000",
            "microtimestamp": "1700000000123456",
            "bids": [["36999", "1.0"]],
            "asks": [["37001", "2.0"], ["37002", "0.5"]],
        },
        "btcusd",
        connection_id="c",
        receive_ts_us=5,
    )
    assert snap.resync is True and snap.channel == "diff_order_book" and snap.sequence == 0
    assert snap.exchange_ts_us == 1_700_000_000_123_456
    assert snap.bids == (("36999", "1.0"),) and len(snap.asks) == 2
    with pytest.raises(ProtocolError):
        snapshot_from_rest({"bids": [], "asks": []}, "m", connection_id="c", receive_ts_us=0)


@pytest.mark.parametrize(
    ("gap_s", "span", "whole"),
    [
        (5, "minute", True),
        (55, "hour", True),
        (3000, "hour", True),
        (7200, "day", True),
        (90000, "day", False),
    ],
)
def test_backfill_span(gap_s: float, span: str, whole: bool) -> None:
    assert backfill_span(gap_s) == (span, whole)


def test_recent_trades_is_bounded_and_tracks_the_highest_id() -> None:
    recent = RecentTrades(size=3)
    assert recent.add("m", "1") and recent.add("m", "5") and recent.add("m", "3")
    assert not recent.add("m", "5")  # duplicate
    assert recent.last_id["m"] == 5
    recent.add("m", "7")  # evicts "1"
    assert not recent.seen("m", "1") and recent.seen("m", "7")
