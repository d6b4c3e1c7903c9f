"""Bitstamp WebSocket API v2: channel names and the client frames we send.

Facts (official v2 doc and shared/bitstamp-v2.md): one channel per subscribe frame (a
client frame must stay under 512 bytes), at most 1024 channels per connection, public
channel names are ``<channel>_<market>`` with the market in lowercase.
"""

from __future__ import annotations

import orjson

EXCHANGE = "bitstamp"

# Order matters for parsing: "order_book_" is a suffix of the two longer book prefixes.
CHANNELS: tuple[str, ...] = (
    "live_trades",
    "live_orders",
    "order_book",
    "detail_order_book",
    "diff_order_book",
    "funding_rate",
)
_PREFIXES: tuple[tuple[str, str], ...] = tuple(
    (c + "_", c) for c in sorted(CHANNELS, key=len, reverse=True)
)

MAX_CHANNELS_PER_CONNECTION = 1024
MAX_CLIENT_FRAME_BYTES = 512


def channel_name(channel: str, market: str) -> str:
    return f"{channel}_{market}"


def split_channel(name: str) -> tuple[str, str] | None:
    """``"diff_order_book_btcusd"`` → ``("diff_order_book", "btcusd")``; None if unknown."""
    for prefix, channel in _PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return channel, name[len(prefix) :]
    return None


def _frame(obj: object) -> str:
    text = orjson.dumps(obj).decode()
    if len(text.encode()) >= MAX_CLIENT_FRAME_BYTES:
        raise ValueError(f"client frame of {len(text)} bytes exceeds Bitstamp's 512-byte limit")
    return text


def subscribe_frame(channel: str) -> str:
    return _frame({"event": "bts:subscribe", "data": {"channel": channel}})


def unsubscribe_frame(channel: str) -> str:
    return _frame({"event": "bts:unsubscribe", "data": {"channel": channel}})


HEARTBEAT_FRAME = _frame({"event": "bts:heartbeat"})

# The Avro record each channel's events are written with.
CHANNEL_SCHEMAS: dict[str, str] = {
    "live_trades": "connector.Trade",
    "live_orders": "connector.OrderEvent",
    "order_book": "connector.BookSnapshot",
    "detail_order_book": "connector.BookSnapshot",
    "diff_order_book": "connector.BookDelta",
    "funding_rate": "connector.FundingRate",
}

# Channels Bitstamp only sends for perpetual markets (``<base><quote>-perp``).
PERP_ONLY_CHANNELS = frozenset({"funding_rate"})


def is_perpetual(market: str) -> bool:
    return market.endswith("-perp")


def plan_subscriptions(
    markets: list[str], channels: list[str]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(channel, market) pairs to subscribe, and the pairs skipped as never sent."""
    subs, skipped = [], []
    for market in markets:
        for channel in channels:
            if channel in PERP_ONLY_CHANNELS and not is_perpetual(market):
                skipped.append((channel, market))
            else:
                subs.append((channel, market))
    return subs, skipped
