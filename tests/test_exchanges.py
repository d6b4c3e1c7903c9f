"""Binance, Bybit and Bitfinex end to end: the project's local servers of each exchange →
``connector run`` (a real process) → a real broker → a consumer.

What a downstream user needs: every event the exchange sent arrives once and in order;
a book rebuilt from the topic equals the exchange's book, also after a sequence break or
a checksum mismatch (resynced, with a status event), a dropped connection and a stalled
one; trades lost in a gap are backfilled where the exchange allows it, and said where
it does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from connector.consumer import BookBuilder
from connector.exchanges.binance.simulator import BinanceServer
from connector.exchanges.bitfinex.simulator import BitfinexServer
from connector.exchanges.bitstamp.simulator import Simulator
from connector.exchanges.bybit.simulator import BybitServer
from connector.sim.venue import Trade, VenueServer
from tests.conftest import Broker
from tests.harness import Consumed, connector_process, consume_until

pytestmark = pytest.mark.integration

# exchange → (markets, channels, trade channel, book channel)
SETUPS: dict[str, tuple[list[str], list[str], str, str]] = {
    "binance": (
        ["btcusdt", "ethusdt"],
        ["trade", "aggTrade", "depth", "bookTicker"],
        "trade",
        "depth",
    ),
    "bybit": (["BTCUSDT"], ["publicTrade", "orderbook"], "publicTrade", "orderbook"),
    "bitfinex": (["tBTCUSD"], ["trades", "book"], "trades", "book"),
}
PATHS = {"binance": "/stream", "bybit": "/v5/public/linear"}  # linear: a 1000-trade REST window
SUB_NAME = {
    ("binance", "trade"): "{m}@trade",
    ("binance", "aggTrade"): "{m}@aggTrade",
    ("binance", "depth"): "{m}@depth@100ms",
    ("binance", "bookTicker"): "{m}@bookTicker",
    ("bybit", "publicTrade"): "publicTrade.{m}",
    ("bybit", "orderbook"): "orderbook.50.{m}",
    ("bitfinex", "trades"): "trades:{m}",
    ("bitfinex", "book"): "book:{m}",
}


SERVERS: dict[str, type[VenueServer]] = {
    "binance": BinanceServer,
    "bybit": BybitServer,
    "bitfinex": BitfinexServer,
}


def env_for(exchange: str, server: VenueServer) -> dict[str, str]:
    markets, channels, _, _ = SETUPS[exchange]
    prefix = exchange.upper()
    return {
        f"{prefix}_WS_URL": server.ws_url + PATHS.get(exchange, ""),
        f"{prefix}_REST_URL": server.rest_url,
        f"{prefix}_MARKETS": ",".join(markets),
        f"{prefix}_CHANNELS": ",".join(channels),
    }


def base_env(broker: Broker, prefix: str, exchanges: str, **extra: str) -> dict[str, str]:
    return {
        **broker.env(),
        "CONNECTOR_EXCHANGES": exchanges,
        "CONNECTOR_TOPIC_TEMPLATE": prefix + ".{exchange}.{channel}.{market}",
        "CONNECTOR_STATUS_TOPIC_TEMPLATE": prefix + ".{exchange}.status",
        "CONNECTOR_DLQ_TOPIC_TEMPLATE": prefix + ".{exchange}.dlq",
        **extra,
    }


@asynccontextmanager
async def four_exchanges(
    broker: Broker,
    prefix: str,
    rate: float,
    bitstamp_channels: str,
    *,
    limit: int = 0,
    bitstamp: dict[str, Any],
    **extra: str,
) -> AsyncIterator[tuple[Simulator, dict[str, VenueServer], dict[str, str]]]:
    """The local servers of all four exchanges (Bitstamp market btcusd; the others as in
    SETUPS), and the connector environment that subscribes to all of them."""
    sim = Simulator(markets=("btcusd",), rate=rate, **bitstamp)
    servers = {name: cls(rate=rate, limit=limit) for name, cls in SERVERS.items()}
    await sim.start()
    for server in servers.values():
        await server.start()
    env = {
        **base_env(broker, prefix, "bitstamp,binance,bybit,bitfinex", **extra),
        "BITSTAMP_WS_URL": sim.ws_url,
        "BITSTAMP_REST_URL": sim.rest_url,
        "CONNECTOR_MARKETS": "btcusd",
        "CONNECTOR_CHANNELS": bitstamp_channels,
    }
    for name, server in servers.items():
        env.update(env_for(name, server))
    try:
        yield sim, servers, env
    finally:
        await sim.stop()
        for server in servers.values():
            await server.stop()


def records(consumed: Consumed, topic: str) -> list[dict[str, Any]]:
    return [r for _, _, _, r in consumed.by_topic.get(topic, [])]


def made_ids(server: VenueServer, exchange: str, channel: str, market: str) -> list[str]:
    """Every trade the exchange made in that market (also while nobody listened)."""
    trades: list[Trade] = server.trades[market + ("@agg" if channel == "aggTrade" else "")]
    return [t.uid if exchange == "bybit" else str(t.id) for t in trades]


def rebuilt_book(recs: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """A consumer's book from a BookDelta topic, by the contract (``BookBuilder``)."""
    builder = BookBuilder()
    for r in recs:
        builder.apply(r)
    assert builder.ready
    return builder.bids, builder.asks


def level_change(exchange: str, event: Any) -> tuple[str, str, str]:
    """(side, price, amount) of one book update the venue server sent."""
    if exchange == "bitfinex":
        bid, price, amount = event
        return ("b" if bid else "a", price, amount)
    side = "b" if event["b"] else "a"
    price, amount = event[side][0]
    return (side, price, amount)


def assert_book_matches(server: VenueServer, market: str, recs: list[dict[str, Any]]) -> None:
    book = server.books[market]
    bids, asks = rebuilt_book(recs)
    assert bids == book.bids, f"{server.name} {market} bids differ"
    assert asks == book.asks, f"{server.name} {market} asks differ"


def assert_contiguous_after_last_resync(recs: list[dict[str, Any]], binance: bool) -> None:
    last = max(i for i, r in enumerate(recs) if r["resync"])
    tail = recs[last:]
    prev = tail[0]["exchange_sequence"]
    for r in tail[1:]:
        first = int(r["extra"]["first_update_id"]) if binance else r["exchange_sequence"]
        if binance and prev == tail[0]["exchange_sequence"]:
            assert first <= prev + 1 <= r["exchange_sequence"]  # joins the snapshot
        else:
            assert first == prev + 1, (first, prev)
        prev = r["exchange_sequence"]


async def test_all_four_exchanges_publish_at_once(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    per_stream = 60
    streams = sum(len(m) * len(c) for m, c, _, _ in SETUPS.values())
    async with (
        four_exchanges(
            broker,
            topic_prefix,
            30,
            "live_trades,live_orders",
            limit=per_stream,
            bitstamp={"events_per_subscription": per_stream},
        ) as (bitstamp, servers, env),
        connector_process(env, tmp_path) as conn,
    ):
        async with asyncio.timeout(60):
            while (
                sum(len(v) for s in servers.values() for v in s.delivered.values())
                < streams * per_stream
                or sum(bitstamp.sent.values()) < 2 * per_stream
            ):
                await asyncio.sleep(0.2)
        consumed = await consume_until(broker.bootstrap, rf"^{topic_prefix}\..*", 10**9, idle_s=4)
        metrics = await conn.metrics()
        assert await conn.stop() == 0, conn.log()[-3000:]
        log = conn.log()
    assert "running: 14 subscription(s) on bitstamp, binance, bybit, bitfinex" in log
    assert "0 failed, 0 undelivered" in log
    for channel in ("live_trades", "live_orders"):
        assert len(records(consumed, f"{topic_prefix}.bitstamp.{channel}.btcusd")) == per_stream
    report = {}
    for exchange, (markets, channels, trade_channel, book_channel) in SETUPS.items():
        server = servers[exchange]
        for market in markets:
            for channel in channels:
                topic = f"{topic_prefix}.{exchange}.{channel}.{market}"
                recs = records(consumed, topic)
                assert recs, topic
                assert all(r["exchange"] == exchange for r in recs)
                report[f"{exchange}.{channel}.{market}"] = len(recs)
                if channel in (trade_channel, "aggTrade"):
                    ids = [r["trade_id"] for r in recs]
                    assert ids == made_ids(server, exchange, channel, market), topic
                elif channel == book_channel:
                    # What precedes the first resync is what it already contains (diffs
                    # received before the REST snapshot: published, not dropped).
                    first = next(i for i, r in enumerate(recs) if r["resync"])
                    assert all(
                        r["exchange_sequence"] <= recs[first]["exchange_sequence"]
                        for r in recs[:first]
                    ), topic
                    assert_book_matches(server, market, recs)
                    if exchange != "bitfinex":
                        assert_contiguous_after_last_resync(recs, exchange == "binance")
                else:  # bookTicker: every message, in order
                    name = SUB_NAME[(exchange, channel)].format(m=market)
                    assert [r["exchange_sequence"] for r in recs] == [
                        e["u"] for e in server.delivered[name]
                    ]
    print("records per exchange.channel.market:", report)
    assert 'connector_subscriptions_live{exchange="bitfinex"} 2.0' in metrics
    assert 'connector_subscriptions_live{exchange="binance"} 8.0' in metrics


@pytest.mark.parametrize("exchange", ["binance", "bybit", "bitfinex"])
async def test_book_break_drop_and_stall_are_recovered(
    broker: Broker, topic_prefix: str, tmp_path: Path, exchange: str
) -> None:
    server = SERVERS[exchange](rate=25, seed=7)
    await server.start()
    markets, channels, trade_channel, book_channel = SETUPS[exchange]
    market = markets[0]
    env = {
        **base_env(broker, topic_prefix, exchange),
        **env_for(exchange, server),
        "CONNECTOR_HEARTBEAT_INTERVAL_S": "1",
        "CONNECTOR_HEARTBEAT_TIMEOUT_S": "1",
        "CONNECTOR_RECONNECT_BACKOFF_MAX_S": "1",
    }
    try:
        async with connector_process(env, tmp_path) as conn:
            async with asyncio.timeout(30):
                while server.sent[SUB_NAME[(exchange, book_channel)].format(m=market)] < 20:
                    await asyncio.sleep(0.1)
            if exchange == "bitfinex":
                server.bad_checksum(market)  # type: ignore[attr-defined]
            else:
                server.break_sequence(market)
            await asyncio.sleep(3)
            # Nothing in flight when the link dies: a frame the kernel discarded with the
            # aborted connection was never received, so every frame sent must be in Kafka.
            server.stall()
            await asyncio.sleep(0.3)
            server.drop()
            await asyncio.sleep(3)
            connections = server.connections_made
            server.stall()
            async with asyncio.timeout(15):
                while server.connections_made == connections:
                    await asyncio.sleep(0.1)
            await asyncio.sleep(3)
            server.freeze()  # the market stops: the final books can be compared
            await asyncio.sleep(2)
            consumed = await consume_until(
                broker.bootstrap, rf"^{topic_prefix}\..*", 10**9, idle_s=3
            )
            assert await conn.stop() == 0, conn.log()[-3000:]
            log = conn.log()
    finally:
        await server.stop()
    statuses = records(consumed, f"{topic_prefix}.{exchange}.status")
    by_reason = {(s["channel"], s["reason"]): s for s in statuses}
    # the book break: one status, resynced
    reason = "checksum_mismatch" if exchange == "bitfinex" else "sequence_break"
    brk = by_reason[(book_channel, reason)]
    assert (brk["kind"], brk["recovery"]) == ("SEQUENCE_BREAK", "RESYNCED"), brk
    # the dropped and the stalled connection: a gap each, per channel
    for channel in channels:
        assert (channel, "heartbeat_timeout") in by_reason, statuses
        assert any(c == channel and r not in (reason, "heartbeat_timeout") for c, r in by_reason)
    book = records(consumed, f"{topic_prefix}.{exchange}.{book_channel}.{market}")
    assert sum(1 for r in book if r["resync"]) >= 4  # start, break, drop, stall
    # Every book update the server sent, in order, through the break (and the frames
    # until its resubscription took effect), the drop and the stall.
    sent = [
        level_change(exchange, e)
        for e in server.delivered[SUB_NAME[(exchange, book_channel)].format(m=market)]
    ]
    got = [
        ("b" if r["bids"] else "a", *next(iter(r["bids"] or r["asks"])).values())
        for r in book
        if not r["resync"]
    ]
    assert [g[:3] for g in got] == sent, f"{len(sent)} book updates sent, {len(got)} in Kafka"
    assert_book_matches(server, market, book)
    if exchange != "bitfinex":
        assert_contiguous_after_last_resync(book, exchange == "binance")
    trades = [
        r["trade_id"]
        for r in records(consumed, f"{topic_prefix}.{exchange}.{trade_channel}.{market}")
    ]
    made = made_ids(server, exchange, trade_channel, market)
    assert len(trades) == len(set(trades)), "a trade was published twice"
    assert set(trades) <= set(made)
    # REST history: every trade made is delivered once, in order, gaps included
    assert trades == made
    if exchange == "binance":
        agg = records(consumed, f"{topic_prefix}.binance.aggTrade.{market}")
        assert [r["trade_id"] for r in agg] == made_ids(server, exchange, "aggTrade", market)
    for why in ("heartbeat_timeout", "ConnectionClosedError"):
        gap = by_reason[(trade_channel, why)]
        assert gap["recovery"] == "BACKFILLED", gap
    # Bitfinex answers a (re)subscription with its latest trades, which may cover a short
    # gap whole (REST then adds none); elsewhere only REST has the gap's trades. Either
    # way every trade made is in Kafka once, in order (above).
    if exchange != "bitfinex":
        for why in ("heartbeat_timeout", "ConnectionClosedError"):
            assert by_reason[(trade_channel, why)]["recovered_events"] > 0
    print(
        f"{exchange}: {len(made)} trades made, {len(trades)} delivered; "
        f"{sum(1 for r in book if r['resync'])} book resyncs; statuses:",
        sorted(by_reason),
    )
    assert "resubscribing" in log


async def test_bitfinex_maintenance_pauses_liveness_and_reconnect_requests_hand_over(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    server = SERVERS["bitfinex"](rate=20)
    await server.start()
    env = {
        **base_env(broker, topic_prefix, "bitfinex"),
        **env_for("bitfinex", server),
        "CONNECTOR_HEARTBEAT_INTERVAL_S": "1",
        "CONNECTOR_HEARTBEAT_TIMEOUT_S": "1",
    }
    try:
        async with connector_process(env, tmp_path) as conn:
            async with asyncio.timeout(30):
                while server.sent["book:tBTCUSD"] < 10:
                    await asyncio.sleep(0.1)
            # 20060: maintenance. The exchange goes quiet (no data, no pong) for longer
            # than the heartbeat deadline: the connection must stay.
            await server.info(20060, "Entering maintenance")  # type: ignore[attr-defined]
            await asyncio.sleep(0.3)
            server.freeze()
            server.stall()
            await asyncio.sleep(4)
            assert server.connections_made == 1, "reconnected during maintenance"
            # 20061: over; the connection is renewed make-before-break.
            server.frozen = False
            server.unstall()
            await server.info(20061, "Maintenance ended")  # type: ignore[attr-defined]
            async with asyncio.timeout(15):
                while server.connections_made < 2:
                    await asyncio.sleep(0.1)
            await asyncio.sleep(2)
            # 20051: stop/restart requested: another make-before-break handover.
            await server.info(20051, "Stop/Restart")  # type: ignore[attr-defined]
            async with asyncio.timeout(15):
                while server.connections_made < 3:
                    await asyncio.sleep(0.1)
            await asyncio.sleep(2)
            server.freeze()
            await asyncio.sleep(1)
            consumed = await consume_until(
                broker.bootstrap, rf"^{topic_prefix}\..*", 10**9, idle_s=3
            )
            metrics = await conn.metrics()
            assert await conn.stop() == 0, conn.log()[-3000:]
            log = conn.log()
    finally:
        await server.stop()
    assert "the exchange entered maintenance (Entering maintenance)" in log
    assert "maintenance ended (Maintenance ended): renewing the connection" in log
    statuses = records(consumed, f"{topic_prefix}.bitfinex.status")
    assert not [s for s in statuses if s["reason"] == "heartbeat_timeout"], statuses
    for reason in ("maintenance_ended", "request_reconnect"):
        line = (
            f'connector_handovers_total{{exchange="bitfinex",outcome="switched",'
            f'reason="{reason}"}} 1.0'
        )
        assert line in metrics, metrics
    trades = [r["trade_id"] for r in records(consumed, f"{topic_prefix}.bitfinex.trades.tBTCUSD")]
    assert trades == made_ids(server, "bitfinex", "trades", "tBTCUSD")  # nothing lost or doubled
    assert_book_matches(
        server, "tBTCUSD", records(consumed, f"{topic_prefix}.bitfinex.book.tBTCUSD")
    )


async def test_two_replicas_share_all_four_exchanges_in_a_group(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    """Scale-out is exchange-agnostic: subscriptions of every exchange are spread over the
    replicas, each owned once; a subscription that moves is resumed from Kafka (Binance
    trades: complete, through the REST backfill)."""
    from contextlib import AsyncExitStack

    from tests.test_scaleout import joined, owners, ownership

    expected = {"bitstamp:live_trades:btcusd"} | {
        f"{e}:{c}:{m}" for e, (ms, cs, _, _) in SETUPS.items() for m in ms for c in cs
    }
    topic = f"{topic_prefix}-group.assignments"
    async with four_exchanges(
        broker,
        topic_prefix,
        10,
        "live_trades",
        bitstamp={"idle_trade_rate": 10},
        CONNECTOR_GROUP_ID=f"{topic_prefix}-group",
        CONNECTOR_ASSIGNMENT_PARTITIONS="64",
        CONNECTOR_GROUP_SESSION_TIMEOUT_MS="6000",
    ) as (_, servers, env):
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(connector_process(env, tmp_path / "r0"))
            await joined([first])
            await asyncio.sleep(4)  # the first replica runs everything for a while
            second = await stack.enter_async_context(connector_process(env, tmp_path / "r1"))
            await joined([first, second])
            async with asyncio.timeout(90):
                while True:
                    held = owners(await ownership(broker.bootstrap, topic))
                    if set(held) == expected and len(set(held.values())) == 2:
                        break
                    await asyncio.sleep(1)
            await asyncio.sleep(4)
            for s in servers.values():
                s.freeze()
            await asyncio.sleep(2)
            for r in (first, second):
                assert await r.stop() == 0, r.log()[-3000:]
        consumed = await consume_until(broker.bootstrap, rf"^{topic_prefix}\..*", 10**9, idle_s=4)
    by_exchange: dict[str, set[str]] = {}
    for key, replica in held.items():
        by_exchange.setdefault(replica, set()).add(key.split(":")[0])
    print("exchanges per replica:", by_exchange)
    for exchange, (markets, _, trade_channel, _) in SETUPS.items():
        for market in markets:
            ids = [
                r["trade_id"]
                for r in records(consumed, f"{topic_prefix}.{exchange}.{trade_channel}.{market}")
            ]
            assert ids and len(ids) == len(set(ids)), f"{exchange} {market}: duplicates"
            made = made_ids(servers[exchange], exchange, trade_channel, market)
            assert ids == made, f"{exchange} {market}: not every trade once, in order"
