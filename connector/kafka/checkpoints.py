"""Restart checkpoints: the last trade published per trade topic, read back from Kafka.

A fresh pod has no local state, but the trade topics know what was published. At start
the connector reads the last record of each trade topic (every exchange's channels whose
record is ``connector.Trade``; every partition) and,
with a spool, the last trade an earlier run left there (spooled, not yet in Kafka: it
is newer), and treats the time since then as a gap (reason ``restart``): trades since that id are
backfilled like after any other gap, so a restart or rolling deploy loses no trade.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from connector.encoding.avro import AvroDecoder
from connector.encoding.registry import SchemaRegistryClient
from connector.errors import SchemaError
from connector.kafka.spool import SpooledRecord
from connector.kafka.topics import read_to_end

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    trade_id: int  # 0 for records that are not trades
    exchange_ts_us: int


async def last_trades(
    bootstrap: str,
    topics: dict[str, str],
    decoder: AvroDecoder,
    registry: SchemaRegistryClient | None = None,
    *,
    timeout_s: float = 20.0,
    client: dict[str, Any] | None = None,
) -> dict[str, Checkpoint]:
    """``topics``: key → a trade topic. Returns key → the last trade published there.
    Unreadable state is logged and skipped (the connector then starts without a
    restart backfill for that market, as it would on a first start)."""
    out = await last_records(
        bootstrap, topics, decoder, registry, timeout_s=timeout_s, client=client
    )
    for market, cp in sorted(out.items()):
        log.info("restart checkpoint %s: last published trade %d", market, cp.trade_id)
    return out


async def last_records(
    bootstrap: str,
    topics: dict[K, str],
    decoder: AvroDecoder,
    registry: SchemaRegistryClient | None = None,
    *,
    timeout_s: float = 20.0,
    client: dict[str, Any] | None = None,
) -> dict[K, Checkpoint]:
    """``topics``: key → topic. Returns key → the newest record in it (every partition),
    as (trade id or 0, exchange time)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        **(client or {}),
    )
    out: dict[K, Checkpoint] = {}
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        by_topic = {t: m for m, t in topics.items()}
        parts = []
        for topic in topics.values():
            for p in consumer.partitions_for_topic(topic) or ():
                parts.append(TopicPartition(topic, p))
        if not parts:
            return {}
        consumer.assign(parts)
        # The listed end is where reading starts, not where it stops (read_to_end).
        ends = await asyncio.wait_for(consumer.end_offsets(parts), timeout_s)
        starts = {tp: end - 1 for tp, end in ends.items() if end > 0}
        async with asyncio.timeout(timeout_s):
            read = await read_to_end(consumer, starts)
        for tp, msgs in read.items():
            if not msgs:
                continue
            cp = await decode_checkpoint(msgs[-1].value or b"", decoder, registry)
            key = by_topic[tp.topic]
            if cp and (key not in out or _newer(cp, out[key])):
                out[key] = cp
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("could not read restart checkpoints from Kafka (%r); no restart backfill", exc)
    finally:
        try:
            await asyncio.wait_for(consumer.stop(), 10)
        except (KafkaError, OSError, TimeoutError):
            log.debug("checkpoint consumer did not stop cleanly", exc_info=True)
    return out


def _newer(a: Checkpoint, b: Checkpoint) -> bool:
    return (a.trade_id, a.exchange_ts_us) > (b.trade_id, b.exchange_ts_us)


async def from_spool(
    records: Iterable[SpooledRecord],
    topics: dict[str, str],
    decoder: AvroDecoder,
    registry: SchemaRegistryClient | None = None,
) -> dict[str, Checkpoint]:
    """key → the last trade an earlier run left in the spool for that key's topic (not
    yet in Kafka)."""
    by_topic = {t: m for m, t in topics.items()}
    last: dict[str, bytes] = {}
    for rec in records:
        if rec.topic in by_topic:
            last[by_topic[rec.topic]] = rec.value
    out = {}
    for market, value in last.items():
        cp = await decode_checkpoint(value, decoder, registry)
        if cp is not None:
            out[market] = cp
            log.info("restart checkpoint %s: last spooled trade %d", market, cp.trade_id)
    return out


def latest(*sources: dict[str, Checkpoint]) -> dict[str, Checkpoint]:
    out: dict[str, Checkpoint] = {}
    for source in sources:
        for market, cp in source.items():
            if market not in out or cp.trade_id > out[market].trade_id:
                out[market] = cp
    return out


async def decode_checkpoint(
    value: bytes, decoder: AvroDecoder, registry: SchemaRegistryClient | None
) -> Checkpoint | None:
    try:
        sid = decoder.schema_id(value)
        if sid is not None and registry is not None and not decoder.known_id(sid):
            decoder.add_schema_id(sid, await registry.schema_by_id(sid))
        _, record = decoder.decode(value)
        trade_id = record.get("trade_id")
        # Numeric trade ids (Bitstamp, Binance, Bitfinex) are positions; others (Bybit's
        # UUIDs) only give the time.
        numeric = isinstance(trade_id, str) and trade_id.isdigit()
        return Checkpoint(int(str(trade_id)) if numeric else 0, int(record["exchange_ts_us"]))
    except (SchemaError, KeyError, ValueError, EOFError) as exc:
        log.warning("last trade record is unreadable (%s); skipped", exc)
        return None
