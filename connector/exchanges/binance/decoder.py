"""Binance connection protocol (pure): frames → events, and the frames to send.

Events are numbered per connection (``sequence``). Depth diffs are checked for
continuity per stream (``U`` = previous ``u`` + 1); a break is reported once as a
``Resync`` (the connection resubscribes and recovery fetches a new REST snapshot) and
the diffs themselves are still published: they are what the exchange sent.
"""

from __future__ import annotations

from typing import Any

import orjson

from connector.errors import ProtocolError
from connector.events import (
    BookDelta,
    BookSnapshot,
    ExchangeError,
    HeartbeatReply,
    Message,
    Resync,
    Side,
    SubscriptionSucceeded,
    Trade,
    UnsubscriptionSucceeded,
)
from connector.exchanges.binance.protocol import EXCHANGE, NAMES_PER_FRAME, split_stream
from connector.exchanges.wire import about, batches, integer, load_object, pairs, text


class BinanceProtocol:
    def __init__(self, connection_id: str) -> None:
        self.connection_id = connection_id
        self.sequence = 0
        self._next_id = 1
        self._pending: dict[int, tuple[str, list[str]]] = {}  # request id → (method, names)
        self._last_u: dict[str, int] = {}  # depth stream → final update id of its last diff
        self._broken: set[str] = set()
        self._streams: dict[str, tuple[str, str]] = {}

    # --- frames to send ----------------------------------------------------------------
    def _request(self, method: str, names: list[str]) -> str:
        rid = self._next_id
        self._next_id += 1
        self._pending[rid] = (method, names)
        body: dict[str, Any] = {"method": method, "id": rid}
        if method != "LIST_SUBSCRIPTIONS":
            body["params"] = names
        return orjson.dumps(body).decode()

    def subscribe(self, names: list[str]) -> list[str]:
        for name in names:  # a new subscription: a new diff chain
            self._last_u.pop(name, None)
            self._broken.discard(name)
        return [self._request("SUBSCRIBE", b) for b in batches(names, NAMES_PER_FRAME)]

    def unsubscribe(self, names: list[str]) -> list[str]:
        return [self._request("UNSUBSCRIBE", b) for b in batches(names, NAMES_PER_FRAME)]

    def ping(self) -> str:
        return self._request("LIST_SUBSCRIPTIONS", [])

    # --- frames received ---------------------------------------------------------------
    def feed(self, frame: bytes | str, receive_ts_us: int) -> list[Message]:
        msg = load_object(frame)
        with about(frame):
            if "stream" in msg:
                return self._event(msg, receive_ts_us)
            if "id" in msg:
                return self._reply(msg)
        raise ProtocolError("unknown_event", "neither a stream event nor a reply", frame)

    def _reply(self, msg: dict[str, Any]) -> list[Message]:
        rid = msg.get("id")
        pending = self._pending.pop(rid, None) if isinstance(rid, int) else None
        if pending is None:
            raise ProtocolError("unknown_event", f"reply to unknown request id {rid!r:.40}")
        method, names = pending
        error = msg.get("error") if isinstance(msg.get("error"), dict) else None
        if error is None and "code" in msg:
            error = msg
        if error is not None:
            code, text_ = error.get("code"), str(error.get("msg", ""))
            return [
                ExchangeError(n, None if code is None else str(code), text_) for n in names
            ] or [ExchangeError("", None if code is None else str(code), text_)]
        if method == "LIST_SUBSCRIPTIONS":
            return [HeartbeatReply("ok")]
        if method == "SUBSCRIBE":
            return [SubscriptionSucceeded(n) for n in names]
        return [UnsubscriptionSucceeded(n) for n in names]

    def _event(self, msg: dict[str, Any], rts: int) -> list[Message]:
        name = msg.get("stream")
        data = msg.get("data")
        if not isinstance(name, str) or not isinstance(data, dict):
            raise ProtocolError("invalid_field", "'stream' is not text or 'data' not an object")
        where = self._streams.get(name)
        if where is None:
            where = split_stream(name)
            if where is None:
                raise ProtocolError("unknown_channel", f"unknown stream {name!r:.80}")
            self._streams[name] = where
        channel, market = where
        out: list[Message] = []
        if channel == "trade" or channel == "aggTrade":
            event: BookSnapshot | Trade = self._trade(channel, market, data, rts)
        elif channel == "depth":
            delta = self._depth(market, data, rts)
            first = int(delta.extra["first_update_id"])
            last = self._last_u.get(name)
            if last is not None and first != last + 1 and name not in self._broken:
                self._broken.add(name)
                out.append(
                    Resync(name, "sequence_break", f"diff U={first} does not follow u={last}")
                )
            self._last_u[name] = delta.exchange_sequence or 0
            event = delta
        else:
            event = self._ticker(market, data, rts)
        self.sequence += 1
        out.insert(0, event)
        return out

    def _common(self, channel: str, market: str, ts_ms: int | None, rts: int) -> dict[str, Any]:
        return {
            "exchange": EXCHANGE,
            "market": market,
            "channel": channel,
            "exchange_ts_us": ts_ms * 1000 if ts_ms is not None else rts,
            "exchange_ts_raw": "" if ts_ms is None else str(ts_ms),
            "receive_ts_us": rts,
            "connection_id": self.connection_id,
            "sequence": self.sequence + 1,
        }

    def _trade(self, channel: str, market: str, d: dict[str, Any], rts: int) -> Trade:
        maker = d.get("m")
        if not isinstance(maker, bool):
            raise ProtocolError("invalid_field", f"'m' is {maker!r:.20}, not a boolean")
        extra = {"event_time": str(integer(d, "E"))}
        if channel == "aggTrade":
            trade_id = integer(d, "a")
            extra["first_trade_id"] = str(integer(d, "f"))
            extra["last_trade_id"] = str(integer(d, "l"))
        else:
            trade_id = integer(d, "t")
        return Trade(
            **self._common(channel, market, integer(d, "T"), rts),
            extra=extra,
            trade_id=str(trade_id),
            price=text(d, "p"),
            amount=text(d, "q"),
            # m: the buyer is the maker, so the taker (aggressor) sold
            side=Side.SELL if maker else Side.BUY,
        )

    def _depth(self, market: str, d: dict[str, Any], rts: int) -> BookDelta:
        if d.get("e") != "depthUpdate":
            raise ProtocolError("unknown_event", f"depth event {d.get('e')!r:.40}")
        return BookDelta(
            **self._common("depth", market, integer(d, "E"), rts),
            extra={"first_update_id": str(integer(d, "U"))},
            bids=pairs(d.get("b"), "b"),
            asks=pairs(d.get("a"), "a"),
            exchange_sequence=integer(d, "u"),
        )

    def _ticker(self, market: str, d: dict[str, Any], rts: int) -> BookSnapshot:
        # Spot bookTicker carries no event time: the receive time stands in (raw "").
        return BookSnapshot(
            **self._common("bookTicker", market, None, rts),
            bids=((text(d, "b"), text(d, "B")),),
            asks=((text(d, "a"), text(d, "A")),),
            exchange_sequence=integer(d, "u"),
        )
