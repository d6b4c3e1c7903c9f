"""Bybit v5 public market data behind the adapter interface.

Recovery: an orderbook subscription gets a full snapshot whenever it is (re)subscribed,
so a gap or a sequence break ends in a ``BookDelta(resync=True)``; publicTrade has no
replay on the WebSocket (the gap's status says so; Bybit's REST recent-trade window is
60 spot trades, too short to promise a backfill).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector.bybit.decoder import BybitProtocol
from connector.bybit.protocol import (
    CHANNEL_SCHEMAS,
    EXCHANGE,
    TOPICS_PER_CONNECTION,
    topic_name,
)
from connector.exchange import Adapter, WireProtocol
from connector.gaps import Gaps, SnapshotGaps, SubState

if TYPE_CHECKING:
    from connector.metrics import Metrics
    from connector.pipeline import Publisher
    from connector.recent import RecentTrades
    from connector.settings import Settings


class BybitGaps(SnapshotGaps):
    exchange = EXCHANGE
    book_channels = frozenset({"orderbook"})

    def unrecoverable(self, sub: SubState) -> str:
        return "trades in the gap are not replayed on the WebSocket"


class BybitAdapter(Adapter):
    name = EXCHANGE
    channel_schemas = CHANNEL_SCHEMAS
    max_subs_per_connection = TOPICS_PER_CONNECTION

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.bybit_ws_url, settings.bybit_rest_url)

    def plan(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
        s = self.settings
        return [(c, m) for m in s.bybit_markets for c in s.bybit_channels], [], ""

    def sub_name(self, channel: str, market: str) -> str:
        return topic_name(channel, market, self.settings.bybit_orderbook_depth)

    def new_protocol(self, connection_id: str) -> WireProtocol:
        return BybitProtocol(connection_id)

    def new_gaps(self, publisher: Publisher, recent: RecentTrades, metrics: Metrics) -> Gaps:
        return BybitGaps(publisher, recent, metrics)
