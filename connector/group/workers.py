"""Worker processes (``CONNECTOR_WORKERS`` > 1): one replica, several cores.

The parent starts N ``connector run`` processes that join the same consumer group
(``CONNECTOR_GROUP_ID``), so the subscriptions are shared exactly as between replicas
(``connector.group.membership``). The parent owns nothing but the children: it starts the embedded
broker once if there is no external Kafka, gives each worker its own HTTP port
(``CONNECTOR_HTTP_PORT`` + index) and spool directory (``<spool_dir>/worker-<i>``),
restarts a worker that dies (with backoff; its subscriptions move to the others
meanwhile), and forwards SIGTERM/SIGINT: the workers drain, and the parent exits 0 when
they all did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from connector.kafka.embedded import EmbeddedBroker, port_or_free
from connector.settings import Settings
from connector.stream.supervisor import backoff_delay

log = logging.getLogger(__name__)


def worker_env(settings: Settings, index: int, bootstrap: str) -> dict[str, str]:
    env = dict(os.environ)
    env["CONNECTOR_WORKERS"] = "1"
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    env["CONNECTOR_HTTP_PORT"] = str(settings.http_port + index) if settings.http_port else "0"
    if settings.embedded:
        env["CONNECTOR_KAFKA_ENABLE_IDEMPOTENCE"] = "false"
    if settings.spool_dir is not None:
        env["CONNECTOR_SPOOL_DIR"] = str(settings.spool_dir / f"worker-{index}")
    return env


async def run_workers(settings: Settings, config_file: Path | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    broker: EmbeddedBroker | None = None
    bootstrap = settings.kafka_bootstrap_servers
    if bootstrap is None:
        broker = EmbeddedBroker(port_or_free(settings.embedded_broker_port))
        bootstrap = await broker.astart()
        log.info("embedded broker at %s, shared by the workers", bootstrap)
    args = [sys.executable, "-m", "connector.cli"]
    if config_file is not None:
        args += ["--config", str(config_file)]
    args.append("run")
    n = settings.workers
    procs: dict[int, asyncio.subprocess.Process] = {}
    attempts = dict.fromkeys(range(n), 0)

    async def start(i: int) -> None:
        procs[i] = await asyncio.create_subprocess_exec(
            *args, env=worker_env(settings, i, bootstrap)
        )
        log.info("worker %d started (pid %d)", i, procs[i].pid)

    try:
        for i in range(n):
            await start(i)
        while not stop.is_set():
            waits = {asyncio.create_task(p.wait()): i for i, p in procs.items()}
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({stopper, *waits}, return_when=asyncio.FIRST_COMPLETED)
            for task in (stopper, *waits):
                task.cancel()
            if stop.is_set():
                break
            for task in done:
                if task in waits:
                    i = waits[task]
                    delay = backoff_delay(attempts[i], 1.0, 30.0)
                    attempts[i] += 1
                    log.error(
                        "worker %d exited with %s; restarting in %.1fs (its subscriptions "
                        "move to the other workers meanwhile)",
                        i,
                        procs[i].returncode,
                        delay,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    if not stop.is_set():
                        await start(i)
        return await _stop_all(procs, settings.shutdown_timeout_s + 15)
    finally:
        for p in procs.values():
            if p.returncode is None:
                p.kill()
        if broker is not None:
            broker.stop()


async def _stop_all(procs: dict[int, asyncio.subprocess.Process], deadline_s: float) -> int:
    for p in procs.values():
        if p.returncode is None:
            p.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    codes = {}
    for i, p in procs.items():
        try:
            codes[i] = await asyncio.wait_for(
                p.wait(), max(0.1, deadline_s - (time.monotonic() - t0))
            )
        except TimeoutError:
            log.error("worker %d did not stop within %.0fs; killed", i, deadline_s)
            p.kill()
            codes[i] = await p.wait()
    bad = {i: c for i, c in codes.items() if c != 0}
    if bad:
        log.error("workers ended with %s", bad)
    return 0 if not bad else 1
