"""Typed, frozen events: what the decoders produce and the encoder consumes.

Rules of this module:
- Market-data events mirror the Avro records in ``schemas/`` field for field; ``SCHEMA``
  names the record and ``to_record()`` builds the one dict fastavro writes.
- Prices and amounts are the exchange's exact decimal text; ids are text; timestamps are
  integers in microseconds since the epoch.
- Control messages (subscription acks, heartbeats, errors, reconnect requests) are events
  too, but are consumed by the supervisor and never published.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import msgspec


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"
    UNKNOWN = "UNKNOWN"


class OrderEventType(StrEnum):
    CREATED = "CREATED"
    CHANGED = "CHANGED"
    DELETED = "DELETED"
    UNKNOWN = "UNKNOWN"


# One book level: (price, amount) for aggregated books, (price, amount, order_id) for
# order-level books. Plain tuples: books carry hundreds of them per message.
Level = tuple[str, str] | tuple[str, str, str]


def level(price: str, amount: str, order_id: str | None = None) -> Level:
    return (price, amount) if order_id is None else (price, amount, order_id)


def _levels(levels: tuple[Level, ...]) -> list[dict[str, str | None]]:
    return [
        {"price": lv[0], "amount": lv[1], "order_id": lv[2] if len(lv) > 2 else None}
        for lv in levels
    ]


class MarketEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Fields every published record carries.

    Market events are msgspec Structs (frozen, keyword-only, like the dataclasses they
    replaced): built several thousand times a second, they cost a fraction of a frozen
    dataclass of 22 fields. They hold no reference cycles (text, numbers,
    tuples, one dict of text), so the cyclic garbage collector does not track them."""

    SCHEMA: ClassVar[str] = ""

    exchange: str
    market: str
    channel: str
    exchange_ts_us: int
    exchange_ts_raw: str
    receive_ts_us: int
    connection_id: str
    sequence: int
    extra: dict[str, str] = {}  # msgspec gives each instance its own empty dict

    def _common(self) -> dict[str, Any]:
        return {
            "exchange": self.exchange,
            "market": self.market,
            "channel": self.channel,
            "exchange_ts_us": self.exchange_ts_us,
            "exchange_ts_raw": self.exchange_ts_raw,
            "receive_ts_us": self.receive_ts_us,
            "connection_id": self.connection_id,
            "sequence": self.sequence,
            "extra": self.extra,
        }

    def to_record(self) -> dict[str, Any]:
        raise NotImplementedError


class Trade(MarketEvent, frozen=True, kw_only=True, gc=False):
    SCHEMA: ClassVar[str] = "connector.Trade"

    trade_id: str
    price: str
    amount: str
    side: Side
    buy_order_id: str | None = None
    sell_order_id: str | None = None
    backfilled: bool = False

    def to_record(self) -> dict[str, Any]:
        r = self._common()
        r["trade_id"] = self.trade_id
        r["price"] = self.price
        r["amount"] = self.amount
        r["side"] = self.side.value
        r["buy_order_id"] = self.buy_order_id
        r["sell_order_id"] = self.sell_order_id
        r["backfilled"] = self.backfilled
        return r


class OrderEvent(MarketEvent, frozen=True, kw_only=True, gc=False):
    SCHEMA: ClassVar[str] = "connector.OrderEvent"

    event_type: OrderEventType
    order_id: str
    side: Side
    price: str
    amount: str
    amount_at_create: str | None = None
    amount_traded: str | None = None
    order_subtype: int | None = None
    is_liquidation: bool | None = None
    datetime_raw: str | None = None
    event_id: str | None = None
    pre_event_id: str | None = None
    order_source: str | None = None

    def to_record(self) -> dict[str, Any]:
        r = self._common()
        r["event_type"] = self.event_type.value
        r["order_id"] = self.order_id
        r["side"] = self.side.value
        r["price"] = self.price
        r["amount"] = self.amount
        r["amount_at_create"] = self.amount_at_create
        r["amount_traded"] = self.amount_traded
        r["order_subtype"] = self.order_subtype
        r["is_liquidation"] = self.is_liquidation
        r["datetime_raw"] = self.datetime_raw
        r["event_id"] = self.event_id
        r["pre_event_id"] = self.pre_event_id
        r["order_source"] = self.order_source
        return r


class BookSnapshot(MarketEvent, frozen=True, kw_only=True, gc=False):
    SCHEMA: ClassVar[str] = "connector.BookSnapshot"

    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    exchange_sequence: int | None = None
    resync: bool = False

    def to_record(self) -> dict[str, Any]:
        r = self._common()
        r["bids"] = _levels(self.bids)
        r["asks"] = _levels(self.asks)
        r["exchange_sequence"] = self.exchange_sequence
        r["resync"] = self.resync
        return r


class BookDelta(BookSnapshot, frozen=True, kw_only=True, gc=False):
    SCHEMA: ClassVar[str] = "connector.BookDelta"


class FundingRate(MarketEvent, frozen=True, kw_only=True, gc=False):
    SCHEMA: ClassVar[str] = "connector.FundingRate"

    funding_rate: str
    mark_price: str | None = None
    index_price: str | None = None
    next_funding_time_us: int | None = None
    next_funding_time_raw: str | None = None

    def to_record(self) -> dict[str, Any]:
        r = self._common()
        r["funding_rate"] = self.funding_rate
        r["mark_price"] = self.mark_price
        r["index_price"] = self.index_price
        r["next_funding_time_us"] = self.next_funding_time_us
        r["next_funding_time_raw"] = self.next_funding_time_raw
        return r


class PrivateEvent(MarketEvent, frozen=True, kw_only=True, gc=False):
    """An event of a private (account) channel; its channel's schema is one of the
    connector.Private* records, which share this shape."""

    SCHEMA: ClassVar[str] = "connector.PrivateOrder"

    event: str
    entity_id: str | None = None
    side: Side | None = None
    price: str | None = None
    amount: str | None = None

    def to_record(self) -> dict[str, Any]:
        r = self._common()
        r["event"] = self.event
        r["entity_id"] = self.entity_id
        r["side"] = None if self.side is None else self.side.value
        r["price"] = self.price
        r["amount"] = self.amount
        return r


class StatusKind(StrEnum):
    GAP = "GAP"
    SEQUENCE_BREAK = "SEQUENCE_BREAK"


class Recovery(StrEnum):
    NONE = "NONE"
    BACKFILLED = "BACKFILLED"
    RESYNCED = "RESYNCED"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True, kw_only=True)
class Status:
    """What a subscription did not deliver, and how it was recovered (``schemas/``)."""

    SCHEMA: ClassVar[str] = "connector.Status"

    exchange: str
    market: str
    channel: str
    kind: StatusKind
    reason: str
    start_us: int
    end_us: int
    recovery: Recovery
    recovered_events: int
    connection_id: str
    detail: str
    emitted_ts_us: int

    def to_record(self) -> dict[str, Any]:
        return {
            "exchange": self.exchange,
            "market": self.market,
            "channel": self.channel,
            "kind": self.kind.value,
            "reason": self.reason,
            "start_us": self.start_us,
            "end_us": self.end_us,
            "recovery": self.recovery.value,
            "recovered_events": self.recovered_events,
            "connection_id": self.connection_id,
            "detail": self.detail,
            "emitted_ts_us": self.emitted_ts_us,
        }


# --- control messages (consumed by the supervisor, never published) ---------------


@dataclass(frozen=True, slots=True)
class SubscriptionSucceeded:
    channel: str


@dataclass(frozen=True, slots=True)
class UnsubscriptionSucceeded:
    channel: str


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    status: str


@dataclass(frozen=True, slots=True)
class ReconnectRequested:
    pass


@dataclass(frozen=True, slots=True)
class ExchangeError:
    channel: str
    code: str | None
    message: str


@dataclass(frozen=True, slots=True)
class Resync:
    """The stream of subscription ``channel`` broke (a sequence gap, a checksum
    mismatch): the connection resubscribes it and the gap is recovered."""

    channel: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Maintenance:
    """The exchange paused (``active``) or resumed its service on this connection."""

    active: bool
    message: str


Control = (
    SubscriptionSucceeded
    | UnsubscriptionSucceeded
    | HeartbeatReply
    | ReconnectRequested
    | ExchangeError
    | Resync
    | Maintenance
)
Message = MarketEvent | Control

EVENT_TYPES: tuple[type[MarketEvent], ...] = (
    Trade,
    OrderEvent,
    BookSnapshot,
    BookDelta,
    FundingRate,
)
