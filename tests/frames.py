"""Bitstamp v2 frames in the exchange's documented shapes (field names from the v2 doc)."""

from __future__ import annotations

from typing import Any

import orjson


def header(channel: str, ts: int, sequence: int = 0) -> dict[str, Any]:
    """The fields every normalized event carries, for building events in tests."""
    return {
        "exchange": "bitstamp",
        "market": "btcusd",
        "channel": channel,
        "exchange_ts_us": ts,
        "exchange_ts_raw": str(ts),
        "receive_ts_us": ts,
        "connection_id": "c",
        "sequence": sequence,
    }


TRADE = {
    "data": {
        "id": 316_811_409,
        "timestamp": "1700000000",
        "amount": 0.0005,
        "amount_str": "0.00050000",
        "price": 37012,
        "price_str": "37012",
        "type": 1,
        "microtimestamp": "1700000000123456",
        "buy_order_id": 1_700_000_000_000_001,
        "sell_order_id": 1_700_000_000_000_002,
        "id_str": "316811409",
    },
    "channel": "live_trades_btcusd",
    "event": "trade",
}

PERP_TRADE = {
    "data": {
        "id": 9_007_199_254_740_993,  # 2^53 + 1: a double cannot hold it
        "timestamp": "1700000000",
        "amount": 0.1,
        "amount_str": "0.10000000",
        "price": 37000.5,
        "price_str": "37000.5",
        "type": 0,
        "microtimestamp": "1700000000000001",
        "buy_order_id": 1,
        "sell_order_id": 2,
        "id_str": "9007199254740993",
    },
    "channel": "live_trades_btcusd-perp",
    "event": "trade",
}

ORDER_CREATED = {
    "data": {
        "id": 1_700_000_000_000_123,
        "id_str": "1700000000000123",
        "order_type": 0,
        "datetime": "1700000000",
        "microtimestamp": "1700000000654321",
        "amount": 0.5,
        "amount_str": "0.50000000",
        "amount_traded": "0",
        "amount_at_create": "0.50000000",
        "price": 36999,
        "price_str": "36999",
        "order_subtype": 0,
        "is_liquidation": False,
    },
    "channel": "live_orders_btcusd",
    "event": "order_created",
}

ORDER_CHANGED_NEW_FORMAT = {
    "data": {
        **ORDER_CREATED["data"],  # type: ignore[dict-item]
        "amount": 0.25,
        "amount_str": "0.25000000",
        "amount_traded": "0.25000000",
        "event_id": "88001",
        "pre_event_id": "88000",
        "order_source": "orderbook",
    },
    "channel": "live_orders_btcusd",
    "event": "order_changed",
}

ORDER_BOOK = {
    "data": {
        "timestamp": "1700000000",
        "microtimestamp": "1700000000100000",
        "bids": [["36999", "0.50000000"], ["36998", "1.25000000"]],
        "asks": [["37001", "0.10000000"]],
    },
    "channel": "order_book_btcusd",
    "event": "data",
}

DETAIL_ORDER_BOOK = {
    "data": {
        "timestamp": "1700000000",
        "microtimestamp": "1700000000100001",
        "bids": [["36999", "0.50000000", "1700000000000123"]],
        "asks": [["37001", "0.10000000", "1700000000000124"]],
    },
    "channel": "detail_order_book_btcusd",
    "event": "data",
}

DIFF_ORDER_BOOK = {
    "data": {
        "timestamp": "1700000000",
        "microtimestamp": "1700000000100002",
        "bids": [["36999", "0.00000000"], ["36990", "2.00000000"]],
        "asks": [["37001", "0"]],
    },
    "channel": "diff_order_book_btcusd",
    "event": "data",
}

FUNDING_RATE = {
    "data": {
        "funding_rate": "0.0000100",
        "mark_price": "37000.12",
        "index_price": "37001.50",
        "market": "btcusd-perp",
        "timestamp": "1700000000123",  # milliseconds, as some perp messages carry
        "next_funding_time": "1700003600000",
    },
    "channel": "funding_rate_btcusd-perp",
    "event": "funding_rate",
}

# The frames the official v2 doc shows.
DOC_HEARTBEAT_REPLY = {"event": "bts:heartbeat", "channel": "", "data": {"status": "success"}}
DOC_REQUEST_RECONNECT = {"event": "bts:request_reconnect", "channel": "", "data": ""}
DOC_ERROR = {"event": "bts:error", "channel": "", "data": {"code": None, "message": "Bad request."}}
SUBSCRIBED = {"event": "bts:subscription_succeeded", "channel": "live_trades_btcusd", "data": {}}
UNSUBSCRIBED = {
    "event": "bts:unsubscription_succeeded",
    "channel": "live_trades_btcusd",
    "data": {},
}

ALL_MARKET_FRAMES = [
    TRADE,
    PERP_TRADE,
    ORDER_CREATED,
    ORDER_CHANGED_NEW_FORMAT,
    ORDER_BOOK,
    DETAIL_ORDER_BOOK,
    DIFF_ORDER_BOOK,
    FUNDING_RATE,
]


def raw(frame: dict[str, Any]) -> bytes:
    return orjson.dumps(frame)
