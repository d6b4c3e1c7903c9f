"""Bybit v5 public market data behind the adapter interface.

Recovery: an orderbook subscription gets a full snapshot whenever it is (re)subscribed,
so a gap or a sequence break ends in a ``BookDelta(resync=True)``. publicTrade is
backfilled from REST ``/v5/market/recent-trade`` (the category is the WebSocket path's:
spot, linear, inverse): its window is the latest 60 trades on spot and 1000 on
derivatives, so a longer gap is reported FAILED with how far back the window reached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from connector.errors import ProtocolError
from connector.events import Side, Trade
from connector.exchanges.bybit.protocol import (
    EXCHANGE,
)
from connector.exchanges.wire import text
from connector.stream.gaps import ResyncWanted, SnapshotGaps, SubState, now_us

if TYPE_CHECKING:
    from connector.kafka.publisher import Publisher
    from connector.metrics import Metrics
    from connector.stream.recent import RecentTrades

from connector.exchanges.bybit.rest import BybitRest

CATEGORIES = ("spot", "linear", "inverse")
RECENT_LIMIT = {"spot": 60}  # others: 1000


def category_of(ws_url: str) -> str:
    last = urlsplit(ws_url).path.rstrip("/").rsplit("/", 1)[-1]
    return last if last in CATEGORIES else "spot"


def rest_trades(
    payload: Any, market: str, *, connection_id: str, receive_ts_us: int
) -> list[Trade]:
    """``/v5/market/recent-trade`` → backfilled Trades, oldest first."""
    if not isinstance(payload, dict) or payload.get("retCode") != 0:
        raise ProtocolError("invalid_field", f"recent-trade answered {payload!r:.200}")
    result = payload.get("result")
    rows = result.get("list") if isinstance(result, dict) else None
    if not isinstance(rows, list):
        raise ProtocolError("invalid_field", "recent-trade has no result.list")
    out = []
    for d in reversed(rows):  # newest first as sent: reversed, same-time trades keep order
        if not isinstance(d, dict):
            raise ProtocolError("invalid_field", "a recent trade is not an object")
        ts = text(d, "time")
        if not ts.isdigit():
            raise ProtocolError("invalid_field", f"trade time {ts!r:.40}")
        side = d.get("side")
        out.append(
            Trade(
                exchange=EXCHANGE,
                market=market,
                channel="publicTrade",
                exchange_ts_us=int(ts) * 1000,
                exchange_ts_raw=ts,
                receive_ts_us=receive_ts_us,
                connection_id=connection_id,
                sequence=0,
                trade_id=text(d, "execId"),
                price=text(d, "price"),
                amount=text(d, "size"),
                side=Side.BUY if side == "Buy" else Side.SELL if side == "Sell" else Side.UNKNOWN,
                backfilled=True,
            )
        )
    out.sort(key=lambda t: t.exchange_ts_us)  # stable: same-time trades keep their order
    return out


class BybitGaps(SnapshotGaps):
    exchange = EXCHANGE
    book_channels = frozenset({"orderbook"})

    def __init__(
        self,
        publisher: Publisher,
        rest: BybitRest,
        category: str,
        recent: RecentTrades,
        metrics: Metrics,
        resync: ResyncWanted | None = None,
    ) -> None:
        super().__init__(publisher, recent, metrics, resync)
        self._rest = rest
        self._category = category

    async def fetch_trades(self, sub: SubState, gap_start_us: int) -> tuple[list[Trade], str]:
        limit = RECENT_LIMIT.get(self._category, 1000)
        payload = await self._rest.recent_trades(self._category, sub.market, limit)
        trades = rest_trades(
            payload, sub.market, connection_id=self.connection_id, receive_ts_us=now_us()
        )
        since = gap_start_us - 1000  # trade times have millisecond resolution
        newer = [t for t in trades if t.exchange_ts_us >= since]
        if len(trades) >= limit and newer and len(newer) == len(trades):
            return newer, (
                f"the REST window ({limit} {self._category} trades) reaches back only to "
                f"{trades[0].exchange_ts_raw} ms: older trades in the gap are missing"
            )
        return newer, ""
