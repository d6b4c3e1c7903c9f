"""The base every simulated exchange stands on (tests, ``connector simulate``, the demo).

A WebSocket server and, beside it, an HTTP server for the exchange's REST routes
(recovery, tokens), both on local ports (0: a free one); background tasks that make the
markets move; refusing the next handshakes with an HTTP status (a fault). Each exchange's
simulator (``connector/exchanges/<name>/simulator.py``) renders its own protocol.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

log = logging.getLogger(__name__)


def json_response(body: Any, status: HTTPStatus = HTTPStatus.OK) -> Response:
    """An HTTP answer on the WebSocket port (a refused handshake, a REST route)."""
    data = orjson.dumps(body)
    headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, data)


class SimServer:
    name = ""  # for log lines
    max_size: int | None = 1 << 20  # largest client frame taken

    def __init__(self, host: str = "127.0.0.1", port: int = 0, rest_port: int = 0) -> None:
        self.host = host
        self.port = port
        self.rest_port = rest_port
        self.refuse: list[int] = []  # HTTP statuses for the next handshakes
        self.handshakes_refused = 0
        self._server: Server | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._tls: ssl.SSLContext | None = None

    def use_tls(self, certfile: str, keyfile: str) -> None:
        """Serve wss:// and https:// (clients that only speak TLS; certificates of a
        throwaway CA in tests and the benchmark)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certfile, keyfile)
        self._tls = context

    # --- what each exchange's simulator supplies ----------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        raise NotImplementedError

    async def _rest_http(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "no such route"}, status=404)

    def refused(self, status: HTTPStatus) -> Response:
        """The answer to a refused handshake, as the exchange words it."""
        return json_response({"error": status.phrase}, status)

    async def _http_on_ws_port(self, request: Request) -> Response | None:
        """A plain HTTP request on the WebSocket port (None: not served)."""
        return None

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """Tasks that run while the server is up (markets that move)."""
        return []

    # --- lifecycle ----------------------------------------------------------------------
    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return await self._http_on_ws_port(request)
        if self.refuse:
            self.handshakes_refused += 1
            return self.refused(HTTPStatus(self.refuse.pop(0)))
        return None

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,
            max_size=self.max_size,
            ssl=self._tls,
        )
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._rest_http)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.rest_port, ssl_context=self._tls)
        await site.start()
        self.rest_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._tasks = [asyncio.create_task(work) for work in self.background()]
        log.info("simulated %s on %s (REST %s)", self.name, self.ws_url, self.rest_url)

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self._tls else 'ws'}://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.host}:{self.rest_port}"

    async def serve_forever(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._runner is not None:
            await self._runner.cleanup()
