"""Binance REST calls used for recovery (I/O shell; parsing lives in ``recovery``)."""

from __future__ import annotations

from typing import Any

from connector.exchanges.rest import RestClient


class BinanceRest(RestClient):
    async def trades(self, symbol: str) -> Any:
        return await self._get("/api/v3/trades", {"symbol": symbol, "limit": "1000"})

    async def agg_trades(self, symbol: str, from_id: int | None, start_ms: int) -> Any:
        params = {"symbol": symbol, "limit": "1000"}
        if from_id is not None:
            params["fromId"] = str(from_id)
        else:
            params["startTime"] = str(start_ms)
        return await self._get("/api/v3/aggTrades", params)

    async def depth(self, symbol: str) -> Any:
        return await self._get("/api/v3/depth", {"symbol": symbol, "limit": "1000"})
