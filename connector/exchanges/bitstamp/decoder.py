"""Pure decoder for Bitstamp WebSocket API v2 frames: bytes in, typed events out.

No I/O and no clock: the caller passes the receive time. One decoder serves one
connection; it numbers the market events it emits (``sequence``, from 1) so a consumer
can see what a connection delivered. Every failure is a ``ProtocolError`` with a short
reason tag; nothing else escapes ``feed``.

Exactness: prices and amounts are taken from Bitstamp's ``*_str`` fields when present.
When a decimal is only available as a JSON number, the frame is parsed again with the
standard library keeping every number's original text, so no value is ever rounded.

Order books (a quarter of a busy stream, 100 levels a side) and live orders (half of it)
first try a typed fast path: msgspec decodes the frame straight into typed fields (levels
as tuples of non-empty strings), validating as it parses. It accepts only frames of the
exact documented shape; anything else (numbers where text is documented, empty strings,
unknown fields, mixed level widths) goes the general way, which names what is wrong. For
every frame the fast path accepts, the result equals the general path's (property tests
hold them side by side).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
import orjson

from connector.errors import ProtocolError
from connector.events import (
    BookDelta,
    BookSnapshot,
    ExchangeError,
    FundingRate,
    HeartbeatReply,
    Message,
    OrderEvent,
    OrderEventType,
    PrivateEvent,
    ReconnectRequested,
    Side,
    SubscriptionSucceeded,
    Trade,
    UnsubscriptionSucceeded,
)
from connector.exchanges.bitstamp import values as v
from connector.exchanges.bitstamp.protocol import (
    EXCHANGE,
    HEARTBEAT_FRAME,
    split_channel,
    subscribe_frame,
    unsubscribe_frame,
)
from connector.exchanges.wire import invalid, loads_exact, missing
from connector.timeutil import parse_epoch_us

_ORDER_EVENTS = {
    "order_created": OrderEventType.CREATED,
    "order_changed": OrderEventType.CHANGED,
    "order_deleted": OrderEventType.DELETED,
}
# Fields represented by a typed field (or, like the float twins of *_str fields and the
# seconds `timestamp` next to `microtimestamp`, fully by one); everything else goes to
# the record's `extra` map.
_TRADE_KNOWN = frozenset(
    {
        "id",
        "id_str",
        "amount",
        "amount_str",
        "price",
        "price_str",
        "type",
        "timestamp",
        "microtimestamp",
        "buy_order_id",
        "sell_order_id",
    }
)
_ORDER_KNOWN = frozenset(
    {
        "id",
        "id_str",
        "amount",
        "amount_str",
        "price",
        "price_str",
        "order_type",
        "datetime",
        "microtimestamp",
        "amount_at_create",
        "amount_traded",
        "order_subtype",
        "is_liquidation",
        "event_id",
        "pre_event_id",
        "order_source",
    }
)
_BOOK_KNOWN = frozenset({"bids", "asks", "timestamp", "microtimestamp"})
_FUNDING_KNOWN = frozenset(
    {
        "funding_rate",
        "mark_price",
        "index_price",
        "market",
        "timestamp",
        "next_funding_time",
        "microtimestamp",
    }
)


# --- the typed fast path for book and live_orders frames --------------------------------
_Text = Annotated[str, msgspec.Meta(min_length=1)]


class _Book(msgspec.Struct, forbid_unknown_fields=True):
    microtimestamp: _Text
    bids: tuple[tuple[_Text, _Text], ...]
    asks: tuple[tuple[_Text, _Text], ...]
    timestamp: Any = None  # the seconds twin: never read while microtimestamp is there


class _DetailBook(msgspec.Struct, forbid_unknown_fields=True):
    microtimestamp: _Text
    bids: tuple[tuple[_Text, _Text, _Text], ...]
    asks: tuple[tuple[_Text, _Text, _Text], ...]
    timestamp: Any = None


class _BookFrame(msgspec.Struct):  # other top-level keys are ignored, as by the general path
    event: str
    channel: str
    data: _Book


class _DetailBookFrame(msgspec.Struct):
    event: str
    channel: str
    data: _DetailBook


_Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), lt=2**31)]


class _Order(msgspec.Struct, forbid_unknown_fields=True):
    """live_orders data as Bitstamp sends it: every decimal as text (``*_str``), ids and
    event ids as text, the subtype a 32-bit int. Its fields are exactly _ORDER_KNOWN, so
    a frame with anything else (which the general path keeps in ``extra``) goes there."""

    id_str: _Text
    order_type: int
    microtimestamp: _Text
    amount_str: _Text
    price_str: _Text
    # The number twins of id_str, amount_str and price_str: never read while those are.
    id: Any = None
    amount: Any = None
    price: Any = None
    datetime: str | None = None
    amount_traded: _Text | None = None
    amount_at_create: _Text | None = None
    order_subtype: _Int32 | None = None
    is_liquidation: bool | None = None
    event_id: _Text | None = None
    pre_event_id: _Text | None = None
    order_source: str | None = None


class _OrderFrame(msgspec.Struct):
    event: str
    channel: str
    data: _Order


_FAST_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "order_book": msgspec.json.Decoder(_BookFrame),
    "diff_order_book": msgspec.json.Decoder(_BookFrame),
    "detail_order_book": msgspec.json.Decoder(_DetailBookFrame),
    "live_orders": msgspec.json.Decoder(_OrderFrame),
}
# The channel's name, found from the end of the frame (Bitstamp puts it after the data).
_CHANNEL_KEY = '"channel"'
_CHANNEL_KEY_BYTES = b'"channel"'
_CHANNEL_AT = re.compile(r'"channel"\s*:\s*"([a-z0-9_-]{1,100})"')
_CHANNEL_AT_BYTES = re.compile(rb'"channel"\s*:\s*"([a-z0-9_-]{1,100})"')
_MAX_NAMES = 10_000  # channel names remembered per connection (1 024 are subscribable)


class BitstampDecoder:
    """Decodes the frames of one Bitstamp connection.

    ``feed(frame, receive_ts_us)`` returns the messages in the frame (market events and
    control messages) or raises ``ProtocolError``.
    """

    __slots__ = ("_channels", "connection_id", "sequence")

    def __init__(self, connection_id: str) -> None:
        self.connection_id = connection_id
        self.sequence = 0
        self._channels: dict[str, tuple[str, str]] = {}  # channel name → (channel, market)

    def subscribe(self, names: list[str]) -> list[str]:
        return [subscribe_frame(name) for name in names]

    def unsubscribe(self, names: list[str]) -> list[str]:
        return [unsubscribe_frame(name) for name in names]

    def ping(self) -> str:
        return HEARTBEAT_FRAME

    def feed(self, frame: bytes | str, receive_ts_us: int) -> list[Message]:
        fast = self._fast(frame, receive_ts_us)
        if fast is not None:
            return [fast]
        return self._feed(frame, receive_ts_us)

    def _where(self, name: str) -> tuple[str, str] | None:
        """(channel, market) of a channel name, None if unknown; known names are cached
        (a bounded cache: the names come from the wire)."""
        where = self._channels.get(name)
        if where is None:
            where = split_channel(name)
            if where is not None:
                if len(self._channels) >= _MAX_NAMES:
                    self._channels.clear()
                self._channels[name] = where
        return where

    def _fast(self, frame: bytes | str, rts: int) -> BookSnapshot | OrderEvent | None:
        """The event if ``frame`` is a book or live_orders frame of the exact documented
        shape; None sends it the general way (which also reports what is wrong with it)."""
        if isinstance(frame, str):
            at = _CHANNEL_AT.match(frame, max(frame.rfind(_CHANNEL_KEY), 0))
            if at is None:
                return None
            name = at.group(1)
        else:
            at_bytes = _CHANNEL_AT_BYTES.match(frame, max(frame.rfind(_CHANNEL_KEY_BYTES), 0))
            if at_bytes is None:
                return None
            name = at_bytes.group(1).decode("ascii")
        where = self._where(name)
        if where is None:
            return None
        channel, market = where
        decoder = _FAST_DECODERS.get(channel)
        if decoder is None:
            return None
        try:
            msg = decoder.decode(frame)
        except msgspec.DecodeError:  # ValidationError included
            return None
        # The name found must be the frame's own channel (not text inside another field).
        if msg.channel != name:
            return None
        data = msg.data
        try:
            ts = parse_epoch_us(data.microtimestamp)
        except (ValueError, TypeError):
            return None
        if channel == "live_orders":
            event_type = _ORDER_EVENTS.get(msg.event)
            if event_type is None:
                return None
            self.sequence += 1
            return OrderEvent(
                exchange=EXCHANGE,
                market=market,
                channel=channel,
                exchange_ts_us=ts,
                exchange_ts_raw=data.microtimestamp,
                receive_ts_us=rts,
                connection_id=self.connection_id,
                sequence=self.sequence,
                extra={},
                event_type=event_type,
                order_id=data.id_str,
                side=v.SIDES.get(data.order_type, Side.UNKNOWN),
                price=data.price_str,
                amount=data.amount_str,
                amount_at_create=data.amount_at_create,
                amount_traded=data.amount_traded,
                order_subtype=data.order_subtype,
                is_liquidation=data.is_liquidation,
                datetime_raw=data.datetime,
                event_id=data.event_id,
                pre_event_id=data.pre_event_id,
                order_source=data.order_source,
            )
        if msg.event != "data":
            return None
        self.sequence += 1
        return (BookDelta if channel == "diff_order_book" else BookSnapshot)(
            exchange=EXCHANGE,
            market=market,
            channel=channel,
            exchange_ts_us=ts,
            exchange_ts_raw=data.microtimestamp,
            receive_ts_us=rts,
            connection_id=self.connection_id,
            sequence=self.sequence,
            extra={},
            bids=data.bids,
            asks=data.asks,
        )

    def _feed(self, frame: bytes | str, receive_ts_us: int) -> list[Message]:
        try:
            msg = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError("invalid_json", str(exc), frame) from None
        try:
            return self._dispatch(msg, frame, receive_ts_us)
        except v.NeedsExactNumbers:
            pass
        msg = loads_exact(frame)
        return self._dispatch(msg, frame, receive_ts_us)

    def _dispatch(self, msg: Any, frame: bytes | str, receive_ts_us: int) -> list[Message]:
        if not isinstance(msg, dict):
            raise ProtocolError("not_an_object", f"frame is a JSON {type(msg).__name__}", frame)
        event = msg.get("event")
        if not isinstance(event, str):
            raise ProtocolError("missing_field", "frame has no string 'event'", frame)
        channel_name = msg.get("channel", "")
        if not isinstance(channel_name, str):
            raise ProtocolError("invalid_field", "'channel' is not a string", frame)
        data = msg.get("data")
        if event.startswith("bts:"):
            return [self._control(event, channel_name, data, frame)]
        if channel_name.startswith("private-"):
            private = self._private(event, channel_name, data, frame, receive_ts_us)
            self.sequence += 1
            return [private]
        handler = _HANDLERS.get(event)
        if handler is None:
            raise ProtocolError("unknown_event", f"unknown event {event!r:.60}", frame)
        if not isinstance(data, dict):
            raise ProtocolError("invalid_field", f"'data' of {event!r} is not an object", frame)
        where = self._where(channel_name)
        if where is None:
            raise ProtocolError("unknown_channel", f"unknown channel {channel_name!r:.80}", frame)
        channel, market = where
        if event not in _EVENTS_OF[channel]:
            raise ProtocolError("unknown_event", f"event {event!r} is not sent on {channel}", frame)
        try:
            out = handler(self, event, channel, market, data, receive_ts_us)
        except ProtocolError as exc:
            exc.frame = frame
            raise
        self.sequence += 1  # only a published event consumes a number
        return [out]

    def _control(self, event: str, channel: str, data: Any, frame: bytes | str) -> Message:
        if event == "bts:subscription_succeeded":
            return SubscriptionSucceeded(channel)
        if event == "bts:unsubscription_succeeded":
            return UnsubscriptionSucceeded(channel)
        if event == "bts:heartbeat":
            status = data.get("status", "") if isinstance(data, dict) else ""
            return HeartbeatReply(str(status))
        if event == "bts:request_reconnect":
            return ReconnectRequested()
        if event == "bts:error":
            if isinstance(data, dict):
                code = data.get("code")
                message = data.get("message")
                return ExchangeError(
                    channel,
                    None if code is None else str(code),
                    message if isinstance(message, str) else orjson.dumps(data).decode(),
                )
            return ExchangeError(channel, None, str(data))
        raise ProtocolError("unknown_event", f"unknown control event {event!r:.60}", frame)

    def _private(
        self, event: str, name: str, data: Any, frame: bytes | str, rts: int
    ) -> PrivateEvent:
        where = self._where(name)
        if where is None:
            raise ProtocolError("unknown_channel", f"unknown channel {name!r:.80}", frame)
        channel, market = where
        if event not in _PRIVATE_EVENTS[channel]:
            raise ProtocolError("unknown_event", f"event {event!r} is not sent on {channel}", frame)
        if not isinstance(data, dict):
            raise ProtocolError("invalid_field", f"'data' of {event!r} is not an object", frame)
        if any(type(v) is float for v in data.values()):
            raise v.NeedsExactNumbers
        try:
            ts, ts_raw = v.timestamp(data, "microtimestamp", "ts", "timestamp", "datetime")
            id_keys = _PRIVATE_ID[channel]
            entity = None
            for key in id_keys:
                entity = v.opt_ident(key, data.get(key))
                if entity is not None:
                    break
            side_raw = data.get(_PRIVATE_SIDE[channel]) if _PRIVATE_SIDE[channel] else None
            side = None if side_raw is None else v.side_of(_PRIVATE_SIDE[channel], side_raw)
            price = v.opt_decimal(data, "price_str") or v.opt_decimal(data, "price")
            amount = v.opt_decimal(data, "amount_str") or v.opt_decimal(data, "amount")
        except ProtocolError as exc:
            exc.frame = frame
            raise
        return PrivateEvent(
            exchange=EXCHANGE,
            market=market,
            channel=channel,
            exchange_ts_us=ts,
            exchange_ts_raw=ts_raw,
            receive_ts_us=rts,
            connection_id=self.connection_id,
            sequence=self.sequence + 1,
            extra=v.extra(data, _PRIVATE_KNOWN | set(id_keys) | {_PRIVATE_SIDE[channel]}),
            event=event,
            entity_id=entity,
            side=side,
            price=price,
            amount=amount,
        )

    def _trade(
        self, event: str, channel: str, market: str, data: dict[str, Any], rts: int
    ) -> Trade:
        ts, ts_raw = v.timestamp(data, "microtimestamp", "timestamp")
        side = v.side_of("type", data.get("type"))
        if "type" not in data:
            raise missing("type")
        return Trade(
            exchange=EXCHANGE,
            market=market,
            channel=channel,
            exchange_ts_us=ts,
            exchange_ts_raw=ts_raw,
            receive_ts_us=rts,
            connection_id=self.connection_id,
            sequence=self.sequence + 1,
            extra=v.extra(data, _TRADE_KNOWN),
            trade_id=v.ident(data, "id_str", "id"),
            price=v.decimal(data, "price_str", "price"),
            amount=v.decimal(data, "amount_str", "amount"),
            side=side,
            buy_order_id=v.opt_ident("buy_order_id", data.get("buy_order_id")),
            sell_order_id=v.opt_ident("sell_order_id", data.get("sell_order_id")),
        )

    def _order(
        self, event: str, channel: str, market: str, data: dict[str, Any], rts: int
    ) -> OrderEvent:
        ts, ts_raw = v.timestamp(data, "microtimestamp", "datetime")
        if "order_type" not in data:
            raise missing("order_type")
        subtype = data.get("order_subtype")
        if subtype is not None and (isinstance(subtype, bool) or not isinstance(subtype, int)):
            if isinstance(subtype, str) and subtype.isdigit():
                subtype = int(subtype)
            else:
                raise invalid("order_subtype", subtype)
        if subtype is not None and not -(2**31) <= subtype < 2**31:
            raise invalid("order_subtype", subtype)
        liq = data.get("is_liquidation")
        if liq is not None and not isinstance(liq, bool):
            raise invalid("is_liquidation", liq)
        dt = data.get("datetime")
        return OrderEvent(
            exchange=EXCHANGE,
            market=market,
            channel=channel,
            exchange_ts_us=ts,
            exchange_ts_raw=ts_raw,
            receive_ts_us=rts,
            connection_id=self.connection_id,
            sequence=self.sequence + 1,
            extra=v.extra(data, _ORDER_KNOWN),
            event_type=_ORDER_EVENTS[event],
            order_id=v.ident(data, "id_str", "id"),
            side=v.side_of("order_type", data["order_type"]),
            price=v.decimal(data, "price_str", "price"),
            amount=v.decimal(data, "amount_str", "amount"),
            amount_at_create=v.opt_decimal(data, "amount_at_create"),
            amount_traded=v.opt_decimal(data, "amount_traded"),
            order_subtype=subtype,
            is_liquidation=liq,
            datetime_raw=None if dt is None else str(dt),
            event_id=v.opt_ident("event_id", data.get("event_id")),
            pre_event_id=v.opt_ident("pre_event_id", data.get("pre_event_id")),
            order_source=None if data.get("order_source") is None else str(data["order_source"]),
        )

    def _book(
        self, event: str, channel: str, market: str, data: dict[str, Any], rts: int
    ) -> BookSnapshot:
        ts, ts_raw = v.timestamp(data, "microtimestamp", "timestamp")
        cls = BookDelta if channel == "diff_order_book" else BookSnapshot
        return cls(
            exchange=EXCHANGE,
            market=market,
            channel=channel,
            exchange_ts_us=ts,
            exchange_ts_raw=ts_raw,
            receive_ts_us=rts,
            connection_id=self.connection_id,
            sequence=self.sequence + 1,
            extra=v.extra(data, _BOOK_KNOWN),
            bids=v.levels(data, "bids"),
            asks=v.levels(data, "asks"),
        )

    def _funding(
        self, event: str, channel: str, market: str, data: dict[str, Any], rts: int
    ) -> FundingRate:
        ts, ts_raw = v.timestamp(data, "microtimestamp", "timestamp")
        nft = data.get("next_funding_time")
        nft_us: int | None = None
        if nft is not None:
            nft_us, _ = v.timestamp(data, "next_funding_time")
        extra = v.extra(data, _FUNDING_KNOWN)
        sent_market = data.get("market")
        if sent_market is not None and sent_market != market:
            # Keep a disagreeing market text rather than drop it.
            extra = {**extra, "market": str(sent_market)}
        return FundingRate(
            exchange=EXCHANGE,
            market=market,
            channel=channel,
            exchange_ts_us=ts,
            exchange_ts_raw=ts_raw,
            receive_ts_us=rts,
            connection_id=self.connection_id,
            sequence=self.sequence + 1,
            extra=extra,
            funding_rate=v.decimal(data, "funding_rate"),
            mark_price=v.opt_decimal(data, "mark_price"),
            index_price=v.opt_decimal(data, "index_price"),
            next_funding_time_us=nft_us,
            next_funding_time_raw=None if nft is None else str(nft),
        )


_Handler = Callable[[BitstampDecoder, str, str, str, dict[str, Any], int], Message]
_HANDLERS: dict[str, _Handler] = {
    "trade": BitstampDecoder._trade,
    "order_created": BitstampDecoder._order,
    "order_changed": BitstampDecoder._order,
    "order_deleted": BitstampDecoder._order,
    "data": BitstampDecoder._book,
    "funding_rate": BitstampDecoder._funding,
    "funding_rate_saved": BitstampDecoder._funding,
}
_EVENTS_OF: dict[str, frozenset[str]] = {
    "live_trades": frozenset({"trade"}),
    "live_orders": frozenset({"order_created", "order_changed", "order_deleted"}),
    "order_book": frozenset({"data"}),
    "detail_order_book": frozenset({"data"}),
    "diff_order_book": frozenset({"data"}),
    "funding_rate": frozenset({"funding_rate", "funding_rate_saved"}),
}

# Private channels: the events each sends, where its entity id and side are, and the
# fields the typed ones represent (the rest, exact, goes to extra).
_PRIVATE_EVENTS: dict[str, frozenset[str]] = {
    "private_my_orders": frozenset(
        {"order_created", "order_changed", "order_deleted", "stop_active", "stop_inactive"}
    ),
    "private_my_trades": frozenset({"trade"}),
    "private_live_trades": frozenset({"self_trade"}),
    "private_my_settlements": frozenset({"settlement"}),
    "private_my_liquidations": frozenset(
        {
            "im_breach_warning",
            "im_breach",
            "mm_breach_warning",
            "liquidation_start",
            "liquidation_concluded",
        }
    ),
}
_PRIVATE_ID: dict[str, tuple[str, ...]] = {
    "private_my_orders": ("id_str", "id"),
    "private_my_trades": ("id_str", "id"),
    "private_live_trades": (),
    "private_my_settlements": ("id",),
    "private_my_liquidations": ("position_id",),
}
_PRIVATE_SIDE: dict[str, str] = {
    "private_my_orders": "order_type",
    "private_my_trades": "side",
    "private_live_trades": "type",
    "private_my_settlements": "",
    "private_my_liquidations": "",
}
_PRIVATE_KNOWN = frozenset(
    {"price", "price_str", "amount", "amount_str", "microtimestamp", "timestamp", "ts"}
)
