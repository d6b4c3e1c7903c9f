"""The exchange-side fault scenarios (docs/architecture.md), proved per frame on a real broker.

For each fault (an abrupt TCP drop, a half-open stall caught by the heartbeat deadline, a
clean close, ``bts:request_reconnect`` handed over make-before-break, a feed gone silent
and resubscribed alone), with three markets
and five channels at ~200 frames/s:
- every frame the simulated exchange wrote to a subscribed connection is in Kafka with
  its exact texts, once, in order (a live trade never replaced by its REST copy, a diff
  older than a resync snapshot never dropped);
- every trade no connection received is backfilled from REST, in trade order;
- the book rebuilt from the diff topic by the consumer contract (``BookBuilder``, and the
  ``connector book`` command) equals the exchange's.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from connector.consumer import BookBuilder
from connector.exchanges.bitstamp.simulator import Simulator
from tests.conftest import Broker
from tests.harness import Consumed, connector_process, consume_until, run_cli
from tests.test_end_to_end import expected_record
from tests.test_resilience import env_for, wait_metric

pytestmark = pytest.mark.integration

MARKETS = ("btcusd", "ethusd", "btcusd-perp")
CHANNELS = ("live_trades", "live_orders", "order_book", "diff_order_book", "funding_rate")
SUBSCRIPTIONS = [
    (c, m) for m in MARKETS for c in CHANNELS if c != "funding_rate" or m.endswith("-perp")
]
PER_SUB = 300  # frames per subscription: ~20 s at 15/s
BOOK_DEPTH = 20


def exchange_book(sim: Simulator, market: str) -> tuple[list[tuple[str, str]], ...]:
    bids, asks = sim._gen(market).rest_book(BOOK_DEPTH)
    return [(p, a) for p, a in bids], [(p, a) for p, a in asks]


async def connector_book(broker: Broker, topic: str) -> dict[str, Any]:
    """``connector book TOPIC --once``: the book a consumer rebuilds, as the CLI prints it."""
    out = await run_cli(
        "book",
        topic,
        "--once",
        "--depth",
        str(BOOK_DEPTH),
        "--idle-timeout",
        "2",
        env={"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap},
        timeout=60,
    )
    return json.loads(out.decode().splitlines()[-1])


def check(sim: Simulator, consumed: Consumed, prefix: str) -> dict[str, int]:
    """Asserts the three promises; returns counts for the report."""
    report = {"frames": 0, "backfilled": 0, "resyncs": 0}
    for channel, market in SUBSCRIPTIONS:
        topic = f"{prefix}.bitstamp.{channel}.{market}"
        records = [r for _, _, _, r in consumed.by_topic.get(topic, [])]
        sent = sim.frames[(channel, market)]
        assert len(sent) == PER_SUB, topic
        if channel == "diff_order_book":
            resyncs = [r for r in records if r["resync"]]
            assert resyncs, topic
            report["resyncs"] += len(resyncs)
            builder = BookBuilder()
            for r in records:
                builder.apply(r)
            assert builder.top(BOOK_DEPTH) == exchange_book(sim, market), f"{topic}: books differ"
            records = [r for r in records if not r["resync"]]
        if channel == "live_trades":
            ids = [int(r["trade_id"]) for r in records]
            assert ids == sorted(set(ids)), f"{topic}: order broken or a trade twice"
            made = {f["data"]["id_str"] for f in sent} | set(sim.unsent_trades[market])
            assert {int(i) for i in made if ids[0] <= int(i) <= ids[-1]} == set(ids), topic
            backfilled = [r for r in records if r["backfilled"]]
            assert {r["trade_id"] for r in backfilled} <= set(sim.unsent_trades[market])
            report["backfilled"] += len(backfilled)
            records = [r for r in records if not r["backfilled"]]
        want = [expected_record(channel, f) for f in sent]
        assert len(records) == len(want), f"{topic}: {len(want)} frames sent, {len(records)}"
        assert [{k: r[k] for k in w} for r, w in zip(records, want, strict=True)] == want, topic
        report["frames"] += len(sent)
    return report


@pytest.mark.parametrize("fault", ["drop", "stall", "close", "request_reconnect", "stale"])
async def test_every_frame_received_is_in_kafka_exact_through_a_fault(
    broker: Broker, topic_prefix: str, tmp_path: Path, fault: str
) -> None:
    sim = Simulator(
        markets=MARKETS,
        rate=15,
        events_per_subscription=PER_SUB,
        record=True,
        book_depth=BOOK_DEPTH,
        idle_trade_rate=15,
    )
    await sim.start()
    env = env_for(
        broker,
        sim,
        topic_prefix,
        ",".join(CHANNELS),
        CONNECTOR_MARKETS=",".join(MARKETS),
        CONNECTOR_HEARTBEAT_INTERVAL_S="1",
        CONNECTOR_HEARTBEAT_TIMEOUT_S="1",
        CONNECTOR_STALE_AFTER_S='{"diff_order_book": 2}',
    )
    published = 'connector_events_published_total{channel="live_trades"'
    try:
        async with connector_process(env, tmp_path) as conn:
            await wait_metric(conn, published, 60)
            if fault == "drop":
                # Nothing is in flight when the link dies (a frame the exchange wrote
                # but the kernel discarded with the connection was never received).
                await sim.fault("stall")
                await asyncio.sleep(0.3)
                await sim.fault("drop")
            elif fault == "request_reconnect":
                await sim.fault("request_reconnect", close_after=5)
            elif fault == "stale":  # one feed goes silent; resubscribed alone, it resumes
                await sim.fault("mute", channel="diff_order_book_ethusd")
            else:
                await sim.fault(fault)
            async with asyncio.timeout(90):
                while sum(sim.sent.values()) < PER_SUB * len(SUBSCRIPTIONS):
                    await asyncio.sleep(0.5)
            await asyncio.sleep(1)  # the last frames' way to Kafka
            assert await conn.stop() == 0, conn.log()[-3000:]
        consumed = await consume_until(broker.bootstrap, rf"^{topic_prefix}\..*", 10**9, idle_s=3)
    finally:
        await sim.stop()
    report = check(sim, consumed, topic_prefix)
    # The CLI a consumer would run rebuilds the same book, level by level.
    printed = await connector_book(broker, f"{topic_prefix}.bitstamp.diff_order_book.ethusd")
    bids, asks = exchange_book(sim, "ethusd")
    assert printed["ready"] and printed["bids"] == [list(lv) for lv in bids], printed
    assert printed["asks"] == [list(lv) for lv in asks], printed
    statuses = [r for _, _, _, r in consumed.by_topic.get(f"{topic_prefix}.bitstamp.status", [])]
    if fault == "request_reconnect":
        assert statuses == []  # make-before-break: no gap
    elif fault == "stale":
        # The muted feed first; once every stream has sent its last frame, silent feeds
        # go stale too (diffs after 2 s here), each resubscribed and resynced.
        got = [(s["channel"], s["market"], s["reason"]) for s in statuses]
        assert got[0] == ("diff_order_book", "ethusd", "stale"), got
        assert {r for _, _, r in got} == {"stale"}, got
    else:
        assert {s["channel"] for s in statuses} == set(CHANNELS)
    print(
        f"{fault}: {report['frames']} frames sent = in Kafka exact and in order; "
        f"{report['backfilled']} trades backfilled (never received); "
        f"{report['resyncs']} book resyncs; books rebuilt = the exchange's; "
        f"{len(statuses)} status records"
    )
