"""Live trades that arrive while a gap's backfill is fetched: each is published from its
live frame (exact texts, microtimestamp), never replaced by its REST copy; REST fills in
only what no connection received, in trade order. Real process, real broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.exchanges.bitstamp.simulator import Simulator
from tests.conftest import Broker
from tests.harness import connector_process, consume_until
from tests.test_end_to_end import expected_record
from tests.test_resilience import env_for, metric, wait_metric

pytestmark = pytest.mark.integration


async def test_trades_received_live_during_the_backfill_keep_their_live_frame(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    sim = Simulator(markets=("btcusd",), rate=20, record=True, idle_trade_rate=20)
    await sim.start()
    env = env_for(broker, sim, topic_prefix, "live_trades")
    published = 'connector_events_published_total{channel="live_trades"'
    try:
        async with connector_process(env, tmp_path) as conn:
            await wait_metric(conn, published, 20)
            sim.rest_delay = 1.5  # ~30 live trades arrive before the backfill's answer
            await sim.fault("drop")
            await wait_metric(conn, 'connector_gaps_total{channel="live_trades"', 1)
            now = await metric(conn, published)
            await wait_metric(conn, published, now + 20)
            assert await conn.stop() == 0, conn.log()[-3000:]
        consumed = await consume_until(broker.bootstrap, rf"^{topic_prefix}\..*", 10**9, idle_s=3)
    finally:
        await sim.stop()
    records = [r for _, _, _, r in consumed.by_topic[f"{topic_prefix}.bitstamp.live_trades.btcusd"]]
    ids = [int(r["trade_id"]) for r in records]
    assert ids == sorted(set(ids)), "trade order broken, or a trade published twice"
    by_id = {r["trade_id"]: r for r in records}
    frames = sim.frames[("live_trades", "btcusd")]
    on_new = [
        f
        for f, to in zip(frames, sim.delivered_to[("live_trades", "btcusd")], strict=True)
        if 2 in to
    ]
    assert len(on_new) > 20
    for frame in on_new:  # every trade the new connection received: its live frame
        record = by_id[frame["data"]["id_str"]]
        want = expected_record("live_trades", frame)
        assert {k: record[k] for k in want} == want
        assert record["backfilled"] is False
    made = {f["data"]["id_str"] for f in frames} | set(sim.unsent_trades["btcusd"])
    assert {i for i in made if ids[0] <= int(i) <= ids[-1]} == set(by_id)  # none missing
    backfilled = [r for r in records if r["backfilled"]]
    assert backfilled, "the gap had trades only REST could give"
    print(
        f"{len(on_new)} trades received live on the new connection, all from their live "
        f"frames; {len(backfilled)} backfilled from REST; {len(records)} in order, once"
    )
