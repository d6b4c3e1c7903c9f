"""Helpers for tests that run the connector as a real process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

from connector.encoding.avro import AvroDecoder, load_schemas
from connector.encoding.registry import SchemaRegistryClient
from connector.kafka.embedded import free_port
from connector.settings import INTERFACE_ENV_PREFIXES


def metric_value(text: str, line_start: str) -> float | None:
    """The value of the first /metrics line that starts with ``line_start``."""
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


@dataclass
class Running:
    proc: asyncio.subprocess.Process
    log_path: Path
    http_port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5)
            return r.text

    async def kill(self) -> int:
        """SIGKILL: no handler runs, nothing is flushed or closed."""
        self.proc.kill()
        return await self.proc.wait()

    async def stop(self, timeout: float = 40) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout)


@asynccontextmanager
async def connector_process(env: dict[str, str], tmp_path: Path) -> AsyncIterator[Running]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(INTERFACE_ENV_PREFIXES)}
    http_port = free_port()
    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)
    log_path = tmp_path / "connector.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "connector.cli",
            "run",
            env={**base, "CONNECTOR_HTTP_PORT": str(http_port), **env},
            stdout=log_file,
            stderr=log_file,
        )
        running = Running(proc, log_path, http_port)
        try:
            yield running
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def run_cli(*args: str, env: dict[str, str], timeout: float = 90) -> bytes:
    """``connector ARGS`` as a process with only ``env`` of the interface's settings;
    its standard output once it exits with status 0 within ``timeout``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(INTERFACE_ENV_PREFIXES)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "connector.cli",
        *args,
        env={**base, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out


@dataclass
class Consumed:
    # topic → list of (key, headers, schema, record) in offset order
    by_topic: dict[str, list[tuple[bytes, dict[str, bytes], str, dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(list)
    )

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.by_topic.values())


async def consume_until(
    bootstrap: str,
    pattern: str,
    expected: int,
    *,
    timeout: float = 90,
    registry_url: str | None = None,
    idle_s: float | None = None,
) -> Consumed:
    """Reads topics matching ``pattern`` and decodes with schemas/ (or the registry) until
    ``expected`` records arrived, or (with ``idle_s``) nothing new came for that long."""
    decoder = AvroDecoder(load_schemas().values())
    registry = SchemaRegistryClient(registry_url) if registry_url else None
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        metadata_max_age_ms=1000,
        group_id=None,
    )
    consumer.subscribe(pattern=pattern)
    out = Consumed()
    await consumer.start()
    last_new = asyncio.get_running_loop().time()
    try:
        async with asyncio.timeout(timeout):
            while out.total < expected:
                batch = await consumer.getmany(timeout_ms=500)
                now = asyncio.get_running_loop().time()
                if batch:
                    last_new = now
                elif idle_s is not None and out.total and now - last_new > idle_s:
                    break
                for tp, msgs in batch.items():
                    for m in msgs:
                        sid = decoder.schema_id(m.value)
                        if sid is not None and registry and not decoder.known_id(sid):
                            decoder.add_schema_id(sid, await registry.schema_by_id(sid))
                        schema, record = decoder.decode(m.value)
                        out.by_topic[tp.topic].append((m.key, dict(m.headers), schema, record))
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
        if registry:
            await registry.close()
    return out


async def consume(bootstrap: str, topic: str, n: int, timeout: float = 30) -> list[bytes]:
    """The raw values of one topic from its start, until ``n`` arrived or ``timeout``."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    out: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < n:
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    out.extend(m.value for m in msgs)
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return out
