"""The per-record metrics, kept as plain numbers, expose exactly what prometheus_client's
own counters and histograms would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from connector.metrics import _LATENCY_BUCKETS, FastHistogram, Metrics


def _samples(registry: CollectorRegistry) -> list[str]:
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if not line.startswith("#") and "_created" not in line
    ]


def test_fast_histogram_exposes_what_a_prometheus_histogram_would() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = FastHistogram("lat_seconds", "doc", _LATENCY_BUCKETS, ours)
    reference = Histogram("lat_seconds", "doc", buckets=_LATENCY_BUCKETS, registry=theirs)
    # on a bound, between bounds, below the first, above the last, zero
    values = [0.0, 0.00025, 0.0003, 0.001, 0.0049, 0.005, 0.0051, 0.75, 60.0, 61.0, 1e-9]
    for v in values:
        fast.observe(v)
        reference.observe(v)
    assert _samples(ours) == _samples(theirs)
    assert fast.count == len(values)
    assert fast.sum == sum(values)


def test_route_counters_expose_what_labelled_prometheus_counters_would() -> None:
    metrics = Metrics()
    theirs = CollectorRegistry()
    received = Counter(
        "connector_events_received_total", "x", ("exchange", "channel", "market"), registry=theirs
    )
    route = metrics.route("bitstamp", "live_trades", "btcusd")
    assert metrics.route("bitstamp", "live_trades", "btcusd") is route  # one per label set
    other = metrics.route("binance", "trade", "BTCUSDT")
    route.received += 3
    other.received += 1
    route.published += 2
    received.labels("bitstamp", "live_trades", "btcusd").inc(3)
    received.labels("binance", "trade", "BTCUSDT").inc(1)

    ours = [s for s in _samples(metrics.registry) if s.startswith("connector_events_received")]
    assert ours == _samples(theirs)
    assert metrics.events_published.value("bitstamp", "live_trades", "btcusd") == 2
    assert metrics.events_published.value("binance", "trade", "BTCUSDT") == 0
    assert metrics.events_published.value("kraken", "trade", "x") == 0
