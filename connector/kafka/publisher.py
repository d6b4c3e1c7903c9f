"""Publisher: a decoded event → encoded record → routed → handed to the sink."""

from __future__ import annotations

import logging
import time

from connector.errors import EncodeError, ProtocolError
from connector.events import MarketEvent, Status
from connector.kafka.router import Router
from connector.kafka.sink import KafkaSink
from connector.metrics import Metrics

log = logging.getLogger(__name__)


DLQ_MAX_BYTES = 512 * 1024  # a dead-lettered frame keeps at most its first 512 KiB


def dlq_max_bytes(ws_max_size_bytes: int) -> int:
    """What a dead letter keeps of a frame: 512 KiB, less if records may not be that
    large (the producer's request limit follows ws_max_size_bytes; 4 KiB for headers)."""
    return min(DLQ_MAX_BYTES, ws_max_size_bytes - 4096)


class Publisher:
    __slots__ = ("_dlq_max_bytes", "_metrics", "_router", "_sink")

    def __init__(
        self,
        router: Router,
        sink: KafkaSink,
        metrics: Metrics,
        dlq_max_bytes: int = DLQ_MAX_BYTES,
    ) -> None:
        self._router = router
        self._sink = sink
        self._metrics = metrics
        self._dlq_max_bytes = dlq_max_bytes

    @property
    def saturated(self) -> bool:
        return self._sink.saturated

    async def publish(self, event: MarketEvent, receive_ts: float) -> None:
        """Waits only when the sink's in-flight bound is reached (backpressure)."""
        route = self._router.get(event.exchange, event.channel, event.market)
        if route is None:
            route = await self._router.prepare(
                event.exchange, event.channel, event.market, type(event).SCHEMA
            )
        route.metrics.received += 1
        try:
            value = route.encoder.encode(event)
        except EncodeError as exc:
            # A schema/decoder mismatch is a bug: loud, counted, and the stream goes on.
            self._metrics.events_failed.labels(*route.metrics.labels, "EncodeError").inc()
            log.error("cannot encode an event for %s: %s", route.topic, exc)
            return
        await self._sink.send(
            route.topic, route.key, value, route.headers, route.metrics, receive_ts
        )

    async def publish_status(self, status: Status) -> None:
        route = await self._router.status_route(status.exchange)
        value = route.encoder.encode(status)  # type: ignore[arg-type]
        log.info(
            "status %s %s_%s: %s from %d to %d (%.1fs), recovery %s (%d events)%s",
            status.kind,
            status.channel,
            status.market,
            status.reason,
            status.start_us,
            status.end_us,
            (status.end_us - status.start_us) / 1e6,
            status.recovery,
            status.recovered_events,
            f": {status.detail}" if status.detail else "",
        )
        await self._sink.send(
            route.topic, status.market.encode(), value, route.headers, route.metrics, time.time()
        )

    async def dead_letter(
        self, exchange: str, error: ProtocolError, connection_id: str, receive_ts: float
    ) -> None:
        """The raw frame, with headers saying why, to the exchange's dead-letter topic."""
        frame = error.frame
        value = frame.encode() if isinstance(frame, str) else bytes(frame)
        size = len(value)
        if size > self._dlq_max_bytes:  # Kafka's default record limit is 1 MiB
            value = value[: self._dlq_max_bytes]
        headers = [
            ("size", str(size).encode()),
            ("truncated", b"true" if size > len(value) else b"false"),
            ("exchange", exchange.encode()),
            ("reason", error.reason.encode()),
            ("detail", error.detail.encode()[:1000]),
            ("connection-id", connection_id.encode()),
            ("receive-ts-us", str(int(receive_ts * 1_000_000)).encode()),
            ("frame-type", b"text" if isinstance(frame, str) else b"binary"),
        ]
        self._metrics.dead_lettered.labels(exchange, error.reason).inc()
        await self._sink.send(
            self._router.dlq_topic(exchange),
            b"",
            value,
            headers,
            self._metrics.route(exchange, "dlq", ""),
            receive_ts,
        )
