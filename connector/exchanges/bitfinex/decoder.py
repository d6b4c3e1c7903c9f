"""Bitfinex v2 connection protocol (pure): frames → events, and the frames to send.

The first subscribe of a connection is preceded by the ``conf`` frame (sequence numbers
and checksums). The public sequence number (last element of every data frame) must grow
by one per frame; a jump means frames were lost on this connection, so every
subscription is resynced. Each book is kept here as sent, and every checksum frame is
verified against it: a mismatch is a ``Resync`` of that book (resubscribed: Bitfinex
sends a new snapshot). Book updates are published as ``BookDelta`` (one level; amount
"0" deletes it; ask amounts as positive numbers, like every other exchange here) and a
snapshot as ``BookDelta(resync=True)``.
"""

from __future__ import annotations

from typing import Any

import orjson

from connector.errors import ProtocolError
from connector.events import (
    BookDelta,
    ExchangeError,
    HeartbeatReply,
    Level,
    Maintenance,
    Message,
    ReconnectRequested,
    Resync,
    Side,
    SubscriptionSucceeded,
    Trade,
    UnsubscriptionSucceeded,
)
from connector.exchanges.bitfinex.protocol import (
    EXCHANGE,
    FLAG_CHECKSUM,
    FLAG_SEQ_ALL,
    INFO_MAINTENANCE_END,
    INFO_MAINTENANCE_START,
    INFO_RECONNECT,
    LocalBook,
    channel_key,
    split_key,
)
from connector.exchanges.wire import about, decimal_text, loads_exact


def _num(value: Any, what: str) -> str:
    return decimal_text(value, what)


def _abs(amount: str) -> str:
    return amount[1:] if amount.startswith("-") else amount


class BitfinexProtocol:
    def __init__(self, connection_id: str, book_length: int = 25) -> None:
        self.connection_id = connection_id
        self.book_length = book_length
        self.sequence = 0
        self._conf_sent = False
        self._next_cid = 1
        self._chan: dict[int, tuple[str, str, str]] = {}  # chanId → (name, channel, market)
        self._ids: dict[str, int] = {}  # name → chanId
        self._books: dict[int, LocalBook] = {}
        self._broken: set[str] = set()
        self._pub_seq: int | None = None

    # --- frames to send ----------------------------------------------------------------
    def subscribe(self, names: list[str]) -> list[str]:
        frames = []
        if not self._conf_sent:
            self._conf_sent = True
            frames.append(orjson.dumps({"event": "conf", "flags": FLAG_SEQ_ALL | FLAG_CHECKSUM}))
        for name in names:
            where = split_key(name)
            if where is None:
                raise ValueError(f"not a Bitfinex subscription: {name!r}")
            channel, symbol = where
            body: dict[str, Any] = {"event": "subscribe", "channel": channel, "symbol": symbol}
            if channel == "book":
                body.update(prec="P0", freq="F0", len=str(self.book_length))
            frames.append(orjson.dumps(body))
        return [f.decode() for f in frames]

    def unsubscribe(self, names: list[str]) -> list[str]:
        return [
            orjson.dumps({"event": "unsubscribe", "chanId": self._ids[n]}).decode()
            for n in names
            if n in self._ids
        ]

    def ping(self) -> str:
        cid = self._next_cid
        self._next_cid += 1
        return orjson.dumps({"event": "ping", "cid": cid}).decode()

    # --- frames received ---------------------------------------------------------------
    def feed(self, frame: bytes | str, receive_ts_us: int) -> list[Message]:
        msg = loads_exact(frame)
        with about(frame):
            if isinstance(msg, dict):
                return self._event(msg)
            if isinstance(msg, list) and msg and isinstance(msg[0], int):
                return self._data(msg, receive_ts_us)
        raise ProtocolError("unknown_event", "neither an event object nor a channel array", frame)

    def _event(self, msg: dict[str, Any]) -> list[Message]:
        event = msg.get("event")
        if event == "subscribed":
            chan_id, channel, symbol = msg.get("chanId"), msg.get("channel"), msg.get("symbol")
            if not isinstance(chan_id, int) or not isinstance(channel, str):
                raise ProtocolError("invalid_field", "subscribed without chanId or channel")
            name = channel_key(channel, str(symbol))
            self._chan[chan_id] = (name, channel, str(symbol))
            self._ids[name] = chan_id
            self._broken.discard(name)
            if channel == "book":
                self._books[chan_id] = LocalBook()
            return [SubscriptionSucceeded(name)]
        if event == "unsubscribed":
            chan_id = msg.get("chanId")
            found = self._chan.pop(chan_id, None) if isinstance(chan_id, int) else None
            if found is None:
                return []
            self._ids.pop(found[0], None)
            self._books.pop(chan_id, None)  # type: ignore[arg-type]
            return [UnsubscriptionSucceeded(found[0])]
        if event == "pong":
            return [HeartbeatReply("pong")]
        if event == "error":
            name = ""
            if isinstance(msg.get("channel"), str) and msg.get("symbol"):
                name = channel_key(msg["channel"], str(msg["symbol"]))
            code = msg.get("code")
            return [ExchangeError(name, None if code is None else str(code), str(msg.get("msg")))]
        if event == "info":
            code = msg.get("code")
            text = str(msg.get("msg", ""))
            if code == INFO_RECONNECT:
                return [ReconnectRequested()]
            if code == INFO_MAINTENANCE_START:
                return [Maintenance(True, text or "20060")]
            if code == INFO_MAINTENANCE_END:
                return [Maintenance(False, text or "20061")]
            platform = msg.get("platform")
            if isinstance(platform, dict) and platform.get("status") == 0:
                return [Maintenance(True, "platform status 0 (maintenance)")]
            return []
        if event == "conf":
            if msg.get("status") not in (None, "OK"):
                return [ExchangeError("", None, f"conf flags refused: {msg!r:.120}")]
            return []
        raise ProtocolError("unknown_event", f"unknown event {event!r:.40}")

    def _data(self, msg: list[Any], rts: int) -> list[Message]:
        chan_id = msg[0]
        out: list[Message] = []
        body = msg[1:]
        if body and isinstance(body[-1], int) and len(body) >= 2:
            seq = body[-1]
            body = body[:-1]
            if self._pub_seq is not None and seq != self._pub_seq + 1:
                out += [
                    Resync(name, "sequence_break", f"public sequence {seq} after {self._pub_seq}")
                    for name in sorted(self._ids)
                    if name not in self._broken
                ]
                self._broken.update(self._ids)
            self._pub_seq = seq
        where = self._chan.get(chan_id)
        if where is None:
            raise ProtocolError("unknown_channel", f"data for unknown chanId {chan_id}")
        name, channel, market = where
        if not body:
            raise ProtocolError("invalid_field", "empty channel frame")
        head = body[0]
        if head == "hb":
            return out
        if channel == "trades":
            if head == "te" and len(body) >= 2:
                out.append(self._trade(market, body[1], rts, backfilled=False))
            elif head == "tu":
                pass  # the same trade as its "te", updated: published once (from "te")
            elif isinstance(head, list) and (not head or isinstance(head[0], list)):
                # the snapshot: the latest trades, newest first; duplicates are dropped
                # downstream by trade id
                for entry in reversed(head):
                    out.append(self._trade(market, entry, rts, backfilled=True))
            else:
                raise ProtocolError("invalid_field", f"trades frame {head!r:.40}")
            return out
        book = self._books[chan_id]
        if head == "cs":
            if len(body) < 2 or not isinstance(body[1], int):
                raise ProtocolError("invalid_field", "checksum frame without a checksum")
            mine = book.checksum()
            if mine != body[1] and name not in self._broken:
                self._broken.add(name)
                out.append(
                    Resync(name, "checksum_mismatch", f"checksum {body[1]} sent, {mine} computed")
                )
            return out
        if isinstance(head, list) and head and isinstance(head[0], list):
            book.bids.clear()
            book.asks.clear()
            bids: list[Level] = []
            asks: list[Level] = []
            for entry in head:
                price, count, amount = self._level(entry)
                book.apply(price, count, amount)
                (asks if amount.startswith("-") else bids).append((price, _abs(amount)))
            out.append(self._book(market, tuple(bids), tuple(asks), rts, snapshot=True))
            return out
        if isinstance(head, list) and len(head) >= 3:
            price, count, amount = self._level(head)
            book.apply(price, count, amount)
            ask = amount.startswith("-")
            level: Level = (price, "0" if count == "0" else _abs(amount))
            bids_, asks_ = ((), (level,)) if ask else ((level,), ())
            out.append(self._book(market, bids_, asks_, rts, snapshot=False, count=count))
            return out
        raise ProtocolError("invalid_field", f"book frame {head!r:.40}")

    @staticmethod
    def _level(entry: Any) -> tuple[str, str, str]:
        if not isinstance(entry, list) or len(entry) < 3:
            raise ProtocolError("invalid_field", f"book entry {entry!r:.60}")
        return _num(entry[0], "price"), _num(entry[1], "count"), _num(entry[2], "amount")

    def _common(self, channel: str, market: str, ts_raw: str, ts_us: int, rts: int) -> Any:
        self.sequence += 1
        return {
            "exchange": EXCHANGE,
            "market": market,
            "channel": channel,
            "exchange_ts_us": ts_us,
            "exchange_ts_raw": ts_raw,
            "receive_ts_us": rts,
            "connection_id": self.connection_id,
            "sequence": self.sequence,
        }

    def _trade(self, market: str, entry: Any, rts: int, *, backfilled: bool) -> Trade:
        if not isinstance(entry, list) or len(entry) < 4:
            raise ProtocolError("invalid_field", f"trade entry {entry!r:.60}")
        trade_id, mts = entry[0], entry[1]
        if not isinstance(trade_id, int) or not isinstance(mts, int):
            raise ProtocolError("invalid_field", f"trade id/time {entry[:2]!r:.60}")
        amount = _num(entry[2], "amount")
        return Trade(
            **self._common("trades", market, str(mts), mts * 1000, rts),
            trade_id=str(trade_id),
            price=_num(entry[3], "price"),
            amount=_abs(amount),
            side=Side.SELL if amount.startswith("-") else Side.BUY,
            backfilled=backfilled,
        )

    def _book(
        self,
        market: str,
        bids: tuple[Level, ...],
        asks: tuple[Level, ...],
        rts: int,
        *,
        snapshot: bool,
        count: str | None = None,
    ) -> BookDelta:
        # Book frames carry no exchange time: the receive time stands in (raw "").
        return BookDelta(
            **self._common("book", market, "", rts, rts),
            extra={} if count is None else {"count": count},
            bids=bids,
            asks=asks,
            resync=snapshot,
        )
