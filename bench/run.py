"""End-to-end benchmark: simulator → connector (a real process) → a real broker → a
counting consumer. One command: ``make bench`` (or ``python bench/run.py``).

On a 2-core machine the connector is pinned to core 1 and everything else (simulator,
broker, consumer) to core 0, so "CPU per message" is the connector's alone. For each
offered rate it reports the sustained delivered rate, connector CPU seconds per 1 000
messages, messages per second per core, receive→ack latency percentiles from the
connector's own histogram, RSS, and whether it kept up. The same steps again with the
write-ahead spool on (every record written to disk before it is sent: the cost of crash
safety). Then a memory scenario: 250 markets x 6 channels at a quiet rate, steady-state
RSS. Results: bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connector.embedded import EmbeddedBroker, free_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
# The broker floats: pinned next to the simulator it starves and its acks dominate latency.
BROKER_CORES = {int(c) for c in os.environ.get("BENCH_BROKER_CORES", "0,1").split(",")}
# Relative per-subscription rates after Bitstamp's observed rates (shared/bitstamp-v2.md):
# live_orders 10-45/s, order books 5-7/s, diffs 1.5-5/s, trades in bursts, funding ~1/s.
MIX = {
    "live_orders": 8.0,
    "order_book": 2.0,
    "detail_order_book": 2.0,
    "diff_order_book": 1.5,
    "live_trades": 1.5,
    "funding_rate": 0.5,
}
MARKETS = [
    "btcusd",
    "ethusd",
    "xrpusd",
    "solusd",
    "ltcusd",
    "adausd",
    "dogeusd",
    "linkusd",
    "btcusd-perp",
    "ethusd-perp",
]


def subscriptions(markets: list[str]) -> list[tuple[str, str]]:
    return [
        (c, m)
        for m in markets
        for c in MIX
        if not (c == "funding_rate" and not m.endswith("-perp"))
    ]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pin(pid: int, cores: set[int]) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, cores & os.sched_getaffinity(0) or os.sched_getaffinity(0))


async def scrape(client: httpx.AsyncClient, port: int) -> dict[str, Any]:
    text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=10)).text
    buckets: dict[float, float] = {}
    published = 0.0
    for line in text.splitlines():
        if line.startswith("connector_receive_to_ack_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("connector_events_published_total{"):
            published += float(line.rsplit(" ", 1)[1])
    return {"buckets": buckets, "published": published}


def percentile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """q-quantile (seconds) of the observations between two scrapes, interpolated."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            span = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / span if span else 1)
        prev_bound, prev_count = bound, count
    return bounds[-2]


def max_bucket(before: dict[float, float], after: dict[float, float]) -> float | None:
    """Upper bound of the highest non-empty bucket (the histogram's view of the max)."""
    top, below = None, 0.0
    for bound in sorted(after):
        count = after[bound] - before.get(bound, 0.0)
        if count > below:
            top = bound
        below = count
    return top


class Counter:
    """Counts records on the benchmark topics (a consumer, like a user's)."""

    def __init__(self, bootstrap: str, pattern: str) -> None:
        self.n = 0
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            metadata_max_age_ms=2000,
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=16 << 20,
        )
        self._consumer.subscribe(pattern=pattern)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200, max_records=50_000)
            self.n += sum(len(v) for v in batch.values())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


@dataclass
class Step:
    offered_target: float
    offered: float
    delivered: float
    cpu_s_per_1000: float
    msgs_per_core_s: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    rss_mb: float
    kept_up: bool


def connector_env(
    bootstrap: str,
    embedded: bool,
    sim_port: int,
    http_port: int,
    markets: list[str],
    extra: dict[str, str],
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CONNECTOR_", "BITSTAMP_", "KAFKA_", "SCHEMA_REGISTRY"))
    }
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "CONNECTOR_KAFKA_ENABLE_IDEMPOTENCE": "false" if embedded else "true",
            "BITSTAMP_WS_URL": f"ws://127.0.0.1:{sim_port}",
            "BITSTAMP_REST_URL": f"http://127.0.0.1:{sim_port}",
            "CONNECTOR_MARKETS": ",".join(markets),
            "CONNECTOR_CHANNELS": ",".join(MIX),
            "CONNECTOR_HTTP_PORT": str(http_port),
            "CONNECTOR_TOPIC_TEMPLATE": "bench.{exchange}.{channel}.{market}",
            "CONNECTOR_LOG_LEVEL": "WARNING",
            **extra,
        }
    )
    return env


def start_sim(port: int, markets: list[str], rate: float, depth: int) -> subprocess.Popen[bytes]:
    mix = ",".join(f"{k}={v}" for k, v in MIX.items())
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connector.cli",
            "simulate",
            "--port",
            str(port),
            "--markets",
            ",".join(markets),
            "--rate",
            str(rate),
            "--mix",
            mix,
            "--book-depth",
            str(depth),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pin(proc.pid, {0})
    return proc


async def wait_http(client: httpx.AsyncClient, url: str, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            await client.get(url, timeout=2)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
        else:
            return


def launch_connector(env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    """The connector as a real process on core 1; its log goes to bench/<log_name>."""
    with (ROOT / "bench" / log_name).open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "connector.cli", "run"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    pin(proc.pid, {1})
    return proc


def stop_all(*procs: subprocess.Popen[bytes] | None) -> None:
    for proc in procs:
        if proc is None:
            continue
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def sim_sent(client: httpx.AsyncClient, port: int) -> int:
    stats = (await client.get(f"http://127.0.0.1:{port}/_sim/stats", timeout=10)).json()
    return int(sum(stats.values()))


async def throughput(
    args: argparse.Namespace,
    bootstrap: str,
    embedded: bool,
    rates: list[float],
    extra: dict[str, str],
    log_name: str = "connector.log",
) -> list[Step]:
    markets = MARKETS
    subs = subscriptions(markets)
    weight = sum(MIX[c] for c, _ in subs)
    sim_port, http_port = free_port(), free_port()
    sim = start_sim(sim_port, markets, rates[0] / weight, args.book_depth)
    steps: list[Step] = []
    conn = None
    # Each scenario writes its own topics, so a counter never sees another's records.
    prefix = extra.get("CONNECTOR_TOPIC_TEMPLATE", "bench.").split(".", 1)[0]
    counter = Counter(bootstrap, rf"^{prefix}\..*")
    async with httpx.AsyncClient() as client:
        try:
            await wait_http(client, f"http://127.0.0.1:{sim_port}/_sim/stats")
            conn = launch_connector(
                connector_env(
                    bootstrap, embedded, sim_port, http_port, markets, {**args.env, **extra}
                ),
                log_name,
            )
            await wait_http(client, f"http://127.0.0.1:{http_port}/metrics")
            await counter.start()
            for rate in rates:
                await client.get(
                    f"http://127.0.0.1:{sim_port}/_sim/rate", params={"value": rate / weight}
                )
                await asyncio.sleep(args.warmup)
                s0, c0, m0 = (
                    await sim_sent(client, sim_port),
                    counter.n,
                    await scrape(client, http_port),
                )
                cpu0, t0 = cpu_seconds(conn.pid), time.monotonic()
                await asyncio.sleep(args.duration)
                s1, c1, m1 = (
                    await sim_sent(client, sim_port),
                    counter.n,
                    await scrape(client, http_port),
                )
                cpu1, t1 = cpu_seconds(conn.pid), time.monotonic()
                elapsed = t1 - t0
                offered, delivered = (s1 - s0) / elapsed, (c1 - c0) / elapsed
                published = m1["published"] - m0["published"]
                cpu = cpu1 - cpu0
                backlog = s1 - c1
                step = Step(
                    offered_target=rate,
                    offered=round(offered),
                    delivered=round(delivered),
                    cpu_s_per_1000=round(1000 * cpu / published, 4) if published else float("nan"),
                    msgs_per_core_s=round(published / cpu) if cpu else 0,
                    p50_ms=_ms(percentile(m0["buckets"], m1["buckets"], 0.50)),
                    p99_ms=_ms(percentile(m0["buckets"], m1["buckets"], 0.99)),
                    max_ms=_ms(max_bucket(m0["buckets"], m1["buckets"])),
                    rss_mb=round(rss_mb(conn.pid), 1),
                    kept_up=delivered >= 0.97 * offered and backlog < max(1000, offered),
                )
                steps.append(step)
                print(
                    f"  offered {step.offered:>7}/s delivered {step.delivered:>7}/s "
                    f"cpu {step.cpu_s_per_1000:.3f}s/1k p99 {step.p99_ms} ms "
                    f"kept up {step.kept_up} (backlog {backlog})",
                    flush=True,
                )
                if (
                    not step.kept_up
                    and offered >= 0.9 * rate
                    and len(steps) > 1
                    and not steps[-2].kept_up
                ):
                    break
        finally:
            await counter.stop()
            stop_all(conn, sim)
    return steps


async def memory(args: argparse.Namespace, bootstrap: str, embedded: bool) -> dict[str, Any]:
    markets = [f"m{i:03d}usd-perp" for i in range(args.memory_markets)]
    subs = subscriptions(markets)
    sim_port, http_port = free_port(), free_port()
    sim = start_sim(sim_port, markets, args.memory_rate, args.book_depth)
    conn = None
    async with httpx.AsyncClient() as client:
        try:
            await wait_http(client, f"http://127.0.0.1:{sim_port}/_sim/stats")
            env = connector_env(
                bootstrap,
                embedded,
                sim_port,
                http_port,
                markets,
                {**args.env, "CONNECTOR_TOPIC_TEMPLATE": "benchmem.{exchange}.{channel}.{market}"},
            )
            conn = launch_connector(env, "memory.log")
            await wait_http(client, f"http://127.0.0.1:{http_port}/metrics", within_s=120)
            samples = []
            for _ in range(args.memory_seconds):
                await asyncio.sleep(1)
                samples.append(rss_mb(conn.pid))
            m = await scrape(client, http_port)
        finally:
            stop_all(conn, sim)
    steady = samples[len(samples) // 2 :]
    return {
        "markets": len(markets),
        "subscriptions": len(subs),
        "published": int(m["published"]),
        "rss_mb_steady": round(max(steady), 1),
        "rss_mb_samples": [round(s, 1) for s in samples],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def table(steps: list[Step]) -> str:
    head = (
        "offered/s",
        "delivered/s",
        "CPU s/1k msg",
        "msg/s/core",
        "p50 ms",
        "p99 ms",
        "max ms (bucket)",
        "RSS MB",
        "kept up",
    )
    rows = [head] + [
        (
            f"{s.offered}",
            f"{s.delivered}",
            f"{s.cpu_s_per_1000:.3f}",
            f"{s.msgs_per_core_s}",
            f"{s.p50_ms}",
            f"{s.p99_ms}",
            f"{s.max_ms}",
            f"{s.rss_mb}",
            "yes" if s.kept_up else "NO",
        )
        for s in steps
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--rates",
        default="2000,5000,10000,15000,20000,25000,30000",
        help="offered messages per second, in steps",
    )
    p.add_argument("--duration", type=float, default=10, help="seconds measured per step")
    p.add_argument("--warmup", type=float, default=3, help="seconds before measuring a step")
    p.add_argument("--book-depth", type=int, default=100)
    p.add_argument("--memory-markets", type=int, default=250)
    p.add_argument(
        "--memory-rate",
        type=float,
        default=0.2,
        help="events/s per subscription in the memory scenario",
    )
    p.add_argument("--memory-seconds", type=int, default=40)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument(
        "--wal-rates",
        default="2000,5000,10000",
        help="rate steps of the write-ahead spool scenario (empty: skip it)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ENV=VALUE",
        help="extra connector setting, e.g. --set CONNECTOR_KAFKA_LINGER_MS=10",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = p.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    args.wal_rates = [float(r) for r in args.wal_rates.split(",") if r]
    args.env = dict(item.split("=", 1) for item in args.set)

    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    if not bootstrap:
        broker = EmbeddedBroker()
        bootstrap = broker.start()
        if broker._proc is not None:
            pin(broker._proc.pid, BROKER_CORES)
    try:
        print(
            f"broker: {bootstrap} ({'embedded Tansu' if broker else 'external'}); "
            f"cores: {os.cpu_count()}; connector pinned to core 1"
        )
        steps = await throughput(args, bootstrap, broker is not None, args.rates, {})
        wal: list[Step] = []
        if args.wal_rates:
            print("write-ahead spool (CONNECTOR_SPOOL_WRITE_AHEAD=true):", flush=True)
            with tempfile.TemporaryDirectory(prefix="bench-spool-") as spool:
                wal = await throughput(
                    args,
                    bootstrap,
                    broker is not None,
                    args.wal_rates,
                    {
                        "CONNECTOR_SPOOL_DIR": spool,
                        "CONNECTOR_SPOOL_WRITE_AHEAD": "true",
                        "CONNECTOR_TOPIC_TEMPLATE": "benchwal.{exchange}.{channel}.{market}",
                    },
                    "connector-wal.log",
                )
        mem = None if args.skip_memory else await memory(args, bootstrap, broker is not None)
    finally:
        if broker:
            broker.stop()
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "broker": "embedded Tansu" if broker else "external",
        "mix": MIX,
        "markets": MARKETS,
        "book_depth": args.book_depth,
        "settings": args.env,
        "steps": [asdict(s) for s in steps],
        "write_ahead_steps": [asdict(s) for s in wal],
        "memory": mem,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(steps))
    if wal:
        print("\nwith the write-ahead spool:")
        print(table(wal))
    if mem:
        print(
            f"\nmemory: {mem['markets']} markets x 6 channels = {mem['subscriptions']} "
            f"subscriptions, {mem['published']} events published, steady RSS "
            f"{mem['rss_mb_steady']} MB"
        )
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
