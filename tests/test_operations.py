"""Operations: the HTTP endpoints during an integration run (real connector process,
the project's Bitstamp server, a real broker)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.exchanges.bitstamp.simulator import Simulator
from tests.conftest import Broker
from tests.harness import Running, connector_process, metric_value
from tests.test_resilience import env_for

pytestmark = pytest.mark.integration


async def get(conn: Running, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{conn.http_port}{path}", timeout=5)


async def readyz_until(conn: Running, status: int, within: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            try:
                r = await get(conn, "/readyz")
                if r.status_code == status:
                    body: dict[str, Any] = r.json()
                    return body
            except httpx.TransportError:
                assert conn.proc.returncode is None, conn.log()[-2000:]
            await asyncio.sleep(0.1)


def sample(text: str, line_start: str) -> float:
    value = metric_value(text, line_start)
    assert value is not None, f"no {line_start} in /metrics"
    return value


async def test_probes_and_metrics_follow_the_stream(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    sim = Simulator(markets=("btcusd",), rate=20)
    await sim.start()
    env = env_for(
        broker,
        sim,
        topic_prefix,
        "live_trades,live_orders",
        CONNECTOR_STALE_AFTER_S='{"live_orders": 2}',
    )
    try:
        async with connector_process(env, tmp_path) as conn:
            ready = await readyz_until(conn, 200)
            assert ready == {
                "ready": True,
                "state": "running",
                "kafka": "ok",
                "not_live": [],
                "stale": [],
            }
            assert (await get(conn, "/livez")).text == "ok\n"
            first = (await get(conn, "/metrics")).text
            await asyncio.sleep(2)
            second = (await get(conn, "/metrics")).text
            published = 'connector_events_published_total{channel="live_orders"'
            assert sample(second, published) > sample(first, published) > 0  # values move
            assert sample(second, "connector_kafka_produce_seconds_count") > 0
            age = 'connector_last_event_age_seconds{channel="live_orders"'
            assert 0 <= sample(second, age) < 2
            assert sample(second, "connector_kafka_buffer_fill_ratio") < 1
            assert sample(second, 'connector_subscriptions_live{exchange="bitstamp"}') == 2

            await sim.fault("mute_hard", channel="live_orders_btcusd")  # the feed stalls
            stalled = await readyz_until(conn, 503)
            assert stalled["stale"] == ["live_orders_btcusd"] and stalled["kafka"] == "ok"
            assert sample((await get(conn, "/metrics")).text, age) > 2
            assert (await get(conn, "/livez")).status_code == 200  # alive, just not ready
            await sim.fault("unmute", channel="live_orders_btcusd")  # and recovers
            assert (await readyz_until(conn, 200))["ready"] is True
            assert await conn.stop() == 0
            log = conn.log()
    finally:
        await sim.stop()
    assert "readiness: not ready" in log and "readiness: ready" in log
