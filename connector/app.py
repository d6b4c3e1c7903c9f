"""``connector run``: wires settings, broker, schemas, router, sink and supervisor.

Start-up order: (embedded broker) → schemas → topics → routes (schema registration) →
producer → metrics endpoint → connections. Unreachable Kafka at start is retried with
backoff and logged on every attempt; a configuration error ends the process at once.
Shutdown (SIGINT/SIGTERM): close the connections, deliver what is in flight within
``shutdown_timeout_s``, stop the producer, stop the embedded broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import TypeVar

from connector.encoding.avro import AvroDecoder, load_schemas
from connector.encoding.registry import SchemaRegistryClient
from connector.errors import ConfigError, DeliveryError
from connector.exchanges.base import Adapter
from connector.exchanges.registry import adapter_for
from connector.group.membership import Membership, assignment_topic
from connector.http import Health, HttpServer
from connector.kafka.checkpoints import Checkpoint, from_spool, last_trades, latest
from connector.kafka.embedded import EmbeddedBroker, port_or_free
from connector.kafka.publisher import Publisher, dlq_max_bytes
from connector.kafka.router import Router
from connector.kafka.security import client_options
from connector.kafka.sink import KafkaSink
from connector.kafka.topics import ensure_topics
from connector.metrics import Metrics
from connector.settings import Settings, redact_url
from connector.stream.supervisor import Fleet, Supervisor, backoff_delay

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _until_kafka_answers(
    what: str, op: Callable[[], Awaitable[T]], settings: Settings, stop: asyncio.Event
) -> T | None:
    """Retries a start-up step while Kafka is unreachable; None if stopped meanwhile.
    An error is logged in full once; the same error again, in one short line."""
    attempt = 0
    said = ""
    while True:
        try:
            return await op()
        except DeliveryError as exc:
            if not exc.retriable:
                raise
            delay = backoff_delay(attempt, 1.0, settings.reconnect_backoff_max_s)
            attempt += 1
            if str(exc) == said:
                log.error(
                    "%s failed again (attempt %d, the same error); retrying in %.1fs",
                    what,
                    attempt,
                    delay,
                )
            else:
                said = str(exc)
                log.error(
                    "%s failed (attempt %d): %s; retrying in %.1fs", what, attempt, exc, delay
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return None


async def run(settings: Settings, stop: asyncio.Event | None = None) -> int:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not possible outside the main thread (tests run the app in a task).
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    broker: EmbeddedBroker | None = None
    registry: SchemaRegistryClient | None = None
    sink: KafkaSink | None = None
    metrics = Metrics()
    health = Health(settings.stale_after_s)
    http_server: HttpServer | None = None
    try:
        if settings.http_port:
            # First: probes answer (and say "starting") while Kafka is being reached.
            http_server = HttpServer(settings.http_port, metrics, health)
            try:
                await http_server.start()
            except OSError as exc:
                raise ConfigError(
                    f"CONNECTOR_HTTP_PORT {settings.http_port} cannot be served: {exc}"
                ) from exc
        bootstrap = settings.kafka_bootstrap_servers
        if bootstrap is None:
            broker = EmbeddedBroker(port_or_free(settings.embedded_broker_port))
            bootstrap = await broker.astart()
            log.info(
                "KAFKA_BOOTSTRAP_SERVERS is unset: using the embedded broker at %s "
                "(memory only, idempotence off); read it with: "
                "KAFKA_BOOTSTRAP_SERVERS=%s connector tail '%s\\..*' --from-beginning",
                bootstrap,
                bootstrap,
                settings.exchanges[0],
            )
        schemas = load_schemas(settings.schema_dir)
        kafka_client = client_options(settings)  # TLS files are read (and checked) here
        if settings.schema_registry_url:
            registry = SchemaRegistryClient(settings.schema_registry_url)
            log.info(
                "schema registry %s: Confluent wire format",
                redact_url(settings.schema_registry_url),
            )
        else:
            log.info("no schema registry: Avro single-object encoding")
        router = Router(
            settings.topic_template,
            schemas,
            metrics,
            registry,
            status_template=settings.status_topic_template,
            dlq_template=settings.dlq_topic_template,
        )
        adapters = [adapter_for(e, settings) for e in settings.exchanges]
        plans: dict[str, list[tuple[str, str]]] = {}
        for adapter in adapters:
            subs, skipped, why = adapter.plan()
            if skipped:
                log.info(
                    "%s: not subscribing %s: %s",
                    adapter.name,
                    ", ".join(adapter.sub_name(c, m) for c, m in skipped),
                    why,
                )
            if not subs:
                raise ConfigError(f"{adapter.name}: nothing to subscribe ({why})")
            plans[adapter.name] = subs
        every = [(a, c, m) for a in adapters for c, m in plans[a.name]]
        if settings.create_topics:
            topics = [router.topic(a.name, c, m) for a, c, m in every]
            for a in adapters:
                topics += [router.status_topic(a.name), router.dlq_topic(a.name)]
            created = await _until_kafka_answers(
                "creating topics",
                lambda: ensure_topics(
                    bootstrap,
                    topics,
                    settings.topic_partitions,
                    settings.topic_replication_factor,
                    client=kafka_client,
                ),
                settings,
                stop,
            )
            if created is None:
                return 0
        if settings.group_id:
            # The assignment topic's partitions are the unit of ownership: create it even
            # when topic creation is off (all replicas must agree on its size).
            created = await _until_kafka_answers(
                "creating the assignment topic",
                lambda: ensure_topics(
                    bootstrap,
                    [assignment_topic(settings)],
                    settings.assignment_partitions,
                    settings.topic_replication_factor,
                    client=kafka_client,
                ),
                settings,
                stop,
            )
            if created is None:
                return 0
        for a, c, m in every:
            await router.prepare(a.name, c, m, a.channel_schemas[c])
        for a in adapters:
            await router.status_route(a.name)
        # Trade topics: their last record is where a restart backfills from (topic → topic).
        trade_topics = {
            router.topic(a.name, c, m): router.topic(a.name, c, m)
            for a, c, m in every
            if a.channel_schemas[c] == "connector.Trade"
        }
        if settings.group_id:
            trade_topics = {}  # positions are read per subscription when it is assigned
        trade_decoder = AvroDecoder(schemas.values())
        checkpoints = (
            await last_trades(
                bootstrap,
                trade_topics,
                trade_decoder,
                registry,
                client=kafka_client,
            )
            if trade_topics
            else {}
        )

        async def start_sink() -> KafkaSink:
            nonlocal checkpoints
            creator = (
                partial(
                    ensure_topics,
                    bootstrap,
                    partitions=settings.topic_partitions,
                    replication_factor=settings.topic_replication_factor,
                    client=kafka_client,
                )
                if settings.create_topics
                else None
            )
            candidate = KafkaSink(settings, bootstrap, metrics, creator)
            if trade_topics:  # before start: nothing of it is replayed yet
                spooled = await from_spool(
                    candidate.spooled_records(), trade_topics, trade_decoder, registry
                )
                checkpoints = latest(checkpoints, spooled)
            await candidate.start()
            return candidate

        sink = await _until_kafka_answers("connecting the producer", start_sink, settings, stop)
        if sink is None:
            return 0
        log.info(
            "producer connected to %s (acks=all, %s%s, idempotence %s)",
            bootstrap,
            settings.kafka_compression,
            "" if settings.compression_level is None else f" level {settings.compression_level}",
            "on" if settings.idempotence else "off",
        )
        health.sink = sink
        metrics.refresh_hooks.append(partial(_refresh_sink_gauges, metrics, sink))
        publisher = Publisher(router, sink, metrics, dlq_max_bytes(settings.ws_max_size_bytes))
        supervisor = Fleet(
            [
                Supervisor(
                    a,
                    [] if settings.group_id else plans[a.name],
                    settings,
                    publisher,
                    metrics,
                    _by_sub_name(a, plans[a.name], router, checkpoints),
                )
                for a in adapters
            ]
        )
        membership: Membership | None = None
        member_task: asyncio.Task[None] | None = None
        if settings.group_id:
            membership = Membership(
                settings,
                bootstrap,
                kafka_client,
                supervisor,
                sink,
                metrics,
                {(a.name, c, m): router.topic(a.name, c, m) for a, c, m in every},
                trade_decoder,
                registry,
            )
            member_task = asyncio.create_task(membership.run(stop), name="group-membership")
        health.subscriptions = supervisor.subscriptions
        metrics.refresh_hooks.append(partial(_refresh_sub_gauges, metrics, supervisor))
        log.info(
            "running: %d subscription(s) on %s over %d connection(s)",
            len(every),
            ", ".join(a.name for a in adapters),
            len(supervisor.connections),
        )
        try:
            with _startup_heap_frozen():
                await supervisor.run(stop)
            log.info("stopping: delivering %d record(s) still in flight", sink.pending)
            if membership is not None:
                # Our subscriptions' last events are in Kafka before the next owner looks.
                await sink.flush(settings.shutdown_timeout_s)
                await membership.leave()
        finally:
            if member_task is not None:
                member_task.cancel()
                await asyncio.gather(member_task, return_exceptions=True)
        return 0
    finally:
        health.stopping = True
        if sink is not None:
            undelivered = await sink.close()
            log.info(
                "producer closed: %d delivered, %d failed, %d undelivered",
                sink.delivered,
                sink.failed,
                undelivered,
            )
        if registry is not None:
            await registry.close()
        if broker is not None:
            broker.stop()
        if http_server is not None:
            await http_server.stop()


@contextlib.contextmanager
def _startup_heap_frozen() -> Iterator[None]:
    """While streaming, what start-up built (modules, schemas, pydantic models, routes,
    clients: most of the heap) is out of the cyclic GC's reach. A full collection then
    scans only what the stream allocates, so its pause (every record in flight waits for
    it: the event loop's worst stall) stays short. Undone on return, so an embedding
    process keeps a normal GC."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _refresh_sink_gauges(metrics: Metrics, sink: KafkaSink) -> None:
    metrics.in_flight.set(sink.pending)
    metrics.buffer_fill.set(sink.fill_ratio)
    spool = sink.spool_state()
    if spool is not None:
        metrics.spool_bytes.set(spool[0])
        metrics.spool_records.set(spool[1])


def _by_sub_name(
    adapter: Adapter,
    subs: list[tuple[str, str]],
    router: Router,
    checkpoints: dict[str, Checkpoint],
) -> dict[str, Checkpoint]:
    """Restart checkpoints (keyed by topic) → keyed by the adapter's subscription name."""
    out = {}
    for c, m in subs:
        cp = checkpoints.get(router.topic(adapter.name, c, m))
        if cp is not None:
            out[adapter.sub_name(c, m)] = cp
    return out


def _refresh_sub_gauges(metrics: Metrics, fleet: Fleet) -> None:
    now = time.monotonic()
    for exchange, supervisor in fleet.supervisors.items():
        subs = supervisor.subscriptions()
        metrics.subscriptions_live.labels(exchange).set(sum(1 for s in subs if s.confirmed))
        for sub in subs:
            gauge = metrics.last_event_age.labels(exchange, sub.channel, sub.market)
            gauge.set(now - sub.last_event if sub.confirmed else float("nan"))
