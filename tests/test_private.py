"""Private channels: the v2 request signature (vectors computed here, independently of
the code under test), and the token flow end to end against the project's Bitstamp
server, which checks signatures and tokens like the real one."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from pathlib import Path

import pytest

from connector.exchanges.bitstamp.protocol import channel_name, plan_subscriptions, split_channel
from connector.exchanges.bitstamp.rest import sign_v2
from connector.exchanges.bitstamp.simulator import Simulator
from tests.conftest import Broker
from tests.harness import connector_process, consume_until
from tests.test_resilience import env_for, metric, wait_metric


def test_signature_matches_bitstamp_v2_recipe() -> None:
    # The recipe of Bitstamp's API documentation, spelled out by hand.
    key, secret = "abcKEY123", "s3cr3t-SECRET"
    nonce, stamp = "5f2b0b0e-6c3f-4d0e-9a55-0d9b3c1a2b3c", "1700000000123"
    message = (
        "BITSTAMP abcKEY123"
        "POST"
        "www.bitstamp.net"
        "/api/v2/websockets_token/"
        ""  # no query
        ""  # no body, so no content type
        "5f2b0b0e-6c3f-4d0e-9a55-0d9b3c1a2b3c"
        "1700000000123"
        "v2"
        ""  # empty body
    )
    expected = hmac.new(b"s3cr3t-SECRET", message.encode(), hashlib.sha256).hexdigest()
    got = sign_v2(
        key,
        secret,
        "POST",
        "www.bitstamp.net",
        "/api/v2/websockets_token/",
        "",
        "",
        nonce,
        stamp,
        "",
    )
    assert got == expected
    # With a body the content type is part of the message.
    body, ctype = "offset=1", "application/x-www-form-urlencoded"
    message = (
        f"BITSTAMP {key}POSTwww.bitstamp.net/api/v2/user_transactions/{ctype}{nonce}{stamp}v2{body}"
    )
    expected = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    assert (
        sign_v2(
            key,
            secret,
            "POST",
            "www.bitstamp.net",
            "/api/v2/user_transactions/",
            "",
            ctype,
            nonce,
            stamp,
            body,
        )
        == expected
    )


def test_private_channel_names() -> None:
    subs, _ = plan_subscriptions(
        ["btcusd", "ethusd"], ["live_trades"], ["my_orders", "my_settlements"]
    )
    names = [channel_name(c, m, 4242) for c, m in subs]
    assert names == [
        "private-my_orders_btcusd-4242",
        "private-my_orders_ethusd-4242",
        "private-my_settlements-4242",
        "live_trades_btcusd",
        "live_trades_ethusd",
    ]
    assert [split_channel(n) for n in names[:3]] == [
        ("private_my_orders", "btcusd"),
        ("private_my_orders", "ethusd"),
        ("private_my_settlements", "account"),
    ]


def private_env(broker: Broker, sim: Simulator, prefix: str, secret: str) -> dict[str, str]:
    return env_for(
        broker,
        sim,
        prefix,
        "live_trades",
        CONNECTOR_PRIVATE_CHANNELS="my_orders,my_trades,live_trades,my_settlements,my_liquidations",
        BITSTAMP_API_KEY="key-1",
        BITSTAMP_API_SECRET=secret,
        BITSTAMP_USER_ID="4242",
        CONNECTOR_RESUBSCRIBE_BACKOFF_S="2",
    )


@pytest.mark.integration
async def test_private_channels_subscribe_with_fresh_tokens(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    sim = Simulator(markets=("btcusd",), rate=5, record=True, api_keys={"key-1": ("sec-1", 4242)})
    await sim.start()
    env = private_env(broker, sim, topic_prefix, "sec-1")
    orders = 'connector_events_published_total{channel="private_my_orders"'
    try:
        async with connector_process(env, tmp_path) as conn:
            await wait_metric(conn, orders, 5)
            tokens_before = sim.token_requests
            await sim.fault("drop")  # every resubscription needs a new token
            await wait_metric(conn, 'connector_gaps_total{channel="private_my_orders"', 1)
            published = await metric(conn, orders)
            await wait_metric(conn, orders, published + 5)
            assert await conn.stop() == 0
            log = conn.log()
        consumed = await consume_until(
            broker.bootstrap, rf"^{topic_prefix}\.bitstamp\.private_.*", 10**9, idle_s=3
        )
    finally:
        await sim.stop()
    assert sim.private_refused == 0
    assert tokens_before == 1 and sim.token_requests == 2  # one per (re)subscribe batch
    assert "key-1" not in log and "sec-1" not in log
    for channel, market in (
        ("private_my_orders", "btcusd"),
        ("private_my_trades", "btcusd"),
        ("private_live_trades", "btcusd"),
        ("private_my_settlements", "account"),
        ("private_my_liquidations", "account"),
    ):
        records = [
            r for _, _, _, r in consumed.by_topic[f"{topic_prefix}.bitstamp.{channel}.{market}"]
        ]
        sent = sim.frames[(channel, market)]
        assert records and len(records) <= len(sent), channel

        def ident(data: dict[str, object]) -> str:
            for key in ("id_str", "id", "position_id", "microtimestamp"):
                if key in data:
                    return str(data[key])
            raise AssertionError(data)

        by_id = {ident(f["data"]): f for f in sent}
        for r in records:
            frame = by_id[r["entity_id"] or str(r["exchange_ts_us"])]
            assert r["event"] == frame["event"]
            data = frame["data"]
            if "price" in data:  # exact text, never a float's rounding
                assert r["price"] == (data.get("price_str") or data["price"])
    orders_rec = consumed.by_topic[f"{topic_prefix}.bitstamp.private_my_orders.btcusd"][0][3]
    assert orders_rec["entity_id"] and orders_rec["side"] in ("BUY", "SELL")
    assert orders_rec["extra"]["client_order_id"].startswith("c")


@pytest.mark.integration
async def test_a_wrong_secret_is_one_clear_error_and_a_bounded_retry(
    broker: Broker, topic_prefix: str, tmp_path: Path
) -> None:
    sim = Simulator(markets=("btcusd",), rate=5, api_keys={"key-1": ("sec-1", 4242)})
    await sim.start()
    env = private_env(broker, sim, topic_prefix, "not-the-secret")
    try:
        async with connector_process(env, tmp_path) as conn:
            # public channels are unaffected
            await wait_metric(conn, 'connector_events_published_total{channel="live_trades"', 5)
            await asyncio.sleep(5)
            failures = await metric(conn, 'connector_auth_failures_total{exchange="bitstamp"}')
            assert await conn.stop() == 0
            log = conn.log()
    finally:
        await sim.stop()
    # one token request per retry round (2 s backoff) for all five private channels
    errors = [line for line in log.splitlines() if "no WebSocket token" in line]
    assert 1 <= sim.token_requests <= 5
    assert sim.token_requests - 1 <= len(errors) <= sim.token_requests  # one line per round
    assert failures >= 1  # counted (read before the last round could finish)
    assert sim.private_refused == 0  # never subscribed without a token
    assert all("Invalid signature" in e and "retrying in 2s" in e for e in errors)
    assert "not-the-secret" not in log
    print(f"wrong secret: {sim.token_requests} token request(s) in 5 s, one error line each")
