"""Binance spot behind the adapter interface, and its recovery after a gap.

Recovery, per channel:
    trade       REST ``/api/v3/trades`` (the last 1000): trades after the last one
                published. Binance trade ids are consecutive per symbol, so the backfill
                knows whether it is complete (FAILED, with how many are missing, if not);
    aggTrade    REST ``/api/v3/aggTrades?fromId=`` from the last published id, page by
                page (consecutive ids too);
    depth       always (diffs alone build no book): REST ``/api/v3/depth`` → a
                ``BookDelta(resync=True)`` with ``exchange_sequence = lastUpdateId``; held
                diffs with ``u`` <= ``lastUpdateId`` are dropped as stale and the first
                kept one must have ``U`` <= ``lastUpdateId`` + 1 (else: resubscribe, a
                SEQUENCE_BREAK status, and a new snapshot);
    bookTicker  nothing to fetch (each message is the whole top of book).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from connector.errors import ProtocolError, RestError
from connector.events import BookDelta, Recovery, Side, Trade
from connector.exchanges.binance.protocol import (
    EXCHANGE,
)
from connector.exchanges.wire import integer, pairs, text
from connector.stream.gaps import Gaps, ResyncWanted, SubState, now_us

if TYPE_CHECKING:
    from connector.kafka.publisher import Publisher
    from connector.metrics import Metrics
    from connector.stream.recent import RecentTrades
from connector.exchanges.binance.rest import BinanceRest

log = logging.getLogger(__name__)


REST_PAGES = 10  # aggTrades pages of 1000 per backfill
SNAPSHOT_TRIES = 3


def rest_trades(
    payload: Any, channel: str, market: str, *, connection_id: str, receive_ts_us: int
) -> list[Trade]:
    """REST trades (``/trades`` or ``/aggTrades``) as backfilled Trade events, by id."""
    if not isinstance(payload, list):
        raise ProtocolError("invalid_field", f"trades answer is a {type(payload).__name__}")
    agg = channel == "aggTrade"
    out = []
    for d in payload:
        if not isinstance(d, dict):
            raise ProtocolError("invalid_field", "a REST trade is not an object")
        ts = integer(d, "T" if agg else "time")
        maker = d.get("m" if agg else "isBuyerMaker")
        out.append(
            Trade(
                exchange=EXCHANGE,
                market=market,
                channel=channel,
                exchange_ts_us=ts * 1000,
                exchange_ts_raw=str(ts),
                receive_ts_us=receive_ts_us,
                connection_id=connection_id,
                sequence=0,
                extra=(
                    {"first_trade_id": str(integer(d, "f")), "last_trade_id": str(integer(d, "l"))}
                    if agg
                    else {}
                ),
                trade_id=str(integer(d, "a" if agg else "id")),
                price=text(d, "p" if agg else "price"),
                amount=text(d, "q" if agg else "qty"),
                side=Side.SELL if maker is True else Side.BUY if maker is False else Side.UNKNOWN,
                backfilled=True,
            )
        )
    out.sort(key=lambda t: int(t.trade_id))
    return out


def rest_book(payload: Any, market: str, *, connection_id: str, receive_ts_us: int) -> BookDelta:
    if not isinstance(payload, dict):
        raise ProtocolError("invalid_field", "depth answer is not an object")
    return BookDelta(
        exchange=EXCHANGE,
        market=market,
        channel="depth",
        exchange_ts_us=receive_ts_us,  # the REST book carries no time
        exchange_ts_raw="",
        receive_ts_us=receive_ts_us,
        connection_id=connection_id,
        sequence=0,
        bids=pairs(payload.get("bids"), "bids"),
        asks=pairs(payload.get("asks"), "asks"),
        exchange_sequence=integer(payload, "lastUpdateId"),
        resync=True,
    )


class BinanceGaps(Gaps):
    exchange = EXCHANGE

    def __init__(
        self,
        publisher: Publisher,
        rest: BinanceRest,
        recent: RecentTrades,
        metrics: Metrics,
        resync: ResyncWanted | None = None,
    ) -> None:
        super().__init__(publisher, recent, metrics, resync)
        self._rest = rest

    def trade_key(self, channel: str, market: str) -> str:
        return f"{channel}:{market}"  # trade and aggTrade ids are separate sequences

    def live(self, sub: SubState) -> None:
        gap_start = sub.down_since_us
        if sub.channel in ("trade", "aggTrade") and gap_start is not None:
            sub.recovering = True  # hold live trades until the backfill is published
            self._spawn(self._backfill(sub, gap_start))
        elif sub.channel == "depth":
            sub.recovering = True  # hold diffs until the snapshot is published
            self._spawn(self._resync(sub, gap_start))
        elif gap_start is not None:
            self._close_gap_later(
                sub, gap_start, Recovery.NONE, 0, "bookTicker messages are full state"
            )

    async def _backfill(self, sub: SubState, gap_start: int) -> None:
        end = now_us()
        symbol = sub.market.upper()
        after = self._recent.last_id.get(self.trade_key(sub.channel, sub.market))
        recovery, detail, trades = Recovery.BACKFILLED, "", []
        try:
            if sub.channel == "trade":
                trades = rest_trades(
                    await self._rest.trades(symbol),
                    "trade",
                    sub.market,
                    connection_id=self.connection_id,
                    receive_ts_us=end,
                )
            else:
                from_id = None if after is None else after + 1
                for _ in range(REST_PAGES):
                    page = rest_trades(
                        await self._rest.agg_trades(symbol, from_id, gap_start // 1000),
                        "aggTrade",
                        sub.market,
                        connection_id=self.connection_id,
                        receive_ts_us=end,
                    )
                    trades += page
                    if len(page) < 1000:
                        break
                    from_id = int(page[-1].trade_id) + 1
            if after is not None:
                trades = [t for t in trades if int(t.trade_id) > after]
                if trades and int(trades[0].trade_id) > after + 1:
                    recovery = Recovery.FAILED
                    detail = (
                        f"{int(trades[0].trade_id) - after - 1} trade(s) older than the REST "
                        "window are missing"
                    )
            else:
                trades = [t for t in trades if t.exchange_ts_us >= gap_start - 1_000_000]
        except (RestError, ProtocolError) as exc:
            recovery, detail = Recovery.FAILED, f"backfill failed: {exc}"
        published = await self._publish_backfill(sub, trades)
        await self._release(sub)
        await self._close_gap(sub, gap_start, recovery, published, detail, end)

    async def _resync(self, sub: SubState, gap_start: int | None) -> None:
        async def fetch() -> BookDelta:
            for attempt in range(SNAPSHOT_TRIES):
                snapshot = rest_book(
                    await self._rest.depth(sub.market.upper()),
                    sub.market,
                    connection_id=self.connection_id,
                    receive_ts_us=now_us(),
                )
                first = next((e for e, _ in sub.held if isinstance(e, BookDelta)), None)
                first_u = int(first.extra["first_update_id"]) if first else None
                last_id = snapshot.exchange_sequence or 0
                if first_u is None or last_id + 1 >= first_u or attempt == SNAPSHOT_TRIES - 1:
                    break
                await asyncio.sleep(0.5)  # the snapshot is older than the stream: again
            return snapshot

        await self._resync_from(sub, gap_start, fetch)

    def _joined(self, sub: SubState, first: BookDelta) -> None:
        assert sub.cutoff_seq is not None
        first_u = int(first.extra.get("first_update_id", "0"))
        if first_u > sub.cutoff_seq + 1 and self.resync_wanted is not None:
            self.resync_wanted(
                sub,
                "sequence_break",
                f"the first diff after the snapshot (U={first_u}) does not join "
                f"lastUpdateId {sub.cutoff_seq}",
            )
