"""Bybit behind the adapter interface (its recovery: ``recovery``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector.exchanges.base import Adapter, WireProtocol
from connector.exchanges.bybit.decoder import BybitProtocol
from connector.exchanges.bybit.protocol import (
    CHANNEL_SCHEMAS,
    EXCHANGE,
    TOPICS_PER_CONNECTION,
    topic_name,
)
from connector.stream.gaps import Gaps, ResyncWanted

if TYPE_CHECKING:
    from connector.kafka.publisher import Publisher
    from connector.metrics import Metrics
    from connector.settings import Settings
    from connector.stream.recent import RecentTrades

from connector.exchanges.bybit.recovery import BybitGaps, category_of
from connector.exchanges.bybit.rest import BybitRest


class BybitAdapter(Adapter):
    name = EXCHANGE
    channel_schemas = CHANNEL_SCHEMAS
    max_subs_per_connection = TOPICS_PER_CONNECTION

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.bybit_ws_url, settings.bybit_rest_url)
        self.rest = BybitRest(settings.bybit_rest_url, max_per_second=10.0)
        self.category = category_of(settings.bybit_ws_url)

    def plan(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
        s = self.settings
        return [(c, m) for m in s.bybit_markets for c in s.bybit_channels], [], ""

    def sub_name(self, channel: str, market: str) -> str:
        return topic_name(channel, market, self.settings.bybit_orderbook_depth)

    def new_protocol(self, connection_id: str) -> WireProtocol:
        return BybitProtocol(connection_id)

    def new_gaps(
        self,
        publisher: Publisher,
        recent: RecentTrades,
        metrics: Metrics,
        resync: ResyncWanted,
    ) -> Gaps:
        return BybitGaps(publisher, self.rest, self.category, recent, metrics, resync)

    async def aclose(self) -> None:
        await self.rest.close()
