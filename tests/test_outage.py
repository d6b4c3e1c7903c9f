"""A Kafka outage with default settings, on a real broker behind a TCP proxy that cuts it.

Proved per frame: every frame the simulated exchange wrote to a subscribed connection is
in Kafka with its exact texts (first copies, in order; at-least-once redeliveries of
records whose acknowledgement the cut lost are allowed), and the connector says what
happened in a few lines, not one per client retry.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.exchanges.bitstamp.simulator import Simulator
from connector.kafka.embedded import EmbeddedBroker, free_port
from tests.conftest import Broker
from tests.harness import Consumed, Running, connector_process, consume_until, metric_value
from tests.netfault import FaultyLink
from tests.test_end_to_end import expected_record

pytestmark = pytest.mark.integration

MARKETS = ("btcusd", "ethusd", "btcusd-perp")
CHANNELS = ("live_trades", "live_orders", "order_book", "diff_order_book", "funding_rate")
SUBSCRIPTIONS = [
    (c, m) for m in MARKETS for c in CHANNELS if c != "funding_rate" or m.endswith("-perp")
]


def identity(record: dict[str, Any]) -> str:
    """A redelivery (a resend whose first acknowledgement the cut lost) is the same
    record to the last field: connection, sequence and receive time included."""
    return repr(record)


def check_every_frame_exact(
    sim: Simulator, consumed: Consumed, prefix: str
) -> tuple[dict[str, int], int]:
    """Every frame sent on a subscribed connection is in its topic, exact and in order.
    Returns frames per channel and the number of redelivered copies."""
    per_channel: dict[str, int] = {}
    copies = 0
    for channel, market in SUBSCRIPTIONS:
        topic = f"{prefix}.bitstamp.{channel}.{market}"
        sent = sim.frames[(channel, market)]
        assert sent, topic
        records = [r for _, _, _, r in consumed.by_topic.get(topic, [])]
        seen: set[str] = set()
        first = []
        for r in records:
            ident = identity(r)
            if ident not in seen:
                seen.add(ident)
                first.append(r)
        copies += len(records) - len(first)
        if channel == "diff_order_book":
            # One REST snapshot (the connection never broke), among the diffs.
            assert [r["resync"] for r in first].count(True) == 1, topic
            first = [r for r in first if not r["resync"]]
        live = [r for r in first if not r.get("backfilled", False)]
        assert len(live) == len(first), f"{topic}: REST copies stand in for live frames"
        want = [expected_record(channel, f) for f in sent]
        got = [{k: r[k] for k in w} for r, w in zip(live, want, strict=False)]
        assert len(live) == len(want), f"{topic}: {len(want)} frames sent, {len(live)} in Kafka"
        assert got == want, topic
        per_channel[channel] = per_channel.get(channel, 0) + len(sent)
    return per_channel, copies


async def published(conn: Running) -> float:
    text = await conn.metrics()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("connector_events_published_total{") and 'exchange="bitstamp"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_a_40_s_kafka_outage_with_default_settings_loses_nothing(
    topic_prefix: str, tmp_path: Path
) -> None:
    link_port = free_port()
    embedded = EmbeddedBroker(advertised_port=link_port)
    embedded.start()
    link = FaultyLink(embedded.port, link_port)
    await link.restore()
    broker = Broker(embedded.bootstrap, "embedded")
    # 13 subscriptions x 15 events/s ~ 200 frames/s, for 45 s.
    sim = Simulator(markets=MARKETS, rate=15, events_per_subscription=675, record=True)
    await sim.start()
    env = {
        # Only what points the connector at this test's exchange and broker; everything
        # else is the default (the spool's default place is under XDG_STATE_HOME).
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "CONNECTOR_KAFKA_ENABLE_IDEMPOTENCE": "false",
        "BITSTAMP_WS_URL": sim.ws_url,
        "BITSTAMP_REST_URL": sim.rest_url,
        "CONNECTOR_MARKETS": ",".join(MARKETS),
        "CONNECTOR_CHANNELS": ",".join(CHANNELS),
        "CONNECTOR_TOPIC_TEMPLATE": topic_prefix + ".{exchange}.{channel}.{market}",
        "CONNECTOR_STATUS_TOPIC_TEMPLATE": topic_prefix + ".{exchange}.status",
        "CONNECTOR_DLQ_TOPIC_TEMPLATE": topic_prefix + ".{exchange}.dlq",
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    try:
        async with connector_process(env, tmp_path) as conn:
            async with asyncio.timeout(30):
                while sum(sim.sent.values()) < 600 or await _published_or_0(conn) < 500:
                    await asyncio.sleep(0.2)
            log_before = len(conn.log().splitlines())
            await link.cut()
            cut_at = time.monotonic()
            await asyncio.sleep(40)
            await link.restore()
            sent_in_outage = sum(sim.sent.values())
            async with asyncio.timeout(120):
                while sum(sim.sent.values()) < 675 * len(SUBSCRIPTIONS):
                    await asyncio.sleep(0.5)
                while not await drained(conn):
                    await asyncio.sleep(0.5)
            caught_up_s = time.monotonic() - cut_at - 40
            outage_lines = conn.log().splitlines()[log_before:]
            text = await conn.metrics()
            assert await conn.stop() == 0, conn.log()[-3000:]
        consumed = await consume_until(broker.bootstrap, rf"^{topic_prefix}\..*", 10**9, idle_s=4)
    finally:
        await sim.stop()
        await link.cut()
        embedded.stop()
    per_channel, copies = check_every_frame_exact(sim, consumed, topic_prefix)
    assert consumed.by_topic.get(f"{topic_prefix}.bitstamp.status", []) == [], "a gap"
    for name in ("connector_gaps_total{", "connector_events_undelivered_total "):
        assert metric_value(text, name) in (None, 0.0), name
    assert len(outage_lines) < 20, "\n".join(outage_lines)
    assert any("Kafka unreachable" in line for line in outage_lines), outage_lines
    assert any("Kafka restored" in line for line in outage_lines), outage_lines
    print(
        f"Kafka cut 40 s at 200 frames/s, default settings: {sum(per_channel.values())} frames "
        f"({per_channel}), {sent_in_outage} sent by the end of the cut, all in Kafka exact; "
        f"{copies} redelivered copies; caught up {caught_up_s:.1f}s after the restore; "
        f"{len(outage_lines)} log lines: " + " | ".join(outage_lines)
    )


async def _published_or_0(conn: Running) -> float:
    try:
        return await published(conn)
    except httpx.TransportError:
        return 0.0  # not serving yet


async def drained(conn: Running) -> bool:
    """Nothing left to deliver: no record unacknowledged, none waiting in the spool."""
    text = await conn.metrics()
    return all(
        metric_value(text, name) in (None, 0.0)
        for name in ("connector_kafka_in_flight_records ", "connector_spool_records ")
    )


async def test_a_broker_refusing_idempotent_producers_is_named_once_with_the_fix(
    tmp_path: Path,
) -> None:
    """Tansu (like some Kafka-compatible brokers) answers InitProducerId with an error. An
    external broker means idempotence on by default: the connector says what failed and
    which setting fixes it, once, and keeps retrying."""
    embedded = EmbeddedBroker()
    embedded.start()
    sim = Simulator(markets=("btcusd",), rate=1)
    await sim.start()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": embedded.bootstrap,  # idempotence: the default (on)
        "BITSTAMP_WS_URL": sim.ws_url,
        "BITSTAMP_REST_URL": sim.rest_url,
        "CONNECTOR_MARKETS": "btcusd",
        "CONNECTOR_CHANNELS": "live_trades",
        "CONNECTOR_RECONNECT_BACKOFF_MAX_S": "1",
    }
    try:
        async with connector_process(env, tmp_path) as conn:
            async with asyncio.timeout(30):
                while conn.log().count("connecting the producer failed again") < 2:
                    assert conn.proc.returncode is None, conn.log()[-2000:]
                    await asyncio.sleep(0.2)
            async with httpx.AsyncClient() as client:
                ready = await client.get(f"http://127.0.0.1:{conn.http_port}/readyz", timeout=5)
            assert conn.proc.returncode is None  # still retrying
            assert await conn.stop() == 0
            log = conn.log()
    finally:
        await sim.stop()
        embedded.stop()
    assert ready.status_code == 503
    assert log.count("CONNECTOR_KAFKA_ENABLE_IDEMPOTENCE=false") == 1, log[-3000:]
    assert "the Kafka broker refused an idempotent producer (InitProducerId answered" in log
    print([line for line in log.splitlines() if "producer" in line and "failed" in line][:3])
