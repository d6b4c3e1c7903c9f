"""Bitfinex behind the adapter interface (its recovery: ``recovery``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector.exchanges.base import Adapter, WireProtocol
from connector.exchanges.bitfinex.decoder import BitfinexProtocol
from connector.exchanges.bitfinex.protocol import (
    CHANNEL_SCHEMAS,
    EXCHANGE,
    MAX_CHANNELS_PER_CONNECTION,
    channel_key,
)
from connector.stream.gaps import Gaps, ResyncWanted

if TYPE_CHECKING:
    from connector.kafka.publisher import Publisher
    from connector.metrics import Metrics
    from connector.settings import Settings
    from connector.stream.recent import RecentTrades

from connector.exchanges.bitfinex.recovery import BitfinexGaps
from connector.exchanges.bitfinex.rest import BitfinexRest


class BitfinexAdapter(Adapter):
    name = EXCHANGE
    channel_schemas = CHANNEL_SCHEMAS
    max_subs_per_connection = MAX_CHANNELS_PER_CONNECTION

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.bitfinex_ws_url, settings.bitfinex_rest_url)
        # trades/hist allows 15 requests a minute
        self.rest = BitfinexRest(settings.bitfinex_rest_url, max_per_second=0.25)

    def plan(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
        s = self.settings
        return [(c, m) for m in s.bitfinex_markets for c in s.bitfinex_channels], [], ""

    def sub_name(self, channel: str, market: str) -> str:
        return channel_key(channel, market)

    def new_protocol(self, connection_id: str) -> WireProtocol:
        return BitfinexProtocol(connection_id, self.settings.bitfinex_book_length)

    def new_gaps(
        self,
        publisher: Publisher,
        recent: RecentTrades,
        metrics: Metrics,
        resync: ResyncWanted,
    ) -> Gaps:
        return BitfinexGaps(publisher, self.rest, recent, metrics, resync)

    async def aclose(self) -> None:
        await self.rest.close()
