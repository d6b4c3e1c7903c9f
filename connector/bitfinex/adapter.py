"""Bitfinex v2 public channels behind the adapter interface.

Recovery: a (re)subscription sends a full book snapshot (published as a resync) and a
trades snapshot with the latest trades, which refills the end of a gap (trades already
published are dropped by id). Older trades in a long gap are not fetched; the gap's
status says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector.bitfinex.decoder import BitfinexProtocol
from connector.bitfinex.protocol import (
    CHANNEL_SCHEMAS,
    EXCHANGE,
    MAX_CHANNELS_PER_CONNECTION,
    channel_key,
)
from connector.exchange import Adapter, WireProtocol
from connector.gaps import Gaps, SnapshotGaps, SubState

if TYPE_CHECKING:
    from connector.metrics import Metrics
    from connector.pipeline import Publisher
    from connector.recent import RecentTrades
    from connector.settings import Settings


class BitfinexGaps(SnapshotGaps):
    exchange = EXCHANGE
    book_channels = frozenset({"book"})

    def unrecoverable(self, sub: SubState) -> str:
        return (
            "the trades snapshot sent on resubscription (the latest trades) refills the "
            "gap's end; older trades in the gap are not fetched"
        )


class BitfinexAdapter(Adapter):
    name = EXCHANGE
    channel_schemas = CHANNEL_SCHEMAS
    max_subs_per_connection = MAX_CHANNELS_PER_CONNECTION

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, settings.bitfinex_ws_url, settings.bitfinex_rest_url)

    def plan(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
        s = self.settings
        return [(c, m) for m in s.bitfinex_markets for c in s.bitfinex_channels], [], ""

    def sub_name(self, channel: str, market: str) -> str:
        return channel_key(channel, market)

    def new_protocol(self, connection_id: str) -> WireProtocol:
        return BitfinexProtocol(connection_id, self.settings.bitfinex_book_length)

    def new_gaps(self, publisher: Publisher, recent: RecentTrades, metrics: Metrics) -> Gaps:
        return BitfinexGaps(publisher, recent, metrics)
