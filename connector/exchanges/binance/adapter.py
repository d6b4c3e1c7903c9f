"""Binance behind the adapter interface (its recovery: ``recovery``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector.exchanges.base import Adapter, WireProtocol
from connector.exchanges.binance.decoder import BinanceProtocol
from connector.exchanges.binance.protocol import (
    CHANNEL_SCHEMAS,
    CONNECTION_LIFETIME_S,
    EXCHANGE,
    INCOMING_MESSAGES_PER_SECOND,
    MAX_STREAMS_PER_CONNECTION,
    stream_name,
)
from connector.stream.gaps import Gaps, ResyncWanted

if TYPE_CHECKING:
    from connector.kafka.publisher import Publisher
    from connector.metrics import Metrics
    from connector.settings import Settings
    from connector.stream.recent import RecentTrades
from connector.exchanges.binance.recovery import BinanceGaps
from connector.exchanges.binance.rest import BinanceRest


class BinanceAdapter(Adapter):
    name = EXCHANGE
    channel_schemas = CHANNEL_SCHEMAS
    max_subs_per_connection = MAX_STREAMS_PER_CONNECTION
    control_frames_per_second = INCOMING_MESSAGES_PER_SECOND - 1  # a margin for pongs
    server_max_age_s = CONNECTION_LIFETIME_S

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.binance_ws_url, settings.binance_rest_url)
        self.rest = BinanceRest(settings.binance_rest_url, max_per_second=5.0)

    def plan(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
        s = self.settings
        return [(c, m) for m in s.binance_markets for c in s.binance_channels], [], ""

    def sub_name(self, channel: str, market: str) -> str:
        return stream_name(channel, market, self.settings.binance_depth_interval_ms)

    def new_protocol(self, connection_id: str) -> WireProtocol:
        return BinanceProtocol(connection_id)

    def new_gaps(
        self,
        publisher: Publisher,
        recent: RecentTrades,
        metrics: Metrics,
        resync: ResyncWanted,
    ) -> Gaps:
        return BinanceGaps(publisher, self.rest, recent, metrics, resync)

    async def aclose(self) -> None:
        await self.rest.close()
