"""Bitstamp WebSocket API v2: channel names and the client frames we send.

Facts (official v2 doc and shared/bitstamp-v2.md): one channel per subscribe frame (a
client frame must stay under 512 bytes), at most 1024 channels per connection, public
channel names are ``<channel>_<market>`` with the market in lowercase.
"""

from __future__ import annotations

import re

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


# Private channels (API key needed): Bitstamp's name → our channel key (topics, metrics).
# Per market: ``private-<name>_<market>-<user_id>``; account-wide: ``private-<name>-<user_id>``
# (market ``account`` in topics and records).
PRIVATE_CHANNELS: dict[str, str] = {
    "my_orders": "private_my_orders",
    "my_trades": "private_my_trades",
    "live_trades": "private_live_trades",
    "my_settlements": "private_my_settlements",
    "my_liquidations": "private_my_liquidations",
}
ACCOUNT_WIDE = frozenset({"private_my_settlements", "private_my_liquidations"})
ACCOUNT = "account"
_PRIVATE_RE = re.compile(
    r"^private-(my_orders|my_trades|live_trades|my_settlements|my_liquidations)"
    r"(?:_([a-z0-9-]+?))?-(\d+)$"
)


def channel_name(channel: str, market: str, user_id: int | None = None) -> str:
    if channel.startswith("private_"):
        base = channel[len("private_") :]
        if channel in ACCOUNT_WIDE:
            return f"private-{base}-{user_id}"
        return f"private-{base}_{market}-{user_id}"
    return f"{channel}_{market}"


def is_private(name: str) -> bool:
    return name.startswith("private-")


def split_channel(name: str) -> tuple[str, str] | None:
    """``"diff_order_book_btcusd"`` → ``("diff_order_book", "btcusd")``,
    ``"private-my_orders_btcusd-123"`` → ``("private_my_orders", "btcusd")``; None if
    unknown."""
    if name.startswith("private-"):
        m = _PRIVATE_RE.match(name)
        if m is None:
            return None
        channel = PRIVATE_CHANNELS[m.group(1)]
        if (channel in ACCOUNT_WIDE) != (m.group(2) is None):
            return None
        return channel, m.group(2) or ACCOUNT
    for prefix, channel in _PREFIXES:
        if name.startswith(prefix) and len(name) > len(prefix):
            return channel, name[len(prefix) :]
    return None


def _frame(obj: object) -> str:
    text = orjson.dumps(obj).decode()
    if len(text.encode()) >= MAX_CLIENT_FRAME_BYTES:
        raise ValueError(f"client frame of {len(text)} bytes exceeds Bitstamp's 512-byte limit")
    return text


def subscribe_frame(channel: str, auth: str | None = None) -> str:
    data = {"channel": channel} if auth is None else {"channel": channel, "auth": auth}
    return _frame({"event": "bts:subscribe", "data": data})


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
    "private_my_orders": "connector.PrivateOrder",
    "private_my_trades": "connector.PrivateTrade",
    "private_live_trades": "connector.PrivateSelfTrade",
    "private_my_settlements": "connector.PrivateSettlement",
    "private_my_liquidations": "connector.PrivateLiquidation",
}

# Channels Bitstamp only sends for perpetual markets (``<base><quote>-perp``).
PERP_ONLY_CHANNELS = frozenset({"funding_rate"})


def is_perpetual(market: str) -> bool:
    return market.endswith("-perp")


def plan_subscriptions(
    markets: list[str], channels: list[str], private: list[str] | None = None
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(channel, market) pairs to subscribe, and the pairs skipped as never sent.
    ``private``: Bitstamp's private channel names (my_orders, …)."""
    subs, skipped = [], []
    for name in private or ():
        key = PRIVATE_CHANNELS[name]
        if key in ACCOUNT_WIDE:
            subs.append((key, ACCOUNT))
        else:
            subs.extend((key, market) for market in markets)
    for market in markets:
        for channel in channels:
            if channel in PERP_ONLY_CHANNELS and not is_perpetual(market):
                skipped.append((channel, market))
            else:
                subs.append((channel, market))
    return subs, skipped
