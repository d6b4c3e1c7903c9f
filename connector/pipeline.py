"""Publisher: a decoded event → encoded record → routed → handed to the sink."""

from __future__ import annotations

import logging

from connector.errors import EncodeError
from connector.events import MarketEvent
from connector.metrics import Metrics
from connector.router import Router
from connector.sink import KafkaSink

log = logging.getLogger(__name__)


class Publisher:
    __slots__ = ("_metrics", "_router", "_sink")

    def __init__(self, router: Router, sink: KafkaSink, metrics: Metrics) -> None:
        self._router = router
        self._sink = sink
        self._metrics = metrics

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
        route.metrics.received.inc()
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
