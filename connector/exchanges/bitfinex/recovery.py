"""Bitfinex v2 public channels behind the adapter interface.

Recovery: a (re)subscription sends a full book snapshot (published as a resync) and a
trades snapshot with the latest trades (already published ones are dropped by id); the
rest of a trade gap comes from REST ``/v2/trades/{symbol}/hist`` (oldest first from the
gap's start, up to 10000 trades: a longer gap is reported FAILED).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from connector.errors import ProtocolError
from connector.events import Side, Trade
from connector.exchanges.bitfinex.protocol import (
    EXCHANGE,
)
from connector.exchanges.wire import decimal_text
from connector.stream.gaps import ResyncWanted, SnapshotGaps, SubState, now_us

if TYPE_CHECKING:
    from connector.kafka.publisher import Publisher
    from connector.metrics import Metrics
    from connector.stream.recent import RecentTrades

from connector.exchanges.bitfinex.rest import HIST_LIMIT, BitfinexRest


def rest_trades(
    payload: Any, market: str, *, connection_id: str, receive_ts_us: int
) -> list[Trade]:
    """``[[ID, MTS, AMOUNT, PRICE], ...]`` → backfilled Trades, as sent (oldest first)."""
    if not isinstance(payload, list):
        raise ProtocolError("invalid_field", f"trades/hist answered {payload!r:.200}")
    out = []
    for entry in payload:
        if not (isinstance(entry, list) and len(entry) >= 4):
            raise ProtocolError("invalid_field", f"trade {entry!r:.60}")
        trade_id, mts = entry[0], entry[1]
        if not isinstance(trade_id, int) or not isinstance(mts, int):
            raise ProtocolError("invalid_field", f"trade id/time {entry[:2]!r:.60}")
        amount = decimal_text(entry[2], "amount")
        out.append(
            Trade(
                exchange=EXCHANGE,
                market=market,
                channel="trades",
                exchange_ts_us=mts * 1000,
                exchange_ts_raw=str(mts),
                receive_ts_us=receive_ts_us,
                connection_id=connection_id,
                sequence=0,
                trade_id=str(trade_id),
                price=decimal_text(entry[3], "price"),
                amount=amount.removeprefix("-"),
                side=Side.SELL if amount.startswith("-") else Side.BUY,
                backfilled=True,
            )
        )
    return out


class BitfinexGaps(SnapshotGaps):
    exchange = EXCHANGE
    book_channels = frozenset({"book"})

    def __init__(
        self,
        publisher: Publisher,
        rest: BitfinexRest,
        recent: RecentTrades,
        metrics: Metrics,
        resync: ResyncWanted | None = None,
    ) -> None:
        super().__init__(publisher, recent, metrics, resync)
        self._rest = rest

    async def fetch_trades(self, sub: SubState, gap_start_us: int) -> tuple[list[Trade], str]:
        payload = await self._rest.trades(sub.market, gap_start_us // 1000 - 1)
        trades = rest_trades(
            payload, sub.market, connection_id=self.connection_id, receive_ts_us=now_us()
        )
        if len(trades) >= HIST_LIMIT:
            return trades, f"over {HIST_LIMIT} trades since the gap began: the rest is missing"
        return trades, ""
