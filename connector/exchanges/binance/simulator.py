"""A simulated Binance (public market data, REST recovery routes, faults): see
``connector.sim.venue`` for what every simulated venue does."""

from __future__ import annotations

import time
from typing import Any

from connector.exchanges.binance.protocol import split_stream
from connector.sim.venue import Conn, Trade, VenueServer, dumps


def _agg(t: Trade) -> dict[str, Any]:
    """A Binance aggregate trade (stream and REST share these fields)."""
    return {
        "a": t.id,
        "p": t.price,
        "q": t.amount,
        "f": t.id * 2,
        "l": t.id * 2 + 1,
        "T": t.ts_ms,
        "m": not t.buy,
        "M": True,
    }


class BinanceServer(VenueServer):
    name = "binance"

    def split(self, name: str) -> tuple[str, str] | None:
        return split_stream(name)

    def make(self, name: str, channel: str, market: str) -> Any:
        now = time.time_ns() // 1_000_000
        sym = market.upper()
        if channel == "trade":
            t = self.new_trade(market)
            return {
                "e": "trade",
                "E": now,
                "s": sym,
                "t": t.id,
                "p": t.price,
                "q": t.amount,
                "T": t.ts_ms,
                "m": not t.buy,
                "M": True,
            }
        if channel == "aggTrade":
            return {"e": "aggTrade", "E": now, "s": sym, **_agg(self.new_trade(market + "@agg"))}
        if channel == "depth":
            first, last, (bid, price, amount) = self.book_step(market)
            side = [[price, amount]]
            return {
                "e": "depthUpdate",
                "E": now,
                "s": sym,
                "U": first,
                "u": last,
                "b": side if bid else [],
                "a": [] if bid else side,
            }
        book = self.book(market)  # the ticker reads the book (depth moves it)
        (b, bq), (a, aq) = (x[0] for x in book.top(1))
        return {"u": book.update_id, "s": sym, "b": b, "B": bq, "a": a, "A": aq}

    def render(self, conn: Conn, name: str, event: Any) -> list[str]:
        return [dumps({"stream": name, "data": event})]

    def client(self, conn: Conn, msg: Any) -> list[str]:
        rid = msg.get("id")
        method = msg.get("method")
        params = msg.get("params", [])
        if method == "LIST_SUBSCRIPTIONS":
            return [dumps({"result": sorted(conn.subs), "id": rid})]
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            self.subscribe_frames += 1
            bad = [p for p in params if self.split(p) is None]
            if bad:
                return [dumps({"error": {"code": 2, "msg": f"Invalid request: {bad}"}, "id": rid})]
            for p in params:
                if method == "SUBSCRIBE":
                    conn.subs[p] = 0
                    self.started(p)
                else:
                    conn.subs.pop(p, None)
            return [dumps({"result": None, "id": rid})]
        return [dumps({"error": {"code": 0, "msg": "Unknown property"}, "id": rid})]

    def rest(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        market = query.get("symbol", "").lower()
        if path == "/api/v3/depth":
            book = self.book(market)
            bids, asks = book.top(int(query.get("limit", "100")))
            return 200, {"lastUpdateId": book.update_id, "bids": bids, "asks": asks}
        if path == "/api/v3/trades":
            out = self.trades[market][-int(query.get("limit", "500")) :]
            return 200, [
                {
                    "id": t.id,
                    "price": t.price,
                    "qty": t.amount,
                    "time": t.ts_ms,
                    "isBuyerMaker": not t.buy,
                    "isBestMatch": True,
                }
                for t in out
            ]
        if path == "/api/v3/aggTrades":
            trades = self.trades[market + "@agg"]
            if "fromId" in query:
                out = [t for t in trades if t.id >= int(query["fromId"])]
            else:
                out = [t for t in trades if t.ts_ms >= int(query.get("startTime", "0"))]
            out = out[: int(query.get("limit", "500"))]
            return 200, [_agg(t) for t in out]
        return 404, {"code": -1, "msg": f"no route {path}"}


def for_cli(
    *, host: str, port: int, rate: float, seed: int, events: int, **_: Any
) -> BinanceServer:
    """``connector simulate --exchange binance``: any market is served (a stream
    starts when first subscribed); REST on port + 1."""
    return BinanceServer(
        rate=rate, seed=seed, host=host, port=port, rest_port=port + 1, limit=events
    )
