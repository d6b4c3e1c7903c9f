"""The shared simulated venue of Binance, Bybit and Bitfinex public market data.

For tests and trying the stack offline; each exchange's server (its ``simulator``
module) renders its frames on this base. Each follows its exchange's documented
protocol (see its ``protocol`` module): subscribe/unsubscribe replies, the
application-level ping, batching limits, the message formats, book snapshots and
sequence numbers (Binance ``U``/``u``, Bybit ``u``, Bitfinex public sequence numbers and
CRC32 checksums), and the REST routes recovery uses (Binance ``/api/v3/depth``,
``/api/v3/trades``, ``/api/v3/aggTrades``).

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
from collections.abc import Coroutine
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from connector.sim.server import SimServer

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


class VenueServer(SimServer):
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
        super().__init__(host, port, rest_port)
        self.limit = limit  # events per stream (0: no end)
        self.frozen = False  # the market stops moving (the final state can be compared)
        self.rate = rate
        self.rng = random.Random(seed)
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

    def background(self) -> list[Coroutine[Any, Any, None]]:
        return [self._tick()]

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

    async def _rest_http(self, request: web.Request) -> web.Response:
        status, body = self.rest(request.path, dict(request.query))
        raw = body if isinstance(body, str) else orjson.dumps(body).decode()
        return web.Response(text=raw, status=status, content_type="application/json")

    def rest(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        return 404, {"error": f"no route {path}"}


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()
