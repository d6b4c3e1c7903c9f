"""Bitfinex REST calls used for recovery (I/O shell; parsing lives in ``recovery``)."""

from __future__ import annotations

from typing import Any

from connector.exchanges.rest import RestClient
from connector.exchanges.wire import loads_exact

HIST_LIMIT = 10_000  # trades/hist answers at most this many


class BitfinexRest(RestClient):
    @staticmethod
    def parse(content: bytes) -> Any:
        return loads_exact(content)  # prices and amounts are JSON numbers: keep the text

    async def trades(self, symbol: str, start_ms: int) -> Any:
        return await self._get(
            f"/v2/trades/{symbol}/hist",
            {"start": str(start_ms), "limit": str(HIST_LIMIT), "sort": "1"},
        )
