"""A TCP proxy for network fault injection: ``cut()`` drops every connection and refuses
new ones (the peer looks down), ``restore()`` accepts again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from connector.kafka.embedded import EmbeddedBroker, free_port


class FaultyLink:
    def __init__(self, target_port: int, listen_port: int) -> None:
        self.target_port = target_port
        self.listen_port = listen_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        await asyncio.gather(*pumps, return_exceptions=True)
        self._tasks.difference_update(pumps)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()


@contextlib.asynccontextmanager
async def cuttable_broker() -> AsyncIterator[tuple[EmbeddedBroker, FaultyLink]]:
    """An embedded broker reached only through a ``FaultyLink`` (it advertises the
    link's port, so every client connection goes through it). ``link.cut()`` makes it
    unreachable while it keeps its data."""
    link_port = free_port()
    broker = EmbeddedBroker(advertised_port=link_port)
    broker.start()
    link = FaultyLink(broker.port, link_port)
    await link.restore()
    try:
        yield broker, link
    finally:
        await link.cut()
        broker.stop()
