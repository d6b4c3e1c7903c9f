"""A local Bitstamp-v2-compatible server: WebSocket API plus the REST routes we use.

For tests, the benchmark, and trying the stack offline. It speaks the v2 protocol
(bts:subscribe / unsubscribe / heartbeat, subscription_succeeded, bts:error,
bts:request_reconnect) and sends realistic synthetic events for all six public channels
at a chosen rate per subscription. Like the real server, an unknown but well-formed
market is acknowledged and then stays silent.

REST: ``/api/v2/trading-pairs-info/``, ``/api/v2/transactions/{market}/?time=minute|hour``,
``/api/v2/order_book/{market}/``. Test hooks: ``/_sim/stats`` (frames sent per channel),
``/_sim/rate?value=R`` and ``/_sim/fault?kind=...`` with the faults of ``fault()``:
request_reconnect, drop (abrupt TCP abort), close (clean close), stall (half-open: the
connection stays up, nothing is sent or answered), garbage (bad frames), chain_break
(live_orders event ids jump), refuse (the next ``count`` handshakes get HTTP ``status``),
oversized (one frame of ``size`` bytes).

The market keeps trading while nobody listens: with ``idle_trade_rate`` the server makes
trades (REST history only) for markets no live connection receives, for backfill tests.

Like the real exchange, each (channel, market) is one stream, generated once and sent to
every connection subscribed to it: two connections subscribed to the same channel get
the same events (a make-before-break switch overlaps them). An event reaches the
connections subscribed when it is made; ``frames`` records the events sent to at least
one connection (``delivered_to`` which ones, with ``record``), and a trade nobody
received goes to ``unsent_trades`` (REST history only).

Data is deterministic for a given seed: each market has its own generator.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from aiohttp import web
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from connector.exchanges.bitstamp.protocol import ACCOUNT, split_channel
from connector.exchanges.bitstamp.sim_market import MarketGen, new_market
from connector.sim.server import SimServer, json_response

log = logging.getLogger(__name__)

# The broadcast's period: each tick sends every stream's due events at once (about 50
# frames a tick at 5 000/s, back to back), the slower tick below 20 events/s a stream.
TICK_S = 0.01
QUIET_TICK_S = 0.05
DEFAULT_MARKETS = ("btcusd", "ethusd", "btcusd-perp", "ethusd-perp", "xrpusd", "solusd")
_REST_TRADES = re.compile(r"^/api/v2/transactions/([a-z0-9-]+)/?$")
_REST_BOOK = re.compile(r"^/api/v2/order_book/([a-z0-9-]+)/?$")


class Simulator(SimServer):
    name = "Bitstamp"
    max_size = 64 * 1024

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        markets: tuple[str, ...] = DEFAULT_MARKETS,
        rate: float = 2.0,
        events_per_subscription: int = 0,
        seed: int = 1,
        record: bool = False,
        book_depth: int = 100,
        reject_markets: tuple[str, ...] = (),
        rate_weights: dict[str, float] | None = None,
        idle_trade_rate: float = 0.0,
        heartbeat_reply_delay: float = 0.0,
        api_keys: dict[str, tuple[str, int]] | None = None,
        rest_port: int = 0,
    ) -> None:
        super().__init__(host, port, rest_port)
        self.markets = tuple(markets)
        self.rate = rate
        self.limit = events_per_subscription
        self.seed = seed
        self.record = record
        self.book_depth = book_depth
        self.reject_markets = set(reject_markets)
        # Relative rates per channel (default 1): rate x weight events/s per subscription.
        self.rate_weights = dict(rate_weights or {})
        self._rate_epoch = 0
        self.idle_trade_rate = idle_trade_rate
        # A slow server: heartbeat replies come this late (data keeps flowing meanwhile).
        self.heartbeat_reply_delay = heartbeat_reply_delay
        self.unsent_trades: dict[str, list[str]] = defaultdict(list)  # ids never sent
        self.rest_delay = 0.0  # seconds /transactions/ takes to answer (a fault)
        self._stalled: set[ServerConnection] = set()
        self._receiving: dict[str, set[ServerConnection]] = defaultdict(set)
        self.muted: set[str] = set()  # channel names that send nothing (a stale feed)
        self.hard_muted: set[str] = set()  # ... and stay silent when resubscribed
        self.requests: dict[str, int] = defaultdict(int)  # subscribe frames per channel name
        self.sent: dict[tuple[str, str], int] = defaultdict(int)
        self.frames: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self.delivered_to: dict[tuple[str, str], list[tuple[int, ...]]] = defaultdict(list)
        self.connections: set[ServerConnection] = set()
        self.connection_ids: dict[ServerConnection, int] = {}  # in order of arrival
        self._subscribers: dict[str, dict[ServerConnection, None]] = defaultdict(dict)
        self._streams: dict[str, tuple[float, int]] = {}  # channel name → (start, made)
        self._background: set[asyncio.Task[None]] = set()
        self.subscribe_requests = 0
        # Private channels: API key → (secret, user id); tokens → (user id, expiry).
        self.api_keys: dict[str, tuple[str, int]] = dict(api_keys or {})
        self._tokens: dict[str, tuple[int, float]] = {}
        self._nonces: set[str] = set()
        self.token_requests = 0
        self.private_refused = 0
        self._gens: dict[str, MarketGen] = {}

    # --- lifecycle -------------------------------------------------------------------
    def background(self) -> list[Coroutine[Any, Any, None]]:
        work = [self._broadcast()]
        if self.idle_trade_rate > 0:
            work.append(self._idle_trades())
        return work

    def set_rate(self, rate: float) -> None:
        """Changes the per-subscription rate from now on (no burst to catch up)."""
        self.rate = rate
        self._rate_epoch += 1

    # --- faults ----------------------------------------------------------------------
    async def fault(
        self,
        kind: str,
        *,
        status: int = 503,
        count: int = 1,
        channel: str = "",
        close_after: float = 0.0,
        size: int = 0,
    ) -> int:
        """Injects a fault into every current connection (or the next handshakes).
        ``request_reconnect`` with ``close_after``: the server also closes those
        connections that many seconds later, as Bitstamp does before maintenance.
        ``oversized``: one well-formed frame of ``size`` bytes (a padded trade)."""
        if kind == "refuse":
            self.refuse.extend([status] * count)
            return count
        if kind == "mute":  # one channel goes silent until it is subscribed again
            self.muted.add(channel)
            return 1
        if kind == "mute_hard":  # silent even when subscribed again (a broken feed)
            self.muted.add(channel)
            self.hard_muted.add(channel)
            return 1
        if kind == "unmute":  # the feed works again
            self.muted.discard(channel)
            self.hard_muted.discard(channel)
            return 1
        if kind == "chain_break":
            for gen in self._gens.values():
                gen.event_id += 5
            return len(self._gens)
        n = 0
        for ws in list(self.connections):
            if ws.state is not State.OPEN:
                continue  # closing already: faults go to live connections
            try:
                if kind == "stall":
                    self._stalled.add(ws)
                elif kind == "close":
                    await ws.close()
                elif kind == "request_reconnect":
                    await ws.send(
                        orjson.dumps(
                            {"event": "bts:request_reconnect", "channel": "", "data": ""}
                        ).decode()
                    )
                    if close_after > 0:
                        task = asyncio.create_task(self._close_later(ws, close_after))
                        self._background.add(task)
                        task.add_done_callback(self._background.discard)
                elif kind == "drop":
                    ws.transport.abort()
                elif kind == "oversized":
                    head = '{"event":"trade","channel":"live_trades_btcusd","data":{"pad":"'
                    tail = '"}}'
                    await ws.send(head + "x" * max(0, size - len(head) - len(tail)) + tail)
                elif kind == "garbage":
                    await ws.send("{not json")
                    await ws.send(b"\x00\x01binary")
                    await ws.send('{"event":"mystery","channel":"live_trades_btcusd","data":{}}')
                else:
                    raise ValueError(f"unknown fault {kind!r}")

            except ConnectionClosed:
                continue
            n += 1
        return n

    @staticmethod
    async def _close_later(ws: ServerConnection, delay: float) -> None:
        await asyncio.sleep(delay)
        await ws.close(1012, "maintenance")

    # --- data ------------------------------------------------------------------------
    def _gen(self, market: str) -> MarketGen:
        gen = self._gens.get(market)
        if gen is None:
            gen = self._gens[market] = new_market(self.seed, market)
        return gen

    def make_event(self, channel: str, market: str) -> dict[str, Any]:
        """The next frame of a stream. Serialize it before the next call: unless ``record``
        is on, a book frame holds the simulator's live levels."""
        user_id = next(iter(self.api_keys.values()))[1] if self.api_keys else 0
        return self._gen(market).frame(
            channel,
            time.time_ns() // 1000,
            book_depth=self.book_depth,
            record=self.record,
            user_id=user_id,
        )

    async def _idle_trades(self) -> None:
        """Trades that happen while no connection receives a market's live_trades."""
        started = time.monotonic()
        made: dict[str, int] = defaultdict(int)
        while True:
            await asyncio.sleep(0.05)
            due = int((time.monotonic() - started) * self.idle_trade_rate)
            for market in self.markets:
                if self._receiving[market] - self._stalled:
                    made[market] = due  # someone receives them live
                    continue
                while made[market] < due:
                    made[market] += 1
                    frame = self.make_event("live_trades", market)
                    self.unsent_trades[market].append(frame["data"]["id_str"])

    # --- WebSocket -------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        self.connections.add(ws)
        self.connection_ids[ws] = len(self.connection_ids) + 1
        subs: dict[str, tuple[str, str]] = {}
        try:
            async for raw in ws:
                await self._client_frame(ws, raw, subs)
        except ConnectionClosed:
            pass
        finally:
            for name in subs:
                self._subscribers[name].pop(ws, None)
            self.connections.discard(ws)
            self._stalled.discard(ws)
            for receivers in self._receiving.values():
                receivers.discard(ws)

    async def _client_frame(
        self, ws: ServerConnection, raw: str | bytes, subs: dict[str, tuple[str, str]]
    ) -> None:
        def error(message: str) -> str:
            return orjson.dumps(
                {"event": "bts:error", "channel": "", "data": {"code": None, "message": message}}
            ).decode()

        if ws in self._stalled:
            return  # half-open: nothing is answered
        if len(raw) >= 512:
            await ws.send(error("Message too long."))
            return
        try:
            msg = orjson.loads(raw)
            event = msg["event"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await ws.send(error("Bad request."))
            return
        if event == "bts:heartbeat":
            if self.heartbeat_reply_delay:
                await asyncio.sleep(self.heartbeat_reply_delay)
            await ws.send(
                orjson.dumps(
                    {"event": "bts:heartbeat", "channel": "", "data": {"status": "success"}}
                ).decode()
            )
            return
        if event in ("bts:subscribe", "bts:unsubscribe"):
            data = msg.get("data") if isinstance(msg, dict) else None
            channel = data.get("channel") if isinstance(data, dict) else None
            where = split_channel(channel) if isinstance(channel, str) else None
            if where is None or not isinstance(channel, str):
                await ws.send(error("Bad subscription string."))
                return
            if event == "bts:subscribe":
                self.subscribe_requests += 1
                self.requests[channel] += 1
                if channel not in self.hard_muted:
                    self.muted.discard(channel)  # resubscribing revives a stale feed
                if where[1] in self.reject_markets:
                    await ws.send(error("Bad subscription string."))
                    return
                if channel.startswith("private-"):
                    token = data.get("auth") if isinstance(data, dict) else None
                    owner = self._tokens.get(token) if isinstance(token, str) else None
                    if (
                        owner is None
                        or owner[1] < time.monotonic()
                        or not channel.endswith(f"-{owner[0]}")
                    ):
                        self.private_refused += 1
                        await ws.send(error("Invalid private channel auth."))
                        return
                subs[channel] = where
                self._subscribers[channel][ws] = None
                if where[0] == "live_trades":
                    self._receiving[where[1]].add(ws)
                reply = "bts:subscription_succeeded"
            else:
                subs.pop(channel, None)
                self._subscribers[channel].pop(ws, None)
                if where[0] == "live_trades":
                    self._receiving[where[1]].discard(ws)
                reply = "bts:unsubscription_succeeded"
            await ws.send(orjson.dumps({"event": reply, "channel": channel, "data": {}}).decode())
            return
        await ws.send(error("Unknown event."))

    async def _broadcast(self) -> None:
        """Makes each subscribed stream's events on schedule and sends each to every
        connection subscribed to it (stalled ones excepted)."""
        epoch = self._rate_epoch
        while True:
            await asyncio.sleep(
                TICK_S
                if self.rate * max(self.rate_weights.values(), default=1) >= 20
                else QUIET_TICK_S
            )
            now = time.monotonic()
            if epoch != self._rate_epoch:
                epoch = self._rate_epoch
                self._streams.clear()
            for name, conns in list(self._subscribers.items()):
                where = split_channel(name)
                live = [ws for ws in conns if ws not in self._stalled]
                if (
                    where is None
                    or not live
                    or name in self.muted
                    or (where[1] not in self.markets and where[1] != ACCOUNT)  # then silent
                    or (where[0] == "funding_rate" and not where[1].endswith("-perp"))
                ):
                    # Nobody receives it: the schedule starts afresh for the next one.
                    self._streams.pop(name, None)
                    continue
                await self._emit_due(name, where, live, now)

    async def _emit_due(
        self, name: str, where: tuple[str, str], live: list[ServerConnection], now: float
    ) -> None:
        channel, market = where
        t0, done = self._streams.setdefault(name, (now, 0))
        due = int((now - t0) * self.rate * self.rate_weights.get(channel, 1.0)) + 1
        key = (channel, market)
        while done < due and (not self.limit or self.sent[key] < self.limit):
            frame = self.make_event(channel, market)
            text = orjson.dumps(frame).decode()
            reached = []
            for ws in live:
                try:
                    await ws.send(text)
                except ConnectionClosed:
                    continue
                reached.append(self.connection_ids[ws])
            done += 1
            if reached:
                self.sent[key] += 1
                if self.record:
                    self.frames[key].append(frame)
                    self.delivered_to[key].append(tuple(reached))
            elif channel == "live_trades":
                self.unsent_trades[market].append(frame["data"]["id_str"])
        self._streams[name] = (t0, done)

    # --- REST ------------------------------------------------------------------------
    def refused(self, status: HTTPStatus) -> Response:
        return json_response({"status": "error", "reason": status.phrase}, status)

    async def _http_on_ws_port(self, request: Request) -> Response | None:
        """GET routes on the WebSocket port (the REST port serves them too)."""
        status, body = await self._route("GET", request.path, dict(request.headers), b"")
        return json_response(body, status)

    async def _rest_http(self, request: web.Request) -> web.Response:
        """The REST port (aiohttp): every route, POST included."""
        status, body = await self._route(
            request.method, request.path_qs, dict(request.headers), await request.read()
        )
        return web.Response(
            body=orjson.dumps(body), status=status.value, content_type="application/json"
        )

    async def _route(
        self, method: str, target: str, headers: dict[str, str], payload: bytes
    ) -> tuple[HTTPStatus, Any]:
        url = urlsplit(target)
        query = parse_qs(url.query)
        path = url.path
        if path == "/api/v2/websockets_token/" and method == "POST":
            return self._token(headers, url.query, payload)
        if method != "GET":
            return HTTPStatus.METHOD_NOT_ALLOWED, {"status": "error", "reason": "Method"}
        if path.rstrip("/") == "/api/v2/trading-pairs-info":
            body: Any = [
                {"name": _pair_name(m), "url_symbol": m, "trading": "Enabled"} for m in self.markets
            ]
            return HTTPStatus.OK, body
        if path == "/_sim/stats":
            return HTTPStatus.OK, {f"{c}_{m}": n for (c, m), n in self.sent.items()}
        if path == "/_sim/rate":
            try:
                self.set_rate(float(query.get("value", [""])[0]))
            except ValueError:
                return HTTPStatus.BAD_REQUEST, {
                    "status": "error",
                    "reason": "value must be a number",
                }
            return HTTPStatus.OK, {"status": "ok", "rate": self.rate}
        if path == "/_sim/fault":
            kind = query.get("kind", [""])[0]
            try:
                n = await self.fault(
                    kind,
                    status=int(query.get("status", ["503"])[0]),
                    count=int(query.get("count", ["1"])[0]),
                    channel=query.get("channel", [""])[0],
                    close_after=float(query.get("close_after", ["0"])[0]),
                    size=int(query.get("size", ["0"])[0]),
                )
            except ValueError as exc:
                return HTTPStatus.BAD_REQUEST, {"status": "error", "reason": str(exc)}
            return HTTPStatus.OK, {"status": "ok", "connections": n}
        m = _REST_TRADES.match(path) or _REST_BOOK.match(path)
        if m is None or m.group(1) not in self.markets:
            return HTTPStatus.NOT_FOUND, {
                "status": "error",
                "reason": "Not found",
                "code": "404.001",
            }
        gen = self._gen(m.group(1))
        if path.startswith("/api/v2/transactions/"):
            # A slow answer: live trades of a resubscribed market arrive meanwhile.
            await asyncio.sleep(self.rest_delay)
            span = {"minute": 60, "hour": 3600, "day": 86400}.get(query.get("time", ["hour"])[0])
            if span is None:
                return HTTPStatus.BAD_REQUEST, {
                    "status": "error",
                    "reason": "Invalid time",
                    "code": "400.002",
                }
            since = int(time.time()) - span
            return HTTPStatus.OK, [t for t in reversed(gen.trades) if int(t["date"]) >= since]
        now_us = time.time_ns() // 1000
        bids, asks = gen.rest_book(self.book_depth)
        return HTTPStatus.OK, {
            "timestamp": str(now_us // 10**6),
            "microtimestamp": str(now_us),
            "bids": bids,
            "asks": asks,
        }

    def _token(self, headers: dict[str, str], query: str, payload: bytes) -> tuple[HTTPStatus, Any]:
        """POST /api/v2/websockets_token/ with Bitstamp's v2 authentication: the HMAC-
        SHA256 of the request (key, method, host, path, query, content type if a body,
        nonce, timestamp, version, body) under the API secret."""
        self.token_requests += 1
        h = {k.lower(): v for k, v in headers.items()}

        def refuse(reason: str, code: str) -> tuple[HTTPStatus, Any]:
            return HTTPStatus.FORBIDDEN, {"status": "error", "reason": reason, "code": code}

        auth = h.get("x-auth", "")
        key = auth.removeprefix("BITSTAMP ") if auth.startswith("BITSTAMP ") else ""
        if key not in self.api_keys:
            return refuse("API key not found", "API0001")
        secret, user_id = self.api_keys[key]
        nonce, stamp = h.get("x-auth-nonce", ""), h.get("x-auth-timestamp", "")
        if h.get("x-auth-version") != "v2" or not nonce or not stamp.isdigit():
            return refuse("Missing authentication headers", "API0002")
        if abs(int(stamp) - time.time() * 1000) > 150_000:
            return refuse("Timestamp too old", "API0017")
        if nonce in self._nonces:
            return refuse("Nonce already used", "API0004")
        body = payload.decode()
        parts = [
            "BITSTAMP " + key,
            "POST",
            h.get("host", ""),
            "/api/v2/websockets_token/",
            query,
            h.get("content-type", "") if body else "",
            nonce,
            stamp,
            "v2",
            body,
        ]
        expected = hmac.new(secret.encode(), "".join(parts).encode(), hashlib.sha256)
        if not hmac.compare_digest(expected.hexdigest(), h.get("x-auth-signature", "").lower()):
            return refuse("Invalid signature", "API0005")
        self._nonces.add(nonce)
        token = secrets.token_hex(16)
        self._tokens[token] = (user_id, time.monotonic() + 60)
        return HTTPStatus.OK, {"token": token, "user_id": user_id, "valid_sec": 60}


def for_cli(
    *,
    host: str,
    port: int,
    rate: float,
    seed: int,
    events: int,
    markets: tuple[str, ...] = DEFAULT_MARKETS,
    book_depth: int = 100,
    weights: dict[str, float] | None = None,
) -> Simulator:
    """``connector simulate`` (Bitstamp): the markets given; REST on a free port (and
    on the WebSocket port: GET routes)."""
    return Simulator(
        host,
        port,
        markets=markets,
        rate=rate,
        events_per_subscription=events,
        seed=seed,
        book_depth=book_depth,
        rate_weights=weights,
    )


def _pair_name(market: str) -> str:
    """Bitstamp's display name of a market: ``btcusd`` → ``BTC/USD``, ``btcusd-perp`` →
    ``BTC/USD-PERP`` (the quote is the last three letters before any suffix)."""
    spot, dash, suffix = market.partition("-")
    return f"{spot[:-3].upper()}/{spot[-3:].upper()}{dash}{suffix.upper()}"
