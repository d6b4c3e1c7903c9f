"""The benchmark's end-to-end accounting: what it reads from the connector's metrics and
when it reports a loss (``make bench`` exits 1 then)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from prometheus_client import generate_latest

from connector.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _worker(data: int, status: int, ownership: int, failed: int) -> Metrics:
    metrics = Metrics()
    metrics.route("bitstamp", "live_trades", "btcusd").published += data
    metrics.route("bitstamp", "status", "").published += status
    metrics.route("group", "assignments", "").published += ownership
    if failed:
        metrics.events_failed.labels("bitstamp", "live_trades", "btcusd", "encode").inc(failed)
    metrics.events_dropped.labels("bitstamp", "diff_order_book", "stale_diff").inc(3)
    metrics.events_dropped.labels("bitstamp", "diff_order_book", "spool_full").inc(failed)
    return metrics


async def test_scrape_sums_workers_and_keeps_the_groups_ownership_records_apart(
    bench: ModuleType,
) -> None:
    workers = [_worker(100, 2, 18, 0), _worker(250, 3, 34, 1)]

    def serve(request: httpx.Request) -> httpx.Response:
        index = (request.url.port or 0) - 9000
        return httpx.Response(200, content=generate_latest(workers[index].registry))

    async with httpx.AsyncClient(transport=httpx.MockTransport(serve)) as client:
        m = await bench.scrape(client, 9000, workers=2)
    assert m["published"] == 355  # data and status records: both on the scenario's topics
    assert m["status"] == 5
    assert m["ownership"] == 52  # the group's topic: not the scenario's
    assert m["dropped"] == {"stale_diff": 6}  # on purpose
    lost = {name: n for name, n in m["lost"].items() if n}
    assert lost == {"connector_events_failed_total": 1, "spool_full": 1}


def test_a_loss_is_reported_and_fails_the_run(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = {"unread": 0, "loss_counters": {}, "from_rest": 10}
    assert not bench.report_loss({"connector.log": clean})
    assert "no record lost in 1 scenario" in capsys.readouterr().out
    for bad in ({"unread": 2}, {"loss_counters": {"x": 1}}, {"from_rest": -1}):
        assert bench.report_loss({"connector.log": clean, "connector-wal.log": {**clean, **bad}})
        err = capsys.readouterr().err
        assert "LOSS in connector-wal" in err
        assert "connector.log" not in err and "LOSS in connector:" not in err


def _step(bench: ModuleType, offered: int, per_core: int, kept_up: bool, p99: float) -> object:
    """A step whose share of records within 10 ms follows its p99 (as a histogram's would)."""
    return bench.Step(
        offered_target=offered,
        offered=offered,
        delivered=offered,
        cpu_s_per_1000=1000 / per_core,
        msgs_per_core_s=per_core,
        p50_ms=p99 / 2,
        p99_ms=p99,
        max_ms=p99,
        send_ack_p50_ms=p99 / 2,
        send_ack_p99_ms=p99,
        rss_mb=80.0,
        kept_up=kept_up,
        within_target=0.995 if p99 < 10 else 0.98,
    )


def test_the_targets_verdict_reads_the_busiest_step_that_kept_up(bench: ModuleType) -> None:
    steps = [
        _step(bench, 5_000, 12_000, True, 80.0),
        _step(bench, 20_500, 22_000, True, 60.0),
        _step(bench, 25_000, 19_000, False, 300.0),  # fell behind: not what it sustained
    ]
    quiet = [_step(bench, 5_000, 10_000, True, 12.1)]
    mem = {"subscriptions": 1500, "rss_mb_steady": 93.7}
    throughput, latency, memory = bench.targets(steps, quiet, mem)
    assert (throughput["met"], latency["met"], memory["met"]) == (True, False, True)
    assert throughput["measured"].startswith("20500/s delivered")
    assert "(22000 msg/s per core)" in throughput["measured"]
    assert latency["measured"].startswith("98.00 % of records within 10 ms; p99 12.1 ms")

    short = [_step(bench, 19_000, 25_000, True, 90.0), _step(bench, 24_000, 30_000, False, 9.0)]
    fast = [_step(bench, 5_000, 10_000, True, 9.9)]
    verdict = bench.targets(short, fast, None)
    assert [t["met"] for t in verdict] == [False, True]  # 19 000/s sustained is not 20 000
    assert bench.targets([_step(bench, 24_000, 30_000, False, 9.0)], [], None)[0]["measured"] == (
        "no step kept up"
    )


async def test_the_share_within_the_latency_target_is_exact_at_a_bucket_bound(
    bench: ModuleType,
) -> None:
    metrics = Metrics()

    async def scraped() -> dict[float, float]:
        def serve(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, content=generate_latest(metrics.registry))

        async with httpx.AsyncClient(transport=httpx.MockTransport(serve)) as client:
            buckets: dict[float, float] = (await bench.scrape(client, 9000))["buckets"]
            return buckets

    before = await scraped()
    for seconds in [0.002] * 985 + [0.0099] * 5 + [0.0101] * 10:  # 990 of 1 000 within 10 ms
        metrics.ack_latency.observe(seconds)
    after = await scraped()
    assert bench.share_within(before, after, bench.TARGET_P99_MS / 1000) == 0.99
    assert bench.share_within(before, after, 0.015) == 1.0
    assert bench.share_within(after, after, 0.01) is None  # nothing observed in between
    with pytest.raises(ValueError, match="not a bucket bound"):
        bench.share_within(before, after, 0.011)
