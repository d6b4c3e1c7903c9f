"""The connector's HTTP endpoints, served from its own event loop (aiohttp).

- ``/metrics``: Prometheus text format.
- ``/livez``: 200 while the event loop answers (the handler runs on that loop, so a
  blocked or dead loop fails the probe; no other check, so a Kafka or exchange outage
  never gets a healthy pod restarted).
- ``/readyz``: 200 when the producer is connected and taking records and every
  configured subscription is live and not stale; else 503. The JSON body says which
  checks fail, e.g. ``{"ready": false, "kafka": "ok", "not_live": ["live_orders_btcusd"],
  "stale": []}``.

The server starts before anything else, so probes answer during start-up (``/readyz``
says ``"starting"`` until the producer and connections exist).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connector.metrics import Metrics

log = logging.getLogger(__name__)


class _Sub(Protocol):
    name: str
    channel: str
    confirmed: bool
    last_event: float  # monotonic


class _Sink(Protocol):
    @property
    def kafka_problem(self) -> str | None: ...


@dataclass
class Health:
    """What /readyz looks at; the app fills it in as parts start."""

    stale_after_s: dict[str, float]
    sink: _Sink | None = None
    subscriptions: Callable[[], Iterable[_Sub]] | None = None
    stopping: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        if self.stopping:
            return False, {"ready": False, "state": "stopping"}
        if self.sink is None or self.subscriptions is None:
            return False, {"ready": False, "state": "starting"}
        now = time.monotonic()
        not_live, stale = [], []
        for sub in self.subscriptions():
            if not sub.confirmed:
                not_live.append(sub.name)
                continue
            threshold = self.stale_after_s.get(sub.channel, 0.0)
            if threshold and now - sub.last_event > threshold:
                stale.append(sub.name)
        kafka = self.sink.kafka_problem or "ok"
        ready = kafka == "ok" and not not_live and not stale
        body = {
            "ready": ready,
            "state": "running",
            "kafka": kafka,
            "not_live": sorted(not_live),
            "stale": sorted(stale),
        }
        return ready, body


class HttpServer:
    def __init__(self, port: int, metrics: Metrics, health: Health) -> None:
        self.port = port
        self._metrics = metrics
        self._health = health
        self._runner: web.AppRunner | None = None
        self._last_ready: bool | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_handler)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, port=self.port, reuse_address=True)
        await site.start()
        log.info("HTTP on :%d (/metrics, /livez, /readyz)", self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics_handler(self, _: web.Request) -> web.Response:
        self._metrics.refresh()
        self._metrics.ready.set(1 if self._health.readiness()[0] else 0)
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _livez(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, body = self._health.readiness()
        if ready != self._last_ready:
            self._last_ready = ready
            log.info("readiness: %s", "ready" if ready else f"not ready {body}")
        return web.json_response(body, status=200 if ready else 503)
