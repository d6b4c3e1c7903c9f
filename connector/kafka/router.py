"""Router: (exchange, channel, market) → topic, key, headers and encoder.

Routes are prepared once per subscription at start (topic names, and schema ids when a
registry is used); the hot path is one dict lookup. The key is the market, so one
market's events stay in one partition, in order.
"""

from __future__ import annotations

from dataclasses import dataclass

from connector.encoding.avro import (
    CONTENT_TYPE_CONFLUENT,
    CONTENT_TYPE_SINGLE_OBJECT,
    RecordEncoder,
    Schema,
    confluent_encoder,
    single_object_encoder,
)
from connector.encoding.registry import SchemaRegistryClient
from connector.errors import SchemaError
from connector.kafka.aio import Headers
from connector.metrics import Metrics, RouteMetrics


@dataclass(frozen=True, slots=True)
class Route:
    topic: str
    key: bytes
    headers: Headers
    encoder: RecordEncoder
    metrics: RouteMetrics


def topic_name(template: str, exchange: str, channel: str, market: str) -> str:
    return template.format(exchange=exchange, channel=channel, market=market)


class Router:
    def __init__(
        self,
        template: str,
        schemas: dict[str, Schema],
        metrics: Metrics,
        registry: SchemaRegistryClient | None = None,
        *,
        status_template: str = "{exchange}.status",
        dlq_template: str = "{exchange}.dlq",
    ) -> None:
        self._template = template
        self._status_template = status_template
        self._dlq_template = dlq_template
        self._schemas = schemas
        self._metrics = metrics
        self._registry = registry
        self._routes: dict[tuple[str, str, str], Route] = {}

    def topic(self, exchange: str, channel: str, market: str) -> str:
        return topic_name(self._template, exchange, channel, market)

    def status_topic(self, exchange: str) -> str:
        return self._status_template.format(exchange=exchange)

    def dlq_topic(self, exchange: str) -> str:
        return self._dlq_template.format(exchange=exchange)

    def get(self, exchange: str, channel: str, market: str) -> Route | None:
        return self._routes.get((exchange, channel, market))

    async def prepare(self, exchange: str, channel: str, market: str, schema_name: str) -> Route:
        return await self._prepare(
            (exchange, channel, market),
            self.topic(exchange, channel, market),
            schema_name,
            market.encode(),
            self._metrics.route(exchange, channel, market),
        )

    async def status_route(self, exchange: str) -> Route:
        """One route per exchange; the key is set per status (the market)."""
        return await self._prepare(
            (exchange, "status", ""),
            self.status_topic(exchange),
            "connector.Status",
            b"",
            self._metrics.route(exchange, "status", ""),
        )

    async def _prepare(
        self,
        key: tuple[str, str, str],
        topic: str,
        schema_name: str,
        record_key: bytes,
        route_metrics: RouteMetrics,
    ) -> Route:
        route = self._routes.get(key)
        if route is not None:
            return route
        schema = self._schemas.get(schema_name)
        if schema is None:
            raise SchemaError(f"no schema {schema_name} among {sorted(self._schemas)}")
        if self._registry is None:
            encoder = single_object_encoder(schema)
            content_type = CONTENT_TYPE_SINGLE_OBJECT
        else:
            schema_id = await self._registry.register(f"{topic}-value", schema.text)
            encoder = confluent_encoder(schema, schema_id)
            content_type = CONTENT_TYPE_CONFLUENT
        headers: Headers = [
            ("schema", schema.name.encode()),
            ("content-type", content_type.encode()),
        ]
        route = Route(topic, record_key, headers, encoder, route_metrics)
        self._routes[key] = route
        return route
