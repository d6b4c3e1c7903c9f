"""The connector as a process against the project's own Bitstamp server: operator-facing
behaviour (warnings, rejected subscriptions, embedded broker, simulate CLI)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
import orjson
import pytest
import websockets

from connector.exchanges.bitstamp.simulator import Simulator
from connector.kafka.embedded import free_port
from tests.conftest import Broker
from tests.harness import connector_process

pytestmark = pytest.mark.integration


async def wait_for_log(conn, text: str, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while text not in conn.log():
            assert conn.proc.returncode is None, conn.log()[-2000:]
            await asyncio.sleep(0.2)


async def test_silent_market_warned_and_rejected_subscription_retried_with_backoff(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    sim = Simulator(markets=("btcusd",), rate=5, reject_markets=("badmkt",))
    await sim.start()
    env = {
        **broker.env(),
        "BITSTAMP_WS_URL": sim.ws_url,
        "CONNECTOR_MARKETS": "btcusd,nosuchmkt,badmkt",
        "CONNECTOR_CHANNELS": "live_trades",
        "CONNECTOR_TOPIC_TEMPLATE": topic_prefix + ".{exchange}.{channel}.{market}",
        "CONNECTOR_SILENCE_WARNING_S": "2",
        "CONNECTOR_SUBSCRIBE_TIMEOUT_S": "1",
        "CONNECTOR_RESUBSCRIBE_BACKOFF_S": "3",
    }
    try:
        async with connector_process(env, tmp_path) as conn:
            await wait_for_log(conn, "live_trades_nosuchmkt confirmed but silent")
            await wait_for_log(conn, "retrying subscription live_trades_badmkt")
            await asyncio.sleep(4)
            assert await conn.stop() == 0
            log = conn.log()
    finally:
        await sim.stop()
    assert "exchange error on subscription '': code=None message=Bad subscription string." in log
    assert "subscription live_trades_badmkt not accepted (no confirmation within 1s)" in log
    # ~8 s of rejections with a 3 s backoff: a handful of attempts, not a tight loop.
    assert 2 <= sim.requests["live_trades_badmkt"] <= 5
    assert "live_trades_btcusd confirmed but silent" not in log  # the live market is fine


async def test_run_without_bootstrap_starts_the_embedded_broker(tmp_path: Path) -> None:
    sim = Simulator(markets=("btcusd",), rate=10)
    await sim.start()
    env = {
        "BITSTAMP_WS_URL": sim.ws_url,
        "CONNECTOR_MARKETS": "btcusd",
        "CONNECTOR_CHANNELS": "live_trades,order_book",
    }
    try:
        async with connector_process(env, tmp_path) as conn:
            await wait_for_log(conn, "subscribed order_book_btcusd")
            await asyncio.sleep(2)
            metrics = await conn.metrics()
            assert await conn.stop() == 0
            log = conn.log()
    finally:
        await sim.stop()
    assert "embedded Kafka-protocol broker (Tansu) listening on 127.0.0.1:" in log
    assert "idempotence off" in log
    published = [
        line
        for line in metrics.splitlines()
        if line.startswith("connector_events_published_total{") and 'market="btcusd"' in line
    ]
    assert len(published) == 2 and all(float(p.rsplit(" ", 1)[1]) > 0 for p in published)
    assert "embedded broker on 127.0.0.1:" in log and "stopped" in log


async def test_simulate_cli_speaks_bitstamp_v2_and_serves_rest() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "connector.cli",
        "simulate",
        "--port",
        str(port),
        "--markets",
        "btcusd,btcusd-perp",
        "--rate",
        "20",
        env=dict(os.environ),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(20):
            while True:
                try:
                    ws = await websockets.connect(f"ws://127.0.0.1:{port}")
                    break
                except OSError:
                    await asyncio.sleep(0.1)
            async with ws:
                await ws.send(
                    '{"event":"bts:subscribe","data":{"channel":"live_trades_btcusd-perp"}}'
                )
                ack = orjson.loads(await ws.recv())
                assert ack == {
                    "event": "bts:subscription_succeeded",
                    "channel": "live_trades_btcusd-perp",
                    "data": {},
                }
                trade = orjson.loads(await ws.recv())
                assert trade["event"] == "trade"
                assert int(trade["data"]["id_str"]) > 2**53
                await ws.send('{"event":"bts:heartbeat"}')
                while (msg := orjson.loads(await ws.recv()))["event"] != "bts:heartbeat":
                    pass
                assert msg["data"] == {"status": "success"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            pairs = (await client.get("/api/v2/trading-pairs-info/")).json()
            assert {p["url_symbol"] for p in pairs} == {"btcusd", "btcusd-perp"}
            trades = (await client.get("/api/v2/transactions/btcusd-perp/?time=minute")).json()
            assert trades and {"tid", "date", "price", "amount", "type"} <= set(trades[0])
            book = (await client.get("/api/v2/order_book/btcusd/?group=1")).json()
            assert 0 < len(book["bids"]) <= 100 and "microtimestamp" in book
            missing = await client.get("/api/v2/order_book/nosuch/")
            assert missing.status_code == 404 and missing.json()["status"] == "error"
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
