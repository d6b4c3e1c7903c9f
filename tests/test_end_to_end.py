"""connector simulate → connector run (a real process) → a real broker → a consumer.

Asserts what a downstream user cares about: every event the server sent arrives, once,
decodable with schemas/, equal field by field to what the exchange sent, in order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from connector.exchanges.bitstamp.simulator import Simulator
from tests.conftest import Broker
from tests.fake_registry import FakeRegistry
from tests.harness import Consumed, connector_process, consume_until, metric_value, run_cli

pytestmark = pytest.mark.integration

MARKETS = ("btcusd", "btcusd-perp", "ethusd-perp", "solusd-perp")
CHANNELS = (
    "live_trades",
    "live_orders",
    "order_book",
    "detail_order_book",
    "diff_order_book",
    "funding_rate",
)
SIDE = {0: "BUY", 1: "SELL"}


def expected_subscriptions() -> list[tuple[str, str]]:
    return [
        (c, m)
        for m in MARKETS
        for c in CHANNELS
        if not (c == "funding_rate" and not m.endswith("-perp"))
    ]


def levels(raw: list[list[str]]) -> list[dict[str, Any]]:
    return [
        {"price": lv[0], "amount": lv[1], "order_id": lv[2] if len(lv) > 2 else None} for lv in raw
    ]


def expected_record(channel: str, frame: dict[str, Any]) -> dict[str, Any]:
    """What the record must hold, written from the Bitstamp frame independently."""
    d = frame["data"]
    if channel == "live_trades":
        return {
            "trade_id": d["id_str"],
            "price": d["price_str"],
            "amount": d["amount_str"],
            "side": SIDE[d["type"]],
            "buy_order_id": str(d["buy_order_id"]),
            "sell_order_id": str(d["sell_order_id"]),
            "exchange_ts_us": int(d["microtimestamp"]),
            "extra": {},
        }
    if channel == "live_orders":
        kind = {"order_created": "CREATED", "order_changed": "CHANGED", "order_deleted": "DELETED"}[
            frame["event"]
        ]
        return {
            "event_type": kind,
            "order_id": d["id_str"],
            "side": SIDE[d["order_type"]],
            "price": d["price_str"],
            "amount": d["amount_str"],
            "amount_at_create": d["amount_at_create"],
            "amount_traded": d["amount_traded"],
            "order_subtype": d["order_subtype"],
            "is_liquidation": d["is_liquidation"],
            "datetime_raw": d["datetime"],
            "event_id": d["event_id"],
            "pre_event_id": d["pre_event_id"],
            "order_source": d["order_source"],
            "exchange_ts_us": int(d["microtimestamp"]),
            "extra": {},
        }
    if channel in ("order_book", "detail_order_book", "diff_order_book"):
        return {
            "bids": levels(d["bids"]),
            "asks": levels(d["asks"]),
            "exchange_ts_us": int(d["microtimestamp"]),
            "exchange_sequence": None,
        }
    assert channel == "funding_rate"
    return {
        "funding_rate": d["funding_rate"],
        "mark_price": d["mark_price"],
        "index_price": d["index_price"],
        "exchange_ts_us": int(d["timestamp"]) * 1000,
        "exchange_ts_raw": d["timestamp"],
        "next_funding_time_us": int(d["next_funding_time"]) * 1000,
        "extra": {},
    }


SCHEMA_OF = {
    "live_trades": "connector.Trade",
    "live_orders": "connector.OrderEvent",
    "order_book": "connector.BookSnapshot",
    "diff_order_book": "connector.BookDelta",
    "detail_order_book": "connector.BookSnapshot",
    "funding_rate": "connector.FundingRate",
}


def check_everything_delivered(
    sim: Simulator, consumed: Consumed, prefix: str
) -> dict[str, tuple[int, int]]:
    """Per channel.market: (sent, delivered). Everything sent is delivered, exactly and
    in order; each diff topic also holds one REST snapshot, after the diffs it holds."""
    report = {}
    for channel, market in expected_subscriptions():
        topic = f"{prefix}.bitstamp.{channel}.{market}"
        sent = sim.frames[(channel, market)]
        got = consumed.by_topic.get(topic, [])
        assert len(sent) == sim.sent[(channel, market)] > 0, topic
        if channel == "diff_order_book":
            # One REST snapshot, after the diffs it supersedes (received before it was
            # published) and before every newer one: every diff received is there.
            (at,) = [i for i, (_, _, _, r) in enumerate(got) if r["resync"]]
            _, _, schema, snapshot = got[at]
            assert schema == "connector.BookDelta"
            assert snapshot["sequence"] == 0
            assert 0 < len(snapshot["bids"]) <= 100 and 0 < len(snapshot["asks"]) <= 100
            cutoff = snapshot["exchange_ts_us"]
            assert all(r["exchange_ts_us"] <= cutoff for _, _, _, r in got[:at])
            assert all(r["exchange_ts_us"] > cutoff for _, _, _, r in got[at + 1 :])
            got = got[:at] + got[at + 1 :]
        expected_frames = sent
        report[f"{channel}.{market}"] = (len(sent), len(got))
        assert len(got) == len(expected_frames), topic
        last_seq: dict[str, int] = {}
        for i, (frame, (key, headers, schema, record)) in enumerate(
            zip(expected_frames, got, strict=True)
        ):
            assert key == market.encode()
            assert headers["schema"] == SCHEMA_OF[channel].encode()
            assert schema == SCHEMA_OF[channel]
            assert headers["content-type"] in (
                b"application/avro; format=single-object",
                b"application/vnd.confluent.avro",
            )
            assert (record["exchange"], record["channel"], record["market"]) == (
                "bitstamp",
                channel,
                market,
            )
            want = expected_record(channel, frame)
            assert {k: record[k] for k in want} == want, topic
            if channel in ("order_book", "detail_order_book"):
                assert record["resync"] is (i == 0)  # the first full book after subscribing
            if channel == "live_trades":
                assert record["backfilled"] is False
            # per-connection sequence strictly increases within a topic: order kept
            cid = record["connection_id"]
            assert record["sequence"] > last_seq.get(cid, 0)
            last_seq[cid] = record["sequence"]
            assert record["receive_ts_us"] >= record["exchange_ts_us"] - 60_000_000
    return report


@pytest.mark.parametrize("registry", [False, True], ids=["single-object", "confluent"])
async def test_every_sent_event_arrives_exact_and_in_order(
    broker: Broker, topic_prefix: str, tmp_path: Path, registry: bool
) -> None:
    per_sub = 40
    sim = Simulator(markets=MARKETS, rate=40, events_per_subscription=per_sub, record=True)
    await sim.start()
    env = {
        **broker.env(),
        "BITSTAMP_WS_URL": sim.ws_url,
        "BITSTAMP_REST_URL": sim.rest_url,
        "CONNECTOR_MARKETS": ",".join(MARKETS),
        "CONNECTOR_CHANNELS": ",".join(CHANNELS),
        "CONNECTOR_TOPIC_TEMPLATE": topic_prefix + ".{exchange}.{channel}.{market}",
    }
    fake = FakeRegistry().__enter__() if registry else None
    if fake:
        env["SCHEMA_REGISTRY_URL"] = fake.url
    sent_total = per_sub * len(expected_subscriptions())
    registry_url = fake.url if fake else None
    try:
        async with connector_process(env, tmp_path) as conn:
            async with asyncio.timeout(60):
                while sum(sim.sent.values()) < sent_total:
                    await asyncio.sleep(0.2)
            consumed = await consume_until(
                broker.bootstrap,
                rf"^{topic_prefix}\..*",
                10**9,
                registry_url=registry_url,
                idle_s=4,
            )
            metrics = await conn.metrics()
            assert await conn.stop() == 0, conn.log()[-3000:]
            log = conn.log()
        # Nothing beyond that is there after shutdown (no duplicates).
        again = await consume_until(
            broker.bootstrap, rf"^{topic_prefix}\..*", 10**9, registry_url=registry_url, idle_s=3
        )
        assert again.total == consumed.total
        # `connector tail` prints the same events, decoded, as JSON lines.
        tail = await run_tail(
            broker, rf"^{topic_prefix}\.bitstamp\.live_trades\..*", fake.url if fake else None
        )
    finally:
        await sim.stop()
        if fake:
            fake.__exit__(None, None, None)
    report = check_everything_delivered(sim, consumed, topic_prefix)
    mode = "confluent" if registry else "single-object"
    print(f"sent vs delivered per channel.market ({mode}):", report)
    assert all(sent == delivered for sent, delivered in report.values()), report
    # no diff came after the snapshot that supersedes it
    assert metric_value(metrics, "connector_stale_diffs_discarded_total{") in (None, 0.0)
    assert f"{consumed.total} delivered, 0 failed, 0 undelivered" in log
    assert "not subscribing funding_rate_btcusd" in log
    assert (
        'connector_events_published_total{channel="live_trades",exchange="bitstamp",'
        'market="btcusd"} 40.0' in metrics
    )
    if fake:
        assert f"{topic_prefix}.bitstamp.live_trades.btcusd-value" in fake.subjects
    assert len(tail) == per_sub * len(MARKETS)
    assert {line["schema"] for line in tail} == {"connector.Trade"}
    sent_ids = {f["data"]["id_str"] for m in MARKETS for f in sim.frames[("live_trades", m)]}
    assert {line["value"]["trade_id"] for line in tail} == sent_ids


async def run_tail(broker: Broker, pattern: str, registry_url: str | None) -> list[dict[str, Any]]:
    env = {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap}
    if registry_url:
        env["SCHEMA_REGISTRY_URL"] = registry_url
    out = await run_cli("tail", pattern, "--from-beginning", "--idle-timeout", "5", env=env)
    return [orjson.loads(line) for line in out.splitlines()]


async def test_bad_frames_are_counted_and_reconnect_requests_honoured(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    sim = Simulator(markets=("btcusd",), rate=20, record=True)
    await sim.start()
    env = {
        **broker.env(),
        "BITSTAMP_WS_URL": sim.ws_url,
        "CONNECTOR_MARKETS": "btcusd",
        "CONNECTOR_CHANNELS": "live_trades",
        "CONNECTOR_TOPIC_TEMPLATE": topic_prefix + ".{exchange}.{channel}.{market}",
    }
    topic = f"{topic_prefix}.bitstamp.live_trades.btcusd"
    try:
        async with connector_process(env, tmp_path) as conn:
            first = await consume_until(broker.bootstrap, rf"^{topic}$", 20)
            assert first.total >= 20, conn.log()[-3000:]
            assert await sim.fault("garbage") == 1
            await asyncio.sleep(0.5)
            assert await sim.fault("request_reconnect") == 1
            await asyncio.sleep(2)
            before = sim.sent[("live_trades", "btcusd")]
            later = await consume_until(broker.bootstrap, rf"^{topic}$", before + 20)
            metrics = await conn.metrics()
            assert await conn.stop() == 0
            log = conn.log()
    finally:
        await sim.stop()
    assert later.total >= before + 20  # the stream goes on after bad frames and a reconnect
    for reason in ("invalid_json", "unknown_event"):
        assert (
            f'connector_frames_invalid_total{{exchange="bitstamp",reason="{reason}"}}' in metrics
        ), metrics
    assert (
        'connector_handovers_total{exchange="bitstamp",outcome="switched",'
        'reason="request_reconnect"} 1.0' in metrics
    ), metrics
    assert "connector_reconnects_total{" not in metrics  # make-before-break: no reconnect
    assert "invalid frame #1 skipped (invalid_json" in log
    assert "the exchange asked us to reconnect" in log
    records = [r for _, _, _, r in later.by_topic[topic]]
    assert len({r["connection_id"] for r in records}) == 2  # a new connection after the request
    ids = [int(r["trade_id"]) for r in records]
    assert ids == sorted(set(ids))  # the overlap of the two connections published once
    assert sim.subscribe_requests == 2  # resubscribed on the new connection
