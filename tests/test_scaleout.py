"""Scale-out and failover: several connector processes share the subscriptions through a
consumer group on a real broker (the embedded one rebalances in about 5 s)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from connector.exchanges.bitstamp.protocol import CHANNELS, plan_subscriptions
from connector.exchanges.bitstamp.simulator import Simulator
from tests.conftest import Broker
from tests.harness import Running, connector_process, consume_until
from tests.test_resilience import check_trades_complete, env_for

pytestmark = pytest.mark.integration

MARKETS = ("btcusd", "ethusd", "btcusd-perp")
SUBS = {f"bitstamp:{c}:{m}" for c, m in plan_subscriptions(list(MARKETS), list(CHANNELS))[0]}


async def ownership(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        while batch := await consumer.getmany(timeout_ms=1000):
            for msgs in batch.values():
                out.extend(orjson.loads(m.value) for m in msgs)
    finally:
        await consumer.stop()
    return sorted(out, key=lambda r: r["ts_us"])


def owners(records: list[dict[str, Any]], dead: frozenset[str] = frozenset()) -> dict[str, str]:
    """subscription → current owner; asserts nobody acquired a subscription another live
    replica held (a replica in ``dead`` was killed: it never released)."""
    held: dict[str, str] = {}
    for r in records:
        sub, replica = r["subscription"], r["replica"]
        if r["event"] == "acquired":
            prior = held.get(sub)
            assert prior is None or prior in dead, f"{sub} owned by {prior} and {replica}"
            held[sub] = replica
        elif held.get(sub) == replica:
            del held[sub]
    return held


async def until_owned(
    bootstrap: str,
    topic: str,
    replicas: int,
    within: float = 60,
    dead: frozenset[str] = frozenset(),
) -> dict[str, str]:
    async with asyncio.timeout(within):
        while True:
            held = owners(await ownership(bootstrap, topic), dead)
            if (
                set(held) == SUBS
                and all(r not in dead for r in held.values())
                and len(set(held.values())) == replicas
            ):
                return held
            await asyncio.sleep(1)


async def joined(replicas: list[Running], within: float = 60) -> None:
    """Until every replica joined (reading the assignment topic earlier would have the
    embedded broker auto-create it with its own partition count)."""
    async with asyncio.timeout(within):
        while not all("replica " in r.log() and " joined " in r.log() for r in replicas):
            for r in replicas:
                assert r.proc.returncode is None, r.log()[-2000:]
            await asyncio.sleep(0.2)


def group_env(broker: Broker, sim: Simulator, prefix: str) -> dict[str, str]:
    return env_for(
        broker,
        sim,
        prefix,
        ",".join(CHANNELS),
        CONNECTOR_MARKETS=",".join(MARKETS),
        CONNECTOR_GROUP_ID=f"{prefix}-group",
        CONNECTOR_ASSIGNMENT_PARTITIONS="64",
        CONNECTOR_GROUP_SESSION_TIMEOUT_MS="6000",
    )


async def test_three_replicas_own_each_subscription_once_and_survive_a_sigkill(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    sim = Simulator(markets=MARKETS, rate=5, record=True, idle_trade_rate=5)
    await sim.start()
    env = group_env(broker, sim, topic_prefix)
    topic = f"{topic_prefix}-group.assignments"
    try:
        async with AsyncExitStack() as stack:
            replicas: list[Running] = [
                await stack.enter_async_context(connector_process(env, tmp_path / f"r{i}"))
                for i in range(3)
            ]
            await joined(replicas)
            held = await until_owned(broker.bootstrap, topic, 3, within=90)
            assert set(held) == SUBS  # each subscription owned by exactly one replica
            await asyncio.sleep(3)
            victim_id = next(iter(held.values()))
            victim = next(r for r in replicas if victim_id.split("-")[-2] == str(r.proc.pid))
            moved = {s for s, r in held.items() if r == victim_id}
            t_kill = time.monotonic()
            assert await victim.kill() == -9
            after = await until_owned(
                broker.bootstrap, topic, 2, within=60, dead=frozenset({victim_id})
            )
            failover_s = time.monotonic() - t_kill
            assert set(after) == SUBS and victim_id not in after.values()
            await asyncio.sleep(3)
            for r in replicas:
                if r is not victim:
                    assert await r.stop() == 0
        consumed = await consume_until(
            broker.bootstrap,
            rf"^{topic_prefix}\.bitstamp\.(live_trades\..*|status)$",
            10**9,
            idle_s=3,
        )
    finally:
        await sim.stop()
    for market in MARKETS:
        trades = [
            r for _, _, _, r in consumed.by_topic[f"{topic_prefix}.bitstamp.live_trades.{market}"]
        ]
        check_trades_complete(sim, trades, market=market)
    statuses = [r for _, _, _, r in consumed.by_topic[f"{topic_prefix}.bitstamp.status"]]
    rebalance = {
        f"bitstamp:{s['channel']}:{s['market']}" for s in statuses if s["reason"] == "rebalance"
    }
    assert moved <= rebalance  # every subscription that moved has its gap marked
    print(
        f"3 replicas: {len(SUBS)} subscriptions owned once each; SIGKILL of one moved "
        f"{len(moved)} in {failover_s:.1f}s (session timeout 6 s); trades complete"
    )


async def test_scaling_from_one_to_three_and_back_loses_nothing(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    sim = Simulator(markets=MARKETS, rate=10, record=True, idle_trade_rate=10)
    await sim.start()
    env = group_env(broker, sim, topic_prefix)
    topic = f"{topic_prefix}-group.assignments"
    try:
        async with connector_process(env, tmp_path / "first") as first:
            await joined([first])
            await until_owned(broker.bootstrap, topic, 1)
            t0 = time.monotonic()
            async with AsyncExitStack() as stack:
                more = [
                    await stack.enter_async_context(connector_process(env, tmp_path / f"r{i}"))
                    for i in (2, 3)
                ]
                await joined(more)
                await until_owned(broker.bootstrap, topic, 3)
                up_s = time.monotonic() - t0
                await asyncio.sleep(3)
                t1 = time.monotonic()
                for r in more:
                    assert await r.stop() == 0  # SIGTERM: release, drain, leave the group
            held = await until_owned(broker.bootstrap, topic, 1)
            down_s = time.monotonic() - t1
            assert set(held) == SUBS
            await asyncio.sleep(3)
            assert await first.stop() == 0
        records = await ownership(broker.bootstrap, topic)
        consumed = await consume_until(
            broker.bootstrap,
            rf"^{topic_prefix}\.bitstamp\.(live_trades\..*|live_orders\..*)$",
            10**9,
            idle_s=3,
        )
    finally:
        await sim.stop()
    owners(records)  # never two live owners of one subscription
    moves = sum(1 for r in records if r["event"] == "released")
    assert moves > 0
    for market in MARKETS:
        trades = [
            r for _, _, _, r in consumed.by_topic[f"{topic_prefix}.bitstamp.live_trades.{market}"]
        ]
        check_trades_complete(sim, trades, market=market)
        orders = [
            r["exchange_ts_us"]
            for _, _, _, r in consumed.by_topic[f"{topic_prefix}.bitstamp.live_orders.{market}"]
        ]
        assert len(orders) == len(set(orders)), f"{market}: an order event published twice"
    print(
        f"scale 1→3 in {up_s:.1f}s and 3→1 in {down_s:.1f}s: {moves} clean releases, "
        "no subscription owned twice, trades complete, no order event twice"
    )


async def test_worker_processes_share_the_subscriptions(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    """CONNECTOR_WORKERS=3: one command, three processes in the group; a worker killed is
    restarted and its subscriptions come back; SIGTERM to the parent drains them all."""
    sim = Simulator(markets=MARKETS, rate=5, record=True, idle_trade_rate=5)
    await sim.start()
    env = {**group_env(broker, sim, topic_prefix), "CONNECTOR_WORKERS": "3"}
    topic = f"{topic_prefix}-group.assignments"
    try:
        async with connector_process(env, tmp_path) as parent:
            async with asyncio.timeout(60):
                while parent.log().count(" joined (topic") < 3:
                    assert parent.proc.returncode is None, parent.log()[-2000:]
                    await asyncio.sleep(0.2)
            held = await until_owned(broker.bootstrap, topic, 3)
            pids = {int(r.split("-")[-2]) for r in held.values()}
            assert parent.proc.pid not in pids and len(pids) == 3  # the children run them
            victim = next(iter(pids))
            os.kill(victim, signal.SIGKILL)
            async with asyncio.timeout(60):
                while "worker" not in parent.log() or "restarting" not in parent.log():
                    await asyncio.sleep(0.2)
            dead = frozenset(r for r in held.values() if int(r.split("-")[-2]) == victim)
            await until_owned(broker.bootstrap, topic, 3, within=90, dead=dead)
            assert await parent.stop() == 0
            log = parent.log()
        consumed = await consume_until(
            broker.bootstrap, rf"^{topic_prefix}\.bitstamp\.live_trades\..*", 10**9, idle_s=3
        )
    finally:
        await sim.stop()
    assert log.count("unsubscription(s) confirmed; drained") >= 3  # every worker drained
    for market in MARKETS:
        trades = [
            r for _, _, _, r in consumed.by_topic[f"{topic_prefix}.bitstamp.live_trades.{market}"]
        ]
        check_trades_complete(sim, trades, market=market)
    print("3 worker processes: subscriptions shared, a killed worker restarted, trades complete")
