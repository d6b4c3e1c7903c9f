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


def _step(
    bench: ModuleType, offered: int, per_core: int, kept_up: bool, p99: float, own: float = 0.4
) -> object:
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
        handoff_p99_ms=own,
    )


def _by_target(verdicts: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(v["target"]): v for v in verdicts}


def test_the_targets_verdict_reads_the_busiest_step_that_kept_up(bench: ModuleType) -> None:
    runs = bench.Runs(
        steps=[
            _step(bench, 5_000, 12_000, True, 80.0),
            _step(bench, 20_500, 22_000, True, 60.0),
            _step(bench, 25_000, 19_000, False, 300.0),  # fell behind: not what it sustained
        ],
        quiet=[_step(bench, 5_000, 10_000, True, 12.1, own=1.4)],
        mem={"subscriptions": 1500, "rss_mb_steady": 93.7},
        user={"trades+diffs": [_step(bench, 1_000, 25_000, True, 8.0)]},
        ref=[{"client": "aiokafka", "consumer": False, "rate": 5000, "send_ack_p99_ms": 11.0}],
        peer={
            "ratios": {"1000": 5.5},
            "rows": [
                {"who": "connector", "rate": 1000, "cpu_us_per_msg": 40.0, "delivered_per_s": 1000},
                {
                    "who": "cryptofeed",
                    "rate": 1000,
                    "cpu_us_per_msg": 220.0,
                    "delivered_per_s": 990,
                    "offered_per_s": 1000,
                },
            ],
        },
    )
    v = _by_target(bench.targets(runs))
    throughput = v[">= 20000 msg/s sustained on one core (a step that kept up)"]
    assert throughput["met"] and str(throughput["measured"]).startswith("20500/s delivered")
    assert "(22000 msg/s per core)" in str(throughput["measured"])
    saturation = v["<= 45 µs CPU per message at saturation"]
    assert not saturation["met"] and saturation["measured"] == "45.5 µs at 20500/s"
    user = v["<= 50 µs CPU per message at 1000/s (trades+diffs, 10 markets)"]
    assert user["met"] and user["measured"] == "40.0 µs (1000/s delivered)"
    peer = v[">= 5x less CPU per message than cryptofeed at 1000/s"]
    assert peer["met"] and str(peer["measured"]).startswith("5.5x: connector 40.0 µs")
    own = next(x for k, x in v.items() if k.startswith("the connector's own leg"))
    # the reason: the simulator's tick of 50 frames at 5 000/s, each at the step's 100 µs
    assert not own["met"] and own["measured"] == (
        "p99 1.4 ms; the simulator sends 50 frames at once every 10 ms, and at 100.0 µs a "
        "message the last of them waits about 5.0 ms behind the others"
    )
    e2e = next(x for k, x in v.items() if k.startswith("end-to-end p99 within 1.2x"))
    assert e2e["met"] and "bare producer 11.0 ms: 1.1x (" in str(e2e["measured"])  # 12.1 / 11
    assert str(e2e["measured"]).endswith("its own leg p99 1.4 ms)")
    latency = next(x for k, x in v.items() if k.startswith("p99 receive→ack < 10 ms"))
    assert not latency["met"]
    assert str(latency["measured"]).startswith("98.00 % of records within 10 ms; p99 12.1 ms")
    assert v["RSS < 150 MB with 1500 subscriptions"]["met"]

    short = bench.Runs(
        steps=[_step(bench, 19_000, 25_000, True, 90.0), _step(bench, 24_000, 30_000, False, 9.0)]
    )
    first = bench.targets(short)[0]
    assert not first["met"]  # 19 000/s sustained is not 20 000
    lost = bench.Runs(steps=[_step(bench, 24_000, 30_000, False, 9.0)])
    assert bench.targets(lost)[0]["measured"] == "no step kept up"
    skipped = bench.targets(bench.Runs(peer={"skipped": "no peer virtualenv"}))
    assert skipped == [
        {
            "target": "a peer measured side by side",
            "measured": "skipped: no peer virtualenv",
            "met": False,
        }
    ]


def test_a_missed_cpu_target_says_what_the_same_stream_costs_without_the_connector(
    bench: ModuleType,
) -> None:
    """The reason given with a user-rate CPU verdict: the floors measured in the same run
    for the same mix and rate (a bare websockets reader, the bare producer)."""
    runs = bench.Runs(
        user={"trades+diffs": [_step(bench, 1_000, 5_000, True, 8.0)]},
        floors={"trades+diffs": {"1000": {"websockets_us": 61.5, "producer_us": 140.0}}},
    )
    verdict = bench.targets(runs)[0]
    assert not verdict["met"]
    assert verdict["measured"] == (
        "200.0 µs (1000/s delivered); the same stream without the connector, in this run: "
        "a bare websockets reader 61.5 µs a frame, the bare aiokafka producer 140.0 µs a "
        "record (201.5 µs together)"
    )
    no_floor = bench.Runs(user=runs.user, floors={"trades+diffs": {"3000": {}}})
    assert bench.targets(no_floor)[0]["measured"] == "200.0 µs (1000/s delivered)"
    core = {"core_us": 37.0, "core_back_to_back_us": 15.7, "core_first_us": 70.1}
    with_core = bench.Runs(
        user=runs.user,
        floors={"trades+diffs": {"1000": {"core_rest_us": 22.2, **core}}},
    )
    assert bench.targets(with_core)[0]["measured"] == (
        "200.0 µs (1000/s delivered); the connector's decoding and encoding alone, no I/O, "
        "paced as the simulator sends: 37.0 µs a frame (15.7 back to back; the first frame "
        "after each 10 ms pause 70.1 µs, the others 22.2)"
    )


def test_a_missed_saturation_figure_says_what_decoding_and_encoding_alone_take(
    bench: ModuleType,
) -> None:
    """The saturation steps run the six-channel mix: their reason is that mix's decoding
    and encoding back to back, against the µs a message the target allows, and the bare
    producer at its busiest reference rate."""
    runs = bench.Runs(
        steps=[_step(bench, 14_000, 14_600, True, 60.0)],
        floors={
            "six": {"1000": {"core_back_to_back_us": 37.5}},
            "trades+diffs": {"1000": {"core_back_to_back_us": 15.5}},
        },
        ref=[
            {
                "client": "aiokafka",
                "consumer": False,
                "rate": 2000,
                "sent_per_s": 1998,
                "cpu_s_per_1000": 0.101,
            },
            {
                "client": "aiokafka",
                "consumer": False,
                "rate": 9986,
                "sent_per_s": 9986,
                "cpu_s_per_1000": 0.0488,
            },
            {
                "client": "aiokafka",
                "consumer": True,
                "rate": 20000,
                "sent_per_s": 20000,
                "cpu_s_per_1000": 0.03,
            },
        ],
    )
    v = _by_target(bench.targets(runs))
    assert v["<= 45 µs CPU per message at saturation"]["measured"] == (
        "68.5 µs at 14000/s; the connector's decoding and encoding of this mix alone, back to "
        "back with no I/O: 37.5 µs a frame, 7.5 µs left of 45 for reading the WebSocket and "
        "producing (the bare aiokafka producer alone: 48.8 µs a record at 9986/s)"
    )
    throughput = str(v[">= 20000 msg/s sustained on one core (a step that kept up)"]["measured"])
    assert "37.5 µs a frame, 12.5 µs left of 50 for" in throughput
    runs.floors = {}
    assert bench.targets(runs)[1]["measured"] == "68.5 µs at 14000/s"


async def test_the_core_floor_decodes_and_encodes_the_mix_paced_and_back_to_back(
    bench: ModuleType,
) -> None:
    """bench/corefloor.py as the benchmark runs it: every rate's paced figures and the
    back-to-back one, from frames the connector's decoder turns into events."""
    rows = await bench.core_floor("six", [1000.0, 3000.0], 5, 0.3)
    assert set(rows) == {"1000", "3000"}
    for row in rows.values():
        assert set(row) == {"core_us", "core_first_us", "core_rest_us", "core_back_to_back_us"}
        assert all(value > 0 for value in row.values())
    assert rows["1000"]["core_back_to_back_us"] == rows["3000"]["core_back_to_back_us"]


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
