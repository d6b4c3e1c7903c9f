"""Prometheus metrics, and the per-route handles the hot path uses.

Label lookups happen once per route (``RouteMetrics``), never per message. Cardinality
is bounded by the configured exchanges, channels and markets.

The per-record metrics (events received and published per route, the two latency
histograms) are plain integers and floats that the hot path adds to, turned into
Prometheus samples at scrape time: prometheus_client's counters and histograms take a
lock on every increment (several per record), and this process updates them
from one event-loop thread only.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from connector import __version__

# Fine below 10 ms, where the latency target lies; coarse above for outages.
# The connector's own leg is sub-millisecond unless recovery holds events.
_HANDOFF_BUCKETS = (
    0.0001,
    0.0002,
    0.0003,
    0.0005,
    0.00075,
    0.001,
    0.002,
    0.005,
    0.01,
    0.05,
    0.25,
    1.0,
    5.0,
)
_LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


@dataclass(slots=True)
class RouteMetrics:
    """One route's counters, added to on the hot path (``received += 1``)."""

    labels: tuple[str, str, str]
    received: int = 0
    published: int = 0


class RouteCounter(Collector):
    """A counter per route, read at scrape time from ``RouteMetrics.<field>``."""

    def __init__(
        self,
        name: str,
        documentation: str,
        field: str,
        routes: dict[tuple[str, str, str], RouteMetrics],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = ("exchange", "channel", "market")
        self._field = field
        self._routes = routes
        registry.register(self)

    def value(self, exchange: str, channel: str, market: str) -> int:
        route = self._routes.get((exchange, channel, market))
        return 0 if route is None else int(getattr(route, self._field))

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, route in list(self._routes.items()):
            family.add_metric(labels, getattr(route, self._field))
        yield family


class FastHistogram(Collector):
    """A histogram fed with plain arithmetic (``observe``: one bisect, two additions) and
    exposed at scrape time in Prometheus' format (cumulative ``le`` buckets, sum, count)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames: tuple[str, ...] = ()
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # the last one: above every bound
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1  # le: value <= bound
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[Metric]:
        cumulative, total = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += n
            cumulative.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], cumulative, self.sum)
        yield family


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        labels = ("exchange", "channel", "market")
        self._routes: dict[tuple[str, str, str], RouteMetrics] = {}
        self.build_info = Info("connector_build", "Connector build information.", registry=r)
        self.build_info.info({"version": __version__})
        self.events_received = RouteCounter(
            "connector_events_received",
            "Market events decoded from the exchange.",
            "received",
            self._routes,
            r,
        )
        self.events_published = RouteCounter(
            "connector_events_published",
            "Records acknowledged by Kafka (acks=all).",
            "published",
            self._routes,
            r,
        )
        self.events_failed = Counter(
            "connector_events_failed_total",
            "Records Kafka rejected permanently (not retriable) or that could not be encoded.",
            ("exchange", "channel", "market", "reason"),
            registry=r,
        )
        self.events_undelivered = Counter(
            "connector_events_undelivered_total",
            "Records still unacknowledged when the shutdown deadline passed.",
            registry=r,
        )
        self.send_retries = Counter(
            "connector_kafka_send_retries_total",
            "Record sends retried after a retriable error.",
            ("error",),
            registry=r,
        )
        self.frames_invalid = Counter(
            "connector_frames_invalid_total",
            "Frames the decoder rejected, by reason.",
            ("exchange", "reason"),
            registry=r,
        )
        self.dead_lettered = Counter(
            "connector_events_dead_lettered_total",
            "Frames written to the dead-letter topic, by reason.",
            ("exchange", "reason"),
            registry=r,
        )
        self.gaps = Counter(
            "connector_gaps_total",
            "Intervals a subscription was not live (status events).",
            ("exchange", "channel", "reason"),
            registry=r,
        )
        self.backfilled = Counter(
            "connector_backfilled_trades_total",
            "Trades recovered over REST after gaps.",
            ("exchange",),
            registry=r,
        )
        self.duplicates = Counter(
            "connector_duplicates_dropped_total",
            "Events not published again because they already were (trade ids, the overlap "
            "of a make-before-break switch).",
            ("exchange", "channel"),
            registry=r,
        )
        self.events_dropped = Counter(
            "connector_events_dropped_total",
            "Events deliberately not published: duplicate (already published), spool_full "
            "(drop_oldest policy).",
            ("exchange", "channel", "reason"),
            registry=r,
        )
        self.handovers = Counter(
            "connector_handovers_total",
            "Make-before-break connection switches (request_reconnect, max_age) by outcome: "
            "switched (no gap), gap (the old connection died first), failed (kept the old).",
            ("exchange", "reason", "outcome"),
            registry=r,
        )
        self.stale_diffs = Counter(
            "connector_stale_diffs_discarded_total",
            "Book diffs older than the resync snapshot that arrived after it was published "
            "(published behind it; consumers discard them: not newer than the last resync). "
            "Older diffs that arrive before it are published ahead of it and not counted.",
            ("exchange",),
            registry=r,
        )
        self.topics_recreated = Counter(
            "connector_topics_recreated_total",
            "Topics recreated after they disappeared from Kafka.",
            registry=r,
        )
        self.spooled = Counter(
            "connector_spooled_records_total",
            "Records written to the on-disk spool (write-ahead mode: every record).",
            registry=r,
        )
        self.replayed = Counter(
            "connector_spool_replayed_records_total",
            "Spooled records delivered to Kafka (write-ahead mode: every record).",
            registry=r,
        )
        self.spool_dropped = Counter(
            "connector_spool_dropped_records_total",
            "Oldest spooled records dropped because the spool was full (drop_oldest).",
            registry=r,
        )
        self.spool_bytes = Gauge(
            "connector_spool_bytes",
            "Bytes in the on-disk spool.",
            registry=r,
        )
        self.resubscribes = Counter(
            "connector_stale_resubscribes_total",
            "Subscriptions resubscribed because they stayed silent past their threshold.",
            ("exchange", "channel"),
            registry=r,
        )
        self.exchange_errors = Counter(
            "connector_exchange_errors_total",
            "bts:error (or equivalent) messages received.",
            ("exchange",),
            registry=r,
        )
        self.auth_failures = Counter(
            "connector_auth_failures_total",
            "Private channel tokens that could not be obtained (wrong key, wrong user id).",
            ("exchange",),
            registry=r,
        )
        self.reconnects = Counter(
            "connector_reconnects_total",
            "Exchange reconnects, by reason.",
            ("exchange", "reason"),
            registry=r,
        )
        self.subscriptions_live = Gauge(
            "connector_subscriptions_live",
            "Subscriptions confirmed by the exchange.",
            ("exchange",),
            registry=r,
        )
        self.in_flight = Gauge(
            "connector_kafka_in_flight_records",
            "Records accepted but not yet acknowledged.",
            registry=r,
        )
        self.ack_latency = FastHistogram(
            "connector_receive_to_ack_seconds",
            "Time from frame received to Kafka acknowledgement.",
            _LATENCY_BUCKETS,
            r,
        )
        self.handoff_latency = FastHistogram(
            "connector_receive_to_handoff_seconds",
            "Time from frame received to its record handed to the Kafka sink: the "
            "connector's own leg (reading, decoding, recovery, encoding, routing).",
            _HANDOFF_BUCKETS,
            r,
        )
        self.produce_latency = FastHistogram(
            "connector_kafka_produce_seconds",
            "Time from handing a record to the producer to its acknowledgement (acks=all).",
            _LATENCY_BUCKETS,
            r,
        )
        self.last_event_age = Gauge(
            "connector_last_event_age_seconds",
            "Seconds since each live subscription's last event (at scrape time).",
            labels,
            registry=r,
        )
        self.buffer_fill = Gauge(
            "connector_kafka_buffer_fill_ratio",
            "Records in flight over kafka_max_in_flight (1: reading is held back).",
            registry=r,
        )
        self.spool_records = Gauge(
            "connector_spool_records",
            "Records in the on-disk spool not yet acknowledged by Kafka.",
            registry=r,
        )
        self.ready = Gauge(
            "connector_ready",
            "1 when /readyz says ready (producer taking records, every subscription live).",
            registry=r,
        )
        # Called before each scrape: gauges that are cheaper to read than to keep.
        self.refresh_hooks: list[Callable[[], None]] = []

    def refresh(self) -> None:
        for hook in self.refresh_hooks:
            hook()

    def route(self, exchange: str, channel: str, market: str) -> RouteMetrics:
        """The route's counters: the same object for the same labels (as ``labels()``)."""
        labels = (exchange, channel, market)
        route = self._routes.get(labels)
        if route is None:
            route = self._routes[labels] = RouteMetrics(labels)
        return route


def metrics_markdown() -> str:
    """docs/operations.md's metrics table, generated from the registry (``make docs``)."""
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for collector in vars(Metrics()).values():
        if not isinstance(collector, MetricWrapperBase | RouteCounter | FastHistogram):
            continue
        for family in collector.describe():
            name = family.name + ("_total" if family.type == "counter" else "")
            if family.type == "info":
                name = family.name + "_info"
            names = getattr(collector, "_labelnames", getattr(collector, "labelnames", ()))
            labels = ", ".join(names) or "—"
            rows.append(f"| `{name}` | {family.type} | {labels} | {family.documentation} |")
    return "\n".join(rows) + "\n"
