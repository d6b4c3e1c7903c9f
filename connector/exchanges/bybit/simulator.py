"""A simulated Bybit (public market data, REST recovery routes, faults): see
``connector.sim.venue`` for what every simulated venue does."""

from __future__ import annotations

import time
from typing import Any

from connector.exchanges.bybit.protocol import split_topic
from connector.sim.venue import Conn, VenueServer, dumps


class BybitServer(VenueServer):
    name = "bybit"

    def split(self, name: str) -> tuple[str, str] | None:
        return split_topic(name)

    def make(self, name: str, channel: str, market: str) -> Any:
        if channel == "publicTrade":
            t = self.new_trade(market)
            return {
                "T": t.ts_ms,
                "s": market,
                "S": "Buy" if t.buy else "Sell",
                "v": t.amount,
                "p": t.price,
                "L": "PlusTick",
                "i": t.uid,
                "BT": False,
            }
        _, last, (bid, price, amount) = self.book_step(market)
        side = [[price, amount]]
        return {
            "s": market,
            "b": side if bid else [],
            "a": [] if bid else side,
            "u": last,
            "seq": last * 7,
        }

    def render(self, conn: Conn, name: str, event: Any) -> list[str]:
        now = time.time_ns() // 1_000_000
        if name.startswith("publicTrade."):
            return [dumps({"topic": name, "type": "snapshot", "ts": now, "data": [event]})]
        return [dumps({"topic": name, "type": "delta", "ts": now, "data": event, "cts": now})]

    def rest(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        if path != "/v5/market/recent-trade":
            return 404, {"retCode": 10001, "retMsg": f"no route {path}"}
        limit = min(int(query.get("limit", "60")), 60 if query.get("category") == "spot" else 1000)
        recent = self.trades[query.get("symbol", "")][-limit:][::-1]  # newest first
        rows = [
            {
                "execId": t.uid,
                "symbol": query.get("symbol"),
                "price": t.price,
                "size": t.amount,
                "side": "Buy" if t.buy else "Sell",
                "time": str(t.ts_ms),
                "isBlockTrade": False,
            }
            for t in recent
        ]
        result = {"category": query.get("category"), "list": rows}
        return 200, {
            "retCode": 0,
            "retMsg": "OK",
            "result": result,
            "time": time.time_ns() // 10**6,
        }

    def snapshot(self, name: str, market: str) -> str:
        book = self.book(market)
        depth = int(name.split(".")[1])
        bids, asks = book.top(depth)
        now = time.time_ns() // 1_000_000
        data = {"s": market, "b": bids, "a": asks, "u": book.update_id, "seq": book.update_id * 7}
        return dumps({"topic": name, "type": "snapshot", "ts": now, "data": data, "cts": now})

    def client(self, conn: Conn, msg: Any) -> list[str]:
        op, rid = msg.get("op"), msg.get("req_id")
        if op == "ping":
            return [
                dumps(
                    {
                        "success": True,
                        "ret_msg": "pong",
                        "conn_id": "sim",
                        "req_id": rid,
                        "op": "ping",
                    }
                )
            ]
        if op not in ("subscribe", "unsubscribe"):
            return [
                dumps({"success": False, "ret_msg": f"unknown op {op}", "req_id": rid, "op": op})
            ]
        self.subscribe_frames += 1
        args = msg.get("args", [])
        bad = [a for a in args if self.split(a) is None]
        if bad or len(args) > 10:
            why = f"Invalid topic :{bad}" if bad else "args size >10"
            return [
                dumps({"success": False, "ret_msg": why, "conn_id": "sim", "req_id": rid, "op": op})
            ]
        out = [dumps({"success": True, "ret_msg": "", "conn_id": "sim", "req_id": rid, "op": op})]
        for a in args:
            if op == "subscribe":
                conn.subs[a] = 0
                self.started(a)
                where = self.split(a)
                if where is not None and where[0] == "orderbook":
                    out.append(self.snapshot(a, where[1]))
            else:
                conn.subs.pop(a, None)
        return out


def for_cli(*, host: str, port: int, rate: float, seed: int, events: int, **_: Any) -> BybitServer:
    """``connector simulate --exchange bybit``: any market is served (a stream
    starts when first subscribed); REST on port + 1."""
    return BybitServer(rate=rate, seed=seed, host=host, port=port, rest_port=port + 1, limit=events)
