"""Bybit REST calls used for recovery (I/O shell; parsing lives in ``recovery``)."""

from __future__ import annotations

from typing import Any

from connector.exchanges.rest import RestClient


class BybitRest(RestClient):
    async def recent_trades(self, category: str, symbol: str, limit: int) -> Any:
        return await self._get(
            "/v5/market/recent-trade",
            {"category": category, "symbol": symbol, "limit": str(limit)},
        )
