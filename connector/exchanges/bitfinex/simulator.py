"""A simulated Bitfinex (public market data, REST recovery routes, faults): see
``connector.sim.venue`` for what every simulated venue does."""

from __future__ import annotations

import time
from typing import Any

from websockets.exceptions import ConnectionClosed

from connector.exchanges.bitfinex.protocol import LocalBook, book_checksum, channel_key, split_key
from connector.sim.venue import Conn, Trade, VenueServer, dumps


class BitfinexServer(VenueServer):
    name = "bitfinex"
    book_levels = 25  # the subscribed window is the whole book: checksums stay exact

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._bad_checksum: set[str] = set()
        self._next_chan = 100
        self.local: dict[str, LocalBook] = {}

    def bad_checksum(self, market: str) -> None:
        self._bad_checksum.add(market)

    async def info(self, code: int, msg: str = "") -> None:
        """Tells every open connection, as the data broadcast does: one the client is
        closing (an old one after a handover) is skipped, but at least one must hear it."""
        reached = 0
        for conn in list(self.conns.values()):
            try:
                await conn.ws.send(dumps({"event": "info", "code": code, "msg": msg}))
            except ConnectionClosed:
                continue
            reached += 1
        if not reached:
            raise RuntimeError(f"info {code} reached no open connection")

    def split(self, name: str) -> tuple[str, str] | None:
        return split_key(name)

    def make(self, name: str, channel: str, market: str) -> Any:
        if channel == "trades":
            return self.new_trade(market)
        _, _, change = self.book_step(market)
        return change

    def _seq(self, conn: Conn) -> int:
        conn.seq += 1
        return conn.seq

    def _trade_text(self, t: Trade) -> str:
        return f"[{t.id},{t.ts_ms},{t.amount if t.buy else '-' + t.amount},{t.price}]"

    def render(self, conn: Conn, name: str, event: Any) -> list[str]:
        chan = conn.subs[name]
        if isinstance(event, Trade):
            return [
                f'[{chan},"te",{self._trade_text(event)},{self._seq(conn)}]',
                f'[{chan},"tu",{self._trade_text(event)},{self._seq(conn)}]',
            ]
        bid, price, amount = event
        market = split_key(name)[1]  # type: ignore[index]
        if amount == "0":
            entry = f"[{price},0,{1 if bid else -1}]"
        else:
            entry = f"[{price},1,{amount if bid else '-' + amount}]"
        book = self.book(market)
        bids, asks = book.top(25)
        crc = book_checksum(bids, [(p, "-" + a) for p, a in asks])
        if market in self._bad_checksum:
            self._bad_checksum.discard(market)
            crc += 1
        return [
            f"[{chan},{entry},{self._seq(conn)}]",
            f'[{chan},"cs",{crc},{self._seq(conn)}]',
        ]

    def rest(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if len(parts) != 4 or parts[:2] != ["v2", "trades"] or parts[3] != "hist":
            return 404, ["error", 10020, f"no route {path}"]
        start = int(query.get("start", "0"))
        limit = int(query.get("limit", "125"))
        rows = [t for t in self.trades[parts[2]] if t.ts_ms >= start]
        if query.get("sort") != "1":
            rows = rows[::-1]
        return 200, "[" + ",".join(self._trade_text(t) for t in rows[:limit]) + "]"

    async def opened(self, conn: Conn) -> None:
        await conn.ws.send(
            dumps({"event": "info", "version": 2, "serverId": "sim", "platform": {"status": 1}})
        )

    def client(self, conn: Conn, msg: Any) -> list[str]:
        event = msg.get("event")
        if event == "ping":
            return [
                dumps({"event": "pong", "ts": time.time_ns() // 1_000_000, "cid": msg.get("cid")})
            ]
        if event == "conf":
            return [dumps({"event": "conf", "status": "OK", "flags": msg.get("flags")})]
        if event == "unsubscribe":
            chan = msg.get("chanId")
            for name, c in list(conn.subs.items()):
                if c == chan:
                    del conn.subs[name]
                    return [dumps({"event": "unsubscribed", "status": "OK", "chanId": chan})]
            return [dumps({"event": "error", "msg": "unsubscribe: invalid", "code": 10400})]
        if event != "subscribe":
            return [dumps({"event": "error", "msg": "unknown event", "code": 10000})]
        self.subscribe_frames += 1
        channel, symbol = msg.get("channel"), msg.get("symbol")
        name = channel_key(str(channel), str(symbol))
        if self.split(name) is None or not str(symbol).startswith("t"):
            return [
                dumps(
                    {
                        "event": "error",
                        "msg": "symbol: invalid",
                        "code": 10300,
                        "channel": channel,
                        "symbol": symbol,
                    }
                )
            ]
        if len(conn.subs) >= 25:
            return [
                dumps(
                    {
                        "event": "error",
                        "msg": "subscribe: limit",
                        "code": 10305,
                        "channel": channel,
                        "symbol": symbol,
                    }
                )
            ]
        self._next_chan += 1
        chan = conn.subs[name] = self._next_chan
        self.started(name)
        reply = {
            "event": "subscribed",
            "channel": channel,
            "chanId": chan,
            "symbol": symbol,
            "pair": str(symbol)[1:],
        }
        out = [dumps(reply)]
        if channel == "trades":
            recent = self.trades[str(symbol)][-30:][::-1]
            snap = ",".join(self._trade_text(t) for t in recent)
            out.append(f"[{chan},[{snap}],{self._seq(conn)}]")
        else:
            bids, asks = self.book(str(symbol)).top(int(msg.get("len", "25")))
            levels = [f"[{p},1,{a}]" for p, a in bids] + [f"[{p},1,-{a}]" for p, a in asks]
            out.append(f"[{chan},[{','.join(levels)}],{self._seq(conn)}]")
        return out


def for_cli(
    *, host: str, port: int, rate: float, seed: int, events: int, **_: Any
) -> BitfinexServer:
    """``connector simulate --exchange bitfinex``: any market is served (a stream
    starts when first subscribed); REST on port + 1."""
    return BitfinexServer(
        rate=rate, seed=seed, host=host, port=port, rest_port=port + 1, limit=events
    )
