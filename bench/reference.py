"""The reference beside the connector: a bare aiokafka producer, configured as the
connector's (acks=all, lz4 at the connector's default level, its default linger, the same batch
size), sending the connector's own records (the simulator's events of the benchmark mix,
decoded and Avro-encoded once, before the clock starts) at a fixed rate to the same
topics, on the same core and broker, in the simulator's shape (each tick's records at once,
every ``TICK_S``). There is no WebSocket, no decoding, no encoding and
no bookkeeping: what it measures is the floor the producer library and the broker set on
this machine — CPU per message and the send→ack latency. ``bench/run.py`` runs it after
the connector steps; alone: ``python bench/reference.py --bootstrap HOST:PORT --rate
5000``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import random
import sys
import time
from functools import partial
from itertools import accumulate
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connector.encoding.avro import (  # noqa: E402
    CONTENT_TYPE_SINGLE_OBJECT,
    load_schemas,
    single_object_encoder,
)
from connector.events import MarketEvent  # noqa: E402
from connector.exchanges.bitstamp.decoder import BitstampDecoder  # noqa: E402
from connector.exchanges.bitstamp.simulator import TICK_S, Simulator  # noqa: E402
from connector.kafka.aio import use_compression_level  # noqa: E402
from connector.kafka.topics import ensure_topics  # noqa: E402
from connector.settings import COMPRESSION_LEVELS, Settings  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from run import cpu_seconds, percentile, subscriptions  # noqa: E402

# The connector's default kafka_compression_level for lz4.
LZ4_LEVEL = COMPRESSION_LEVELS["lz4"][2]
LINGER_MS: int = Settings.model_fields["kafka_linger_ms"].default
Record = tuple[str, bytes, bytes, list[tuple[str, bytes]]]  # topic, key, value, headers


def frames(
    mix: dict[str, float], markets: list[str], depth: int, count: int
) -> list[tuple[str, str, bytes]]:
    """About ``count`` of the simulator's frames, (channel, market, frame), over the
    subscriptions the connector makes for the mix, in its proportions, stream by stream."""
    sim = Simulator(book_depth=depth, markets=tuple(markets))
    subs = subscriptions(markets, mix)
    total = sum(mix[c] for c, _ in subs)
    return [
        (channel, market, orjson.dumps(sim.make_event(channel, market)))
        for channel, market in subs
        for _ in range(max(1, round(count * mix[channel] / total)))
    ]


def records(
    mix: dict[str, float], markets: list[str], depth: int, topic_template: str, count: int
) -> list[Record]:
    """(topic, key, value) in the mix's proportions, encoded as the connector encodes."""
    decoder = BitstampDecoder("reference")
    encoders = {name: single_object_encoder(s) for name, s in load_schemas().items()}
    headers = {  # the router's headers
        name: [("schema", name.encode()), ("content-type", CONTENT_TYPE_SINGLE_OBJECT.encode())]
        for name in encoders
    }
    out: list[Record] = []
    for channel, market, frame in frames(mix, markets, depth, count):
        topic = topic_template.format(exchange="bitstamp", channel=channel, market=market)
        for event in decoder.feed(frame, 0):
            if isinstance(event, MarketEvent):
                value = encoders[type(event).SCHEMA].encode(event)
                out.append((topic, market.encode(), value, headers[type(event).SCHEMA]))
    random.Random(1).shuffle(out)  # interleaved, as the markets' streams are on the wire
    return out


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def request_floor(
    args: argparse.Namespace, pool: list[Record], requests: int = 200, broker_pid: int = 0
) -> dict[str, Any]:
    """One produce request's round trip, the producer otherwise idle: one record to one
    partition, then one record to each of the scenario's partitions (what a request
    carries when every stream has something within a linger), ``requests`` times each,
    one request at a time. The round trip is the client's part (aiokafka compressing each
    batch at the connector's lz4 level, encoding the request, the socket, decoding the
    response and settling its futures) and the broker's; the CPU each spends per request
    is reported beside it (the broker's with ``broker_pid``, the embedded broker's
    process). A producer keeps one request in flight per broker, so a record can wait
    for one request and then ride the next: two of these and a linger are the floor of
    the send→ack latency."""
    first: dict[str, Record] = {}
    for record in pool:
        first.setdefault(record[0], record)
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        acks="all",
        enable_idempotence=args.idempotence,
        compression_type="lz4",
        linger_ms=0,
    )
    await producer.start()
    out: dict[str, Any] = {"requests": requests}

    def broker_cpu() -> float:
        return cpu_seconds(broker_pid) if broker_pid else 0.0

    try:
        for label, chosen in (("one", list(first.values())[:1]), ("all", list(first.values()))):
            lat = Latencies()
            client0, broker0 = cpu_s(), broker_cpu()
            for _ in range(requests):
                t = time.monotonic()
                acks = []
                for topic, key, value, headers in chosen:
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None, headers=headers)
                    acks.append(await producer.send_batch(batch, topic, partition=0))
                await asyncio.gather(*acks)
                lat.add(time.monotonic() - t)
                await asyncio.sleep(TICK_S / 5)
            client1, broker1 = cpu_s(), broker_cpu()
            out[label] = {
                "partitions": len(chosen),
                "p50_ms": lat.pct(0.5),
                "p99_ms": lat.pct(0.99),
                "client_cpu_ms": round(1000 * (client1 - client0) / requests, 2),
                "broker_cpu_ms": (
                    round(1000 * (broker1 - broker0) / requests, 2) if broker_pid else None
                ),
            }
    finally:
        await producer.stop()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    mix = json.loads(args.mix)
    pool = records(mix, args.markets.split(","), args.book_depth, args.topic_template, 4000)
    await ensure_topics(args.bootstrap, sorted({r[0] for r in pool}), args.partitions, 1)
    if args.client == "librdkafka":
        return await run_rdkafka(args, pool)
    # Before the request floor too: aiokafka's own lz4 level (9) costs ~20 µs a book record,
    # ~1 ms more for a request to all 52 partitions than the connector's level.
    use_compression_level("lz4", LZ4_LEVEL)
    if args.request_floor:
        return await request_floor(args, pool, broker_pid=args.broker_pid)
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        acks="all",
        enable_idempotence=args.idempotence,
        compression_type="lz4",
        linger_ms=LINGER_MS,
        max_batch_size=256 * 1024,
        max_request_size=max(256 * 1024, 16 << 20),
    )
    await producer.start()
    lat = Latencies()
    acked = failed = 0
    measuring = False

    def done(sent: float, fut: asyncio.Future[object]) -> None:
        nonlocal acked, failed
        if fut.cancelled() or fut.exception() is not None:
            failed += 1
            return
        acked += 1
        if measuring:
            lat.add(time.monotonic() - sent)

    async def send_for(seconds: float) -> int:
        sent = 0
        start = time.monotonic()
        i = 0
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * args.rate) - sent
            for _ in range(due):
                topic, key, value, headers = pool[i]
                i = (i + 1) % len(pool)
                t = time.monotonic()
                fut = await producer.send(topic, value, key=key, headers=headers)
                fut.add_done_callback(partial(done, t))
            sent += max(0, due)
            await asyncio.sleep(TICK_S)
        return sent

    try:
        await send_for(args.warmup)
        measuring = True
        acked0, cpu0, t0 = acked, cpu_s(), time.monotonic()
        sent = await send_for(args.duration)
        cpu1, t1 = cpu_s(), time.monotonic()
        await producer.flush()
        measuring = False
    finally:
        await producer.stop()
    return {
        "rate": args.rate,
        "client": "aiokafka",
        "sent_per_s": round(sent / (t1 - t0)),
        "acked_per_s": round((acked - acked0) / (t1 - t0)),
        "failed": failed,
        "cpu_s_per_1000": round(1000 * (cpu1 - cpu0) / sent, 4) if sent else float("nan"),
        "send_ack_p50_ms": lat.pct(0.5),
        "send_ack_p99_ms": lat.pct(0.99),
    }


class Latencies:
    """send→ack latencies in fixed buckets; percentiles interpolated within a bucket."""

    BOUNDS = (*(b / 1000 for b in (0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 25, 50, 100, 250, 500)),)

    def __init__(self) -> None:
        self.bounds = [*self.BOUNDS, float("inf")]
        self.counts = [0] * len(self.bounds)

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1

    def pct(self, q: float) -> float | None:
        """The q-quantile in ms, read as run.py reads the connector's histogram."""
        seconds = percentile({}, dict(zip(self.bounds, accumulate(self.counts), strict=True)), q)
        return None if seconds is None else round(seconds * 1000, 2)


async def run_rdkafka(args: argparse.Namespace, pool: list[Record]) -> dict[str, Any]:
    """The same with confluent-kafka (librdkafka), configured as the connector's
    CONNECTOR_KAFKA_CLIENT=librdkafka; delivery reports served by poll(0) each tick.
    CPU includes librdkafka's own threads (they share the pinned core)."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "acks": "all",
            "enable.idempotence": args.idempotence,
            "max.in.flight.requests.per.connection": 5 if args.idempotence else 1,
            "linger.ms": LINGER_MS,
            "batch.size": 256 * 1024,
            "compression.type": "lz4",
            "compression.level": LZ4_LEVEL,
            "queue.buffering.max.messages": 200_000,
        }
    )
    lat = Latencies()
    state = {"acked": 0, "failed": 0, "measuring": False}

    def done(sent: float, err: object, _msg: object) -> None:
        if err is not None:
            state["failed"] += 1
            return
        state["acked"] += 1
        if state["measuring"]:
            lat.add(time.monotonic() - sent)

    async def send_for(seconds: float) -> int:
        sent, i, start = 0, 0, time.monotonic()
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * args.rate) - sent
            for _ in range(due):
                topic, key, value, headers = pool[i]
                i = (i + 1) % len(pool)
                producer.produce(
                    topic,
                    value,
                    key,
                    headers=headers,
                    on_delivery=partial(done, time.monotonic()),
                )
            sent += max(0, due)
            producer.poll(0)
            await asyncio.sleep(TICK_S)
        return sent

    await send_for(args.warmup)
    state["measuring"] = True
    acked0, cpu0, t0 = state["acked"], cpu_s(), time.monotonic()
    sent = await send_for(args.duration)
    cpu1, t1 = cpu_s(), time.monotonic()
    producer.flush(30)
    return {
        "rate": args.rate,
        "client": "librdkafka",
        "sent_per_s": round(sent / (t1 - t0)),
        "acked_per_s": round((state["acked"] - acked0) / (t1 - t0)),
        "failed": state["failed"],
        "cpu_s_per_1000": round(1000 * (cpu1 - cpu0) / sent, 4) if sent else float("nan"),
        "send_ack_p50_ms": lat.pct(0.5),
        "send_ack_p99_ms": lat.pct(0.99),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--rate", type=float, default=5000)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--idempotence", action="store_true")
    p.add_argument("--mix", default='{"live_orders": 8, "order_book": 2, "live_trades": 1.5}')
    p.add_argument("--markets", default="btcusd,ethusd")
    p.add_argument("--book-depth", type=int, default=100)
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--client", choices=("aiokafka", "librdkafka"), default="aiokafka")
    p.add_argument("--topic-template", default="benchref.{exchange}.{channel}.{market}")
    p.add_argument(
        "--request-floor",
        action="store_true",
        help="instead: one produce request's round trip (see request_floor)",
    )
    p.add_argument(
        "--broker-pid",
        type=int,
        default=0,
        help="with --request-floor: the broker's process, to report its CPU per request",
    )
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
