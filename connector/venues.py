"""Local servers that speak Binance, Bybit and Bitfinex public market data (with faults).

For tests and trying the stack offline, like ``connector.simulate`` for Bitstamp. Each
server follows its exchange's documented protocol (see each adapter's ``protocol``
module): subscribe/unsubscribe replies, the application-level ping, batching limits, the
message formats, book snapshots and sequence numbers (Binance ``U``/``u``, Bybit ``u``,
Bitfinex public sequence numbers and CRC32 checksums), and the REST routes recovery uses
(Binance ``/api/v3/depth``, ``/api/v3/trades``, ``/api/v3/aggTrades``).

Markets keep trading whether or not anybody listens: once a stream was first subscribed
it ticks at ``rate`` events per second, so a gap has real events in it. ``made`` records
every event of each stream; ``sent`` counts those that reached at least one connection.

Faults: ``drop()`` (TCP abort of every connection), ``stall()`` (half-open: nothing sent
or answered), ``break_sequence(market)`` (the book skips updates), ``bad_checksum(market)``
(Bitfinex: the next checksum is wrong), ``info(code)`` (Bitfinex info events), ``refuse``
(HTTP statuses for the next handshakes).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from connector.binance.protocol import split_stream
from connector.bitfinex.protocol import LocalBook, book_checksum, channel_key, split_key
from connector.bybit.protocol import split_topic

log = logging.getLogger(__name__)

BOOK_LEVELS = 30


@dataclass
class Trade:
    id: int
    ts_ms: int
    price: str
    amount: str
    buy: bool
    uid: str = ""


class Book:
    """One market's book (price text → amount text) moved one level at a time."""

    def __init__(self, rng: random.Random, mid: Decimal, max_levels: int = BOOK_LEVELS) -> None:
        self.rng = rng
        self.mid = mid
        self.max_levels = max_levels  # per side
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.update_id = 1000
        for i in range(1, max_levels + 1):
            self.bids[self._price(-i)] = self._amount()
            self.asks[self._price(i)] = self._amount()

    def _price(self, ticks: int) -> str:
        return str(self.mid + Decimal(ticks) * Decimal("0.5"))

    def _amount(self) -> str:
        return str(Decimal(self.rng.randint(1, 5000)) / Decimal(1000))

    def step(self) -> tuple[bool, str, str]:
        """Changes one level: (is_bid, price, new amount, "0" deleted)."""
        bid = self.rng.random() < 0.5
        side = self.bids if bid else self.asks
        ticks = self.rng.randint(1, self.max_levels + 3)
        price = self._price(-ticks if bid else ticks)
        if price not in side and len(side) >= self.max_levels:
            price = self.rng.choice(sorted(side))  # the book stays within its depth
        if price in side and self.rng.random() < 0.3 and len(side) > 5:
            del side[price]
            amount = "0"
        else:
            amount = side[price] = self._amount()
        self.update_id += 1
        return bid, price, amount

    def top(self, n: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        bids = sorted(self.bids.items(), key=lambda kv: Decimal(kv[0]), reverse=True)[:n]
        asks = sorted(self.asks.items(), key=lambda kv: Decimal(kv[0]))[:n]
        return bids, asks


@dataclass(eq=False)
class Conn:
    ws: ServerConnection
    subs: dict[str, int] = field(default_factory=dict)  # stream name → chanId (Bitfinex)
    seq: int = 0  # Bitfinex public sequence
    stalled: bool = False


class VenueServer:
    """The shared server; subclasses render their exchange's frames."""

    name = ""
    book_levels = BOOK_LEVELS

    def __init__(
        self,
        *,
        rate: float = 20.0,
        seed: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        rest_port: int = 0,
        limit: int = 0,
    ) -> None:
        self.host = host
        self.limit = limit  # events per stream (0: no end)
        self.frozen = False  # the market stops moving (the final state can be compared)
        self.port = port
        self.rest_port = rest_port
        self.rate = rate
        self.rng = random.Random(seed)
        self.refuse: list[int] = []
        self.conns: dict[ServerConnection, Conn] = {}
        self.connections_made = 0
        self.made: dict[str, list[Any]] = defaultdict(list)
        self.sent: dict[str, int] = defaultdict(int)
        self.delivered: dict[str, list[Any]] = defaultdict(list)  # events sent to >= 1
        self.subscribe_frames = 0
        self.books: dict[str, Book] = {}
        self.trades: dict[str, list[Trade]] = defaultdict(list)
        self._skip: set[str] = set()  # markets whose next book update skips ids
        self._streams: dict[str, tuple[float, int]] = {}
        self._server: Server | None = None
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await serve(
            self._handle, self.host, self.port, process_request=self._handshake, compression=None
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.rest_port)
        await site.start()
        self.rest_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._task = asyncio.create_task(self._tick())
        log.info("simulated %s on %s (REST %s)", self.name, self.ws_url, self.rest_url)

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    async def serve_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- faults ------------------------------------------------------------------------
    def drop(self) -> None:
        for conn in list(self.conns.values()):
            conn.ws.transport.abort()

    def freeze(self) -> None:
        self.frozen = True

    def stall(self) -> None:
        for conn in self.conns.values():
            conn.stalled = True

    def unstall(self) -> None:
        for conn in self.conns.values():
            conn.stalled = False

    def break_sequence(self, market: str) -> None:
        self._skip.add(market)

    # --- market ------------------------------------------------------------------------
    def book(self, market: str) -> Book:
        book = self.books.get(market)
        if book is None:
            book = self.books[market] = Book(
                self.rng, Decimal(20000 + 1000 * len(self.books)), self.book_levels
            )
        return book

    def new_trade(self, market: str) -> Trade:
        book = self.book(market)
        trades = self.trades[market]
        t = Trade(
            id=(trades[-1].id + 1) if trades else 5_000_000,
            ts_ms=time.time_ns() // 1_000_000,
            price=str(book.mid + Decimal(self.rng.randint(-4, 4)) / 2),
            amount=str(Decimal(self.rng.randint(1, 9000)) / Decimal(10000)),
            buy=self.rng.random() < 0.5,
            uid=str(uuid.UUID(int=self.rng.getrandbits(128))),
        )
        trades.append(t)
        return t

    def book_step(self, market: str) -> tuple[int, int, tuple[bool, str, str]]:
        """(first id, last id, change) of one book update; a break skips ids."""
        book = self.book(market)
        first = book.update_id + 1
        if market in self._skip:
            self._skip.discard(market)
            for _ in range(3):  # updates nobody receives
                book.step()
            first = book.update_id + 1
        change = book.step()
        return first, book.update_id, change

    # --- streams -----------------------------------------------------------------------
    def split(self, name: str) -> tuple[str, str] | None:
        raise NotImplementedError

    def make(self, name: str, channel: str, market: str) -> Any:
        """One event of a stream (kept in ``made``)."""
        raise NotImplementedError

    def render(self, conn: Conn, name: str, event: Any) -> list[str]:
        raise NotImplementedError

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            if self.frozen:
                continue
            now = time.monotonic()
            for name, (t0, done) in list(self._streams.items()):
                where = self.split(name)
                assert where is not None
                due = int((now - t0) * self.rate) + 1
                if self.limit:
                    due = min(due, self.limit)
                while done < due:
                    event = self.make(name, *where)
                    self.made[name].append(event)
                    done += 1
                    reached = 0
                    for conn in list(self.conns.values()):
                        if name in conn.subs and not conn.stalled:
                            for text in self.render(conn, name, event):
                                try:
                                    await conn.ws.send(text)
                                except ConnectionClosed:
                                    break
                            else:
                                reached += 1
                    if reached:
                        self.sent[name] += 1
                        self.delivered[name].append(event)
                self._streams[name] = (t0, done)

    def started(self, name: str) -> None:
        self._streams.setdefault(name, (time.monotonic(), 0))

    # --- connections -------------------------------------------------------------------
    async def _handshake(self, conn: ServerConnection, request: Request) -> Response | None:
        if self.refuse:
            status = HTTPStatus(self.refuse.pop(0))
            body = orjson.dumps({"error": status.phrase})
            headers = Headers([("Content-Length", str(len(body))), ("Connection", "close")])
            return Response(status.value, status.phrase, headers, body)
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        conn = self.conns[ws] = Conn(ws)
        self.connections_made += 1
        try:
            await self.opened(conn)
            async for raw in ws:
                if conn.stalled:
                    continue  # half-open: nothing is answered
                try:
                    msg = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                for text in self.client(conn, msg):
                    await ws.send(text)
        except ConnectionClosed:
            pass
        finally:
            self.conns.pop(ws, None)

    async def opened(self, conn: Conn) -> None:
        """A connection was accepted (Bitfinex greets it)."""

    def client(self, conn: Conn, msg: Any) -> list[str]:
        raise NotImplementedError

    async def _rest(self, request: web.Request) -> web.Response:
        status, body = self.rest(request.path, dict(request.query))
        raw = body if isinstance(body, str) else orjson.dumps(body).decode()
        return web.Response(text=raw, status=status, content_type="application/json")

    def rest(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        return 404, {"error": f"no route {path}"}


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


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
        return [_dumps({"stream": name, "data": event})]

    def client(self, conn: Conn, msg: Any) -> list[str]:
        rid = msg.get("id")
        method = msg.get("method")
        params = msg.get("params", [])
        if method == "LIST_SUBSCRIPTIONS":
            return [_dumps({"result": sorted(conn.subs), "id": rid})]
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            self.subscribe_frames += 1
            bad = [p for p in params if self.split(p) is None]
            if bad:
                return [_dumps({"error": {"code": 2, "msg": f"Invalid request: {bad}"}, "id": rid})]
            for p in params:
                if method == "SUBSCRIBE":
                    conn.subs[p] = 0
                    self.started(p)
                else:
                    conn.subs.pop(p, None)
            return [_dumps({"result": None, "id": rid})]
        return [_dumps({"error": {"code": 0, "msg": "Unknown property"}, "id": rid})]

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
            return [_dumps({"topic": name, "type": "snapshot", "ts": now, "data": [event]})]
        return [_dumps({"topic": name, "type": "delta", "ts": now, "data": event, "cts": now})]

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
        return _dumps({"topic": name, "type": "snapshot", "ts": now, "data": data, "cts": now})

    def client(self, conn: Conn, msg: Any) -> list[str]:
        op, rid = msg.get("op"), msg.get("req_id")
        if op == "ping":
            return [
                _dumps(
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
                _dumps({"success": False, "ret_msg": f"unknown op {op}", "req_id": rid, "op": op})
            ]
        self.subscribe_frames += 1
        args = msg.get("args", [])
        bad = [a for a in args if self.split(a) is None]
        if bad or len(args) > 10:
            why = f"Invalid topic :{bad}" if bad else "args size >10"
            return [
                _dumps(
                    {"success": False, "ret_msg": why, "conn_id": "sim", "req_id": rid, "op": op}
                )
            ]
        out = [_dumps({"success": True, "ret_msg": "", "conn_id": "sim", "req_id": rid, "op": op})]
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
                await conn.ws.send(_dumps({"event": "info", "code": code, "msg": msg}))
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
            _dumps({"event": "info", "version": 2, "serverId": "sim", "platform": {"status": 1}})
        )

    def client(self, conn: Conn, msg: Any) -> list[str]:
        event = msg.get("event")
        if event == "ping":
            return [
                _dumps({"event": "pong", "ts": time.time_ns() // 1_000_000, "cid": msg.get("cid")})
            ]
        if event == "conf":
            return [_dumps({"event": "conf", "status": "OK", "flags": msg.get("flags")})]
        if event == "unsubscribe":
            chan = msg.get("chanId")
            for name, c in list(conn.subs.items()):
                if c == chan:
                    del conn.subs[name]
                    return [_dumps({"event": "unsubscribed", "status": "OK", "chanId": chan})]
            return [_dumps({"event": "error", "msg": "unsubscribe: invalid", "code": 10400})]
        if event != "subscribe":
            return [_dumps({"event": "error", "msg": "unknown event", "code": 10000})]
        self.subscribe_frames += 1
        channel, symbol = msg.get("channel"), msg.get("symbol")
        name = channel_key(str(channel), str(symbol))
        if self.split(name) is None or not str(symbol).startswith("t"):
            return [
                _dumps(
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
                _dumps(
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
        out = [_dumps(reply)]
        if channel == "trades":
            recent = self.trades[str(symbol)][-30:][::-1]
            snap = ",".join(self._trade_text(t) for t in recent)
            out.append(f"[{chan},[{snap}],{self._seq(conn)}]")
        else:
            bids, asks = self.book(str(symbol)).top(int(msg.get("len", "25")))
            levels = [f"[{p},1,{a}]" for p, a in bids] + [f"[{p},1,-{a}]" for p, a in asks]
            out.append(f"[{chan},[{','.join(levels)}],{self._seq(conn)}]")
        return out


SERVERS: dict[str, type[VenueServer]] = {
    "binance": BinanceServer,
    "bybit": BybitServer,
    "bitfinex": BitfinexServer,
}
