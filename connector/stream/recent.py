"""Trade ids already published, per market: a trade is published once even when the
live stream and a backfill (or two connections) both carry it."""

from __future__ import annotations

from collections import deque


class RecentTrades:
    """The last ``size`` trade ids published per market, and the highest id."""

    def __init__(self, size: int = 20_000) -> None:
        self._size = size
        self._ids: dict[str, set[str]] = {}
        self._order: dict[str, deque[str]] = {}
        self.last_id: dict[str, int] = {}

    def seen(self, market: str, trade_id: str) -> bool:
        ids = self._ids.get(market)
        return ids is not None and trade_id in ids

    def add(self, market: str, trade_id: str) -> bool:
        """Records a published id; False if it was already published (a duplicate)."""
        ids = self._ids.get(market)
        if ids is None:
            ids = self._ids[market] = set()
            self._order[market] = deque()
        if trade_id in ids:
            return False
        ids.add(trade_id)
        order = self._order[market]
        order.append(trade_id)
        if len(order) > self._size:
            ids.discard(order.popleft())
        if trade_id.isdigit():
            n = int(trade_id)
            if n > self.last_id.get(market, -1):
                self.last_id[market] = n
        return True
