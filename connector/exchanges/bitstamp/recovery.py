"""Bitstamp's recovery after a gap (the shared mechanics are in ``connector.stream.gaps``).

``live(sub)``: a subscription is confirmed; recovery starts by channel:
    live_trades        backfill from REST /transactions/ (after a gap), oldest first,
                       deduplicated by trade id, held live trades published after it;
    diff_order_book    a REST snapshot, always (also at start: diffs alone build no book),
                       published as BookDelta(resync=True); older diffs discarded;
    order_book,
    detail_order_book  the next message (a full book) is marked resync;
    live_orders,
    funding_rate       nothing to fetch (reported; funding_rate is self-healing);
every gap ends in one Status event (kind GAP) with its recovery.

Live-order event chains (``event_id``/``pre_event_id``) are checked here too: a break is a
Status event of kind SEQUENCE_BREAK.

The pure parts (REST payloads → events), tested without I/O:

- ``backfill_span``: which ``time=`` window of /transactions/ covers a gap;
- ``trades_from_rest``: REST trades newer than what was published, oldest first, as
  ``Trade(backfilled=True, sequence=0)``;
- ``snapshot_from_rest``: the REST book as a ``BookDelta(resync=True)`` for the
  diff_order_book topic (a full book that replaces what a consumer had);
- ``RecentTrades``: the last N trade ids per market, so a trade is published once even
  when the live stream and a backfill both carry it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from connector.errors import ProtocolError, RestError
from connector.events import BookDelta, Level, Recovery, Side, Trade
from connector.exchanges.bitstamp.protocol import EXCHANGE
from connector.stream.gaps import Gaps, ResyncWanted, SubState, now_us
from connector.timeutil import parse_epoch_us

if TYPE_CHECKING:
    from connector.exchanges.bitstamp.rest import BitstampRest
    from connector.kafka.publisher import Publisher
    from connector.metrics import Metrics
    from connector.stream.recent import RecentTrades

log = logging.getLogger(__name__)

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


__all__ = ["BitstampGaps", "SubState"]


class BitstampGaps(Gaps):
    exchange = EXCHANGE

    def __init__(
        self,
        publisher: Publisher,
        rest: BitstampRest,
        recent: RecentTrades,
        metrics: Metrics,
        resync: ResyncWanted | None = None,
    ) -> None:
        super().__init__(publisher, recent, metrics, resync)
        self._rest = rest

    def live(self, sub: SubState) -> None:
        gap_start = sub.down_since_us
        if sub.channel == "live_trades" and gap_start is not None:
            sub.recovering = True  # hold live trades until the backfill is published
            self._spawn(self._backfill(sub, gap_start))
        elif sub.channel == "diff_order_book":
            sub.recovering = True  # hold diffs until the snapshot is published
            self._spawn(self._resync_diffs(sub, gap_start))
        elif sub.channel in ("order_book", "detail_order_book"):
            sub.resync_next = True
            if gap_start is not None:
                self._close_gap_later(
                    sub, gap_start, Recovery.RESYNCED, 0, "the next full book is marked resync"
                )
        elif gap_start is not None:
            if sub.channel == "funding_rate":
                detail = "funding_rate messages are full state; the next one is current"
            elif sub.channel.startswith("private_"):
                detail = (
                    "account events in the gap are not replayed on the WebSocket; reconcile "
                    "with the REST API (open_orders, user_transactions)"
                )
            else:
                detail = (
                    "order events in the gap cannot be fetched; rebuild L3 state from a "
                    "detail_order_book resync"
                )
            self._close_gap_later(sub, gap_start, Recovery.NONE, 0, detail)

    async def _backfill(self, sub: SubState, gap_start: int) -> None:
        end = now_us()
        span, whole = backfill_span((end - gap_start) / 1e6)
        recovery, detail, trades = Recovery.BACKFILLED, "", []
        try:
            payload = await self._rest.transactions(sub.market, span)
            trades = trades_from_rest(
                payload,
                sub.market,
                connection_id=self.connection_id,
                receive_ts_us=end,
                after_id=self._recent.last_id.get(sub.market),
                since_us=gap_start,
                recent=self._recent,
            )
            if not whole:
                recovery = Recovery.FAILED
                detail = "gap longer than a day: older trades are beyond the REST window"
        except (RestError, ProtocolError) as exc:
            recovery, detail = Recovery.FAILED, f"backfill failed: {exc}"
        published = await self._publish_backfill(sub, trades)
        await self._release(sub)
        await self._close_gap(sub, gap_start, recovery, published, detail, end)

    async def _resync_diffs(self, sub: SubState, gap_start: int | None) -> None:
        async def fetch() -> BookDelta:
            payload = await self._rest.order_book(sub.market)
            return snapshot_from_rest(
                payload, sub.market, connection_id=self.connection_id, receive_ts_us=now_us()
            )

        await self._resync_from(sub, gap_start, fetch)
