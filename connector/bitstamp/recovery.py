"""Pure recovery logic for Bitstamp gaps: REST payloads → events, deduplication.

- ``backfill_span``: which ``time=`` window of /transactions/ covers a gap;
- ``trades_from_rest``: REST trades newer than what was published, oldest first, as
  ``Trade(backfilled=True, sequence=0)``;
- ``snapshot_from_rest``: the REST book as a ``BookDelta(resync=True)`` for the
  diff_order_book topic (a full book that replaces what a consumer had);
- ``RecentTrades``: the last N trade ids per market, so a trade is published once even
  when the live stream and a backfill both carry it.
"""

from __future__ import annotations

from typing import Any

from connector.bitstamp.protocol import EXCHANGE
from connector.errors import ProtocolError
from connector.events import BookDelta, Level, Side, Trade
from connector.recent import RecentTrades
from connector.timeutil import parse_epoch_us

__all__ = ["RecentTrades", "backfill_span", "snapshot_from_rest", "trades_from_rest"]

_SIDES = {"0": Side.BUY, "1": Side.SELL, 0: Side.BUY, 1: Side.SELL}
_SPANS = (("minute", 60), ("hour", 3600), ("day", 86400))


def backfill_span(gap_s: float, slack_s: float = 10.0) -> tuple[str, bool]:
    """(time= value, whether it covers the whole gap)."""
    for name, seconds in _SPANS:
        if gap_s + slack_s <= seconds:
            return name, True
    return "day", False


def _side(value: Any) -> Side:
    if isinstance(value, list | dict):  # unhashable: it cannot even be looked up
        raise ProtocolError("invalid_field", f"REST trade field 'type' is {value!r:.60}")
    return _SIDES.get(value, Side.UNKNOWN)


def _text(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ProtocolError("invalid_field", f"REST trade field {key!r} is {value!r:.60}")


def trades_from_rest(
    payload: Any,
    market: str,
    *,
    connection_id: str,
    receive_ts_us: int,
    after_id: int | None,
    since_us: int,
    recent: RecentTrades,
) -> list[Trade]:
    """Trades to backfill, oldest first: newer than ``after_id`` (or, when nothing was
    published yet, not older than ``since_us``) and not already published."""
    if not isinstance(payload, list):
        raise ProtocolError("invalid_field", f"transactions answer is a {type(payload).__name__}")
    out = []
    for entry in payload:
        if not isinstance(entry, dict):
            raise ProtocolError("invalid_field", "a transaction is not an object")
        tid = _text(entry, "tid")
        if not tid.isdigit():
            raise ProtocolError("invalid_field", f"trade id {tid!r} is not a number")
        date = _text(entry, "date")
        try:
            ts = parse_epoch_us(date)
        except (ValueError, TypeError):
            raise ProtocolError("invalid_field", f"trade date {date!r}") from None
        if after_id is not None:
            if int(tid) <= after_id:
                continue
        elif ts < since_us - 1_000_000:  # dates have second resolution
            continue
        if recent.seen(market, tid):
            continue
        out.append(
            Trade(
                exchange=EXCHANGE,
                market=market,
                channel="live_trades",
                exchange_ts_us=ts,
                exchange_ts_raw=date,
                receive_ts_us=receive_ts_us,
                connection_id=connection_id,
                sequence=0,
                trade_id=tid,
                price=_text(entry, "price"),
                amount=_text(entry, "amount"),
                side=_side(entry.get("type")),
                backfilled=True,
            )
        )
    out.sort(key=lambda t: int(t.trade_id))
    return out


def _rest_levels(raw: Any, key: str) -> tuple[Level, ...]:
    if not isinstance(raw, list):
        raise ProtocolError("invalid_field", f"REST book {key} is not a list")
    out: list[Level] = []
    for lv in raw:
        if not (isinstance(lv, list) and len(lv) >= 2 and all(isinstance(x, str) for x in lv)):
            raise ProtocolError("invalid_field", f"REST book level {lv!r:.60}")
        out.append((lv[0], lv[1]) if len(lv) == 2 else (lv[0], lv[1], lv[2]))
    return tuple(out)


def snapshot_from_rest(
    payload: Any, market: str, *, connection_id: str, receive_ts_us: int
) -> BookDelta:
    if not isinstance(payload, dict):
        raise ProtocolError("invalid_field", "order book answer is not an object")
    raw_ts = payload.get("microtimestamp") or payload.get("timestamp")
    if not isinstance(raw_ts, str):
        raise ProtocolError("missing_field", "order book answer has no microtimestamp")
    try:
        ts = parse_epoch_us(raw_ts)
    except (ValueError, TypeError):
        raise ProtocolError("invalid_field", f"order book timestamp {raw_ts!r}") from None
    return BookDelta(
        exchange=EXCHANGE,
        market=market,
        channel="diff_order_book",
        exchange_ts_us=ts,
        exchange_ts_raw=raw_ts,
        receive_ts_us=receive_ts_us,
        connection_id=connection_id,
        sequence=0,
        bids=_rest_levels(payload.get("bids"), "bids"),
        asks=_rest_levels(payload.get("asks"), "asks"),
        resync=True,
    )
