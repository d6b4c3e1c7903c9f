"""Bybit v5 connection protocol (pure): frames → events, and the frames to send.

Book messages are published as ``BookDelta`` on the orderbook topic; a snapshot is a
``BookDelta(resync=True)`` (a full book replacing what a consumer had). Deltas are
checked for continuity (``u`` = previous ``u`` + 1); a break is reported once as a
``Resync`` (the connection resubscribes; Bybit answers with a fresh snapshot).
"""

from __future__ import annotations

from typing import Any

import orjson

from connector.errors import ProtocolError
from connector.events import (
    BookDelta,
    ExchangeError,
    HeartbeatReply,
    MarketEvent,
    Message,
    Resync,
    Side,
    SubscriptionSucceeded,
    Trade,
    UnsubscriptionSucceeded,
)
from connector.exchanges.bybit.protocol import ARGS_PER_REQUEST, EXCHANGE, split_topic
from connector.exchanges.wire import about, batches, integer, load_object, pairs, text

_SIDES = {"Buy": Side.BUY, "Sell": Side.SELL}


class BybitProtocol:
    def __init__(self, connection_id: str) -> None:
        self.connection_id = connection_id
        self.sequence = 0
        self._next_id = 1
        self._pending: dict[str, tuple[str, list[str]]] = {}
        self._last_u: dict[str, int] = {}
        self._broken: set[str] = set()
        self._topics: dict[str, tuple[str, str]] = {}

    # --- frames to send ----------------------------------------------------------------
    def _request(self, op: str, names: list[str]) -> str:
        rid = f"{op}-{self._next_id}"
        self._next_id += 1
        self._pending[rid] = (op, names)
        body: dict[str, Any] = {"req_id": rid, "op": op}
        if names:
            body["args"] = names
        return orjson.dumps(body).decode()

    def _batched(self, op: str, names: list[str]) -> list[str]:
        return [self._request(op, b) for b in batches(names, ARGS_PER_REQUEST)]

    def subscribe(self, names: list[str]) -> list[str]:
        for name in names:
            self._last_u.pop(name, None)
            self._broken.discard(name)
        return self._batched("subscribe", names)

    def unsubscribe(self, names: list[str]) -> list[str]:
        return self._batched("unsubscribe", names)

    def ping(self) -> str:
        return self._request("ping", [])

    # --- frames received ---------------------------------------------------------------
    def feed(self, frame: bytes | str, receive_ts_us: int) -> list[Message]:
        msg = load_object(frame)
        with about(frame):
            if "topic" in msg:
                return self._event(msg, receive_ts_us)
            if "op" in msg:
                return self._reply(msg)
        raise ProtocolError("unknown_event", "neither a topic event nor a reply", frame)

    def _reply(self, msg: dict[str, Any]) -> list[Message]:
        op = msg.get("op")
        rid = msg.get("req_id")
        pending = self._pending.pop(rid, None) if isinstance(rid, str) else None
        if op in ("ping", "pong"):
            return [HeartbeatReply(str(msg.get("ret_msg", "pong")))]
        if pending is None:
            raise ProtocolError("unknown_event", f"{op!r:.20} reply to unknown req_id {rid!r:.40}")
        op, names = pending
        if msg.get("success") is not True:
            why = str(msg.get("ret_msg", ""))
            return [ExchangeError(n, None, why) for n in names]
        if op == "subscribe":
            return [SubscriptionSucceeded(n) for n in names]
        return [UnsubscriptionSucceeded(n) for n in names]

    def _event(self, msg: dict[str, Any], rts: int) -> list[Message]:
        name = msg.get("topic")
        if not isinstance(name, str):
            raise ProtocolError("invalid_field", "'topic' is not text")
        where = self._topics.get(name)
        if where is None:
            where = split_topic(name)
            if where is None:
                raise ProtocolError("unknown_channel", f"unknown topic {name!r:.80}")
            self._topics[name] = where
        channel, market = where
        data = msg.get("data")
        if channel == "publicTrade":
            if not isinstance(data, list):
                raise ProtocolError("invalid_field", "publicTrade 'data' is not a list")
            events: list[Message] = []
            for d in data:
                events.append(self._trade(market, d, rts))
            return events
        return self._book(name, market, msg, data, rts)

    def _common(self, channel: str, market: str, ts_ms: int, rts: int) -> dict[str, Any]:
        self.sequence += 1
        return {
            "exchange": EXCHANGE,
            "market": market,
            "channel": channel,
            "exchange_ts_us": ts_ms * 1000,
            "exchange_ts_raw": str(ts_ms),
            "receive_ts_us": rts,
            "connection_id": self.connection_id,
            "sequence": self.sequence,
        }

    def _trade(self, market: str, d: Any, rts: int) -> MarketEvent:
        if not isinstance(d, dict):
            raise ProtocolError("invalid_field", "a trade is not an object")
        extra = {}
        for key in ("L", "seq", "BT"):
            if key in d:
                extra[key] = str(d[key]).lower() if isinstance(d[key], bool) else str(d[key])
        side = d.get("S")
        return Trade(
            **self._common("publicTrade", market, integer(d, "T"), rts),
            extra=extra,
            trade_id=text(d, "i"),
            price=text(d, "p"),
            amount=text(d, "v"),
            side=_SIDES.get(side, Side.UNKNOWN) if isinstance(side, str) else Side.UNKNOWN,
        )

    def _book(self, name: str, market: str, msg: dict[str, Any], d: Any, rts: int) -> list[Message]:
        kind = msg.get("type")
        if kind not in ("snapshot", "delta") or not isinstance(d, dict):
            raise ProtocolError("invalid_field", f"orderbook message of type {kind!r:.20}")
        u = integer(d, "u")
        extra = {"seq": str(d["seq"])} if "seq" in d else {}
        event = BookDelta(
            **self._common("orderbook", market, integer(msg, "ts"), rts),
            extra=extra,
            bids=pairs(d.get("b"), "b"),
            asks=pairs(d.get("a"), "a"),
            exchange_sequence=u,
            resync=kind == "snapshot",
        )
        out: list[Message] = [event]
        last = self._last_u.get(name)
        if kind == "snapshot":
            self._broken.discard(name)  # the book starts over from here
        elif last is None:
            if name not in self._broken:
                self._broken.add(name)
                out.append(Resync(name, "sequence_break", f"a delta (u={u}) before any snapshot"))
        elif u != last + 1 and name not in self._broken:
            self._broken.add(name)
            out.append(Resync(name, "sequence_break", f"delta u={u} does not follow u={last}"))
        self._last_u[name] = u
        return out
