"""Bitfinex WebSocket v2 public channels: the protocol, pure (no I/O).

Facts (Bitfinex docs, "WebSocket General", "Public Channels", "Trades", "Books"):
- public endpoint ``wss://api-pub.bitfinex.com/ws/2``: 25 channel subscriptions per
  connection, 20 connections per minute;
- the server opens with ``{"event": "info", "version": 2, "platform": {"status": 1}}``
  (status 0: maintenance); info codes 20051 (stop/restart: reconnect), 20060 (maintenance
  begins: pause), 20061 (maintenance over: resubscribe everything);
- ``{"event": "conf", "flags": 65536 | 131072}`` turns on sequence numbers on every
  message (the last element) and book checksums ``[chanId, "cs", crc32]``;
- ``{"event": "subscribe", "channel": "trades"|"book", "symbol": "tBTCUSD", ...}`` →
  ``{"event": "subscribed", "chanId": n, "channel": ..., "symbol": ...}``; data frames
  are arrays ``[chanId, ...]``; heartbeats ``[chanId, "hb"]`` every 15 s;
- trades: a snapshot ``[chanId, [[ID, MTS, AMOUNT, PRICE], ...]]`` (the latest trades),
  then ``[chanId, "te", [...]]`` (executed) and ``[chanId, "tu", [...]]`` (the same trade,
  updated); AMOUNT < 0 is a sell;
- books (``prec`` P0): a snapshot ``[chanId, [[PRICE, COUNT, AMOUNT], ...]]`` then
  updates ``[chanId, [PRICE, COUNT, AMOUNT]]``: COUNT 0 deletes the level (AMOUNT 1 bids,
  -1 asks), else AMOUNT > 0 is a bid and < 0 an ask;
- the checksum: CRC32 (signed 32-bit) of the top 25 bids and asks interleaved
  ``bid0.price:bid0.amount:ask0.price:ask0.amount:...`` (asks' amounts negative), as the
  numbers are written;
- ``{"event": "ping", "cid": n}`` → ``{"event": "pong", "cid": n}``.
Numbers are JSON numbers: they are read with their original text (never a float).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from decimal import Decimal

EXCHANGE = "bitfinex"
CHANNELS: tuple[str, ...] = ("trades", "book")
CHANNEL_SCHEMAS: dict[str, str] = {"trades": "connector.Trade", "book": "connector.BookDelta"}
BOOK_LENGTHS: tuple[int, ...] = (1, 25, 100, 250)
MAX_CHANNELS_PER_CONNECTION = 25
FLAG_SEQ_ALL = 65536
FLAG_CHECKSUM = 131072
INFO_RECONNECT = 20051
INFO_MAINTENANCE_START = 20060
INFO_MAINTENANCE_END = 20061
CHECKSUM_DEPTH = 25


def channel_key(channel: str, market: str) -> str:
    return f"{channel}:{market}"


def split_key(name: str) -> tuple[str, str] | None:
    channel, _, market = name.partition(":")
    return (channel, market) if channel in CHANNEL_SCHEMAS and market else None


def book_checksum(bids: Iterable[tuple[str, str]], asks: Iterable[tuple[str, str]]) -> int:
    """The signed CRC32 Bitfinex sends, from the best levels (price text, signed amount
    text), bids best first and asks best first."""
    b = list(bids)[:CHECKSUM_DEPTH]
    a = list(asks)[:CHECKSUM_DEPTH]
    parts: list[str] = []
    for i in range(max(len(b), len(a))):
        if i < len(b):
            parts += b[i]
        if i < len(a):
            parts += a[i]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


class LocalBook:
    """One P0 book as Bitfinex sent it (price text → signed amount text)."""

    __slots__ = ("asks", "bids")

    def __init__(self) -> None:
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}

    def apply(self, price: str, count: str, amount: str) -> None:
        ask = amount.startswith("-")
        side = self.asks if ask else self.bids
        if count == "0":
            side.pop(price, None)
        else:
            side[price] = amount

    def checksum(self) -> int:
        bids = sorted(self.bids.items(), key=lambda kv: Decimal(kv[0]), reverse=True)
        asks = sorted(self.asks.items(), key=lambda kv: Decimal(kv[0]))
        return book_checksum(bids[:CHECKSUM_DEPTH], asks[:CHECKSUM_DEPTH])
