"""A message's arrival is noted when websockets parses it off the socket, once per
message, in order: a real server and client, no fakes (the stamp rides on websockets'
connection internals, so an upgrade that changes them fails here)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from connector.stream.arrival import StampedConnection

MESSAGES = ["one", b"two", "three"]


async def _server_sends(ws: ServerConnection) -> None:
    for message in MESSAGES[:2]:
        await ws.send(message)
    await ws.send(["thr", "ee"])  # one message in two frames: one arrival, at its end
    await ws.wait_closed()


@asynccontextmanager
async def _client() -> AsyncIterator[StampedConnection]:
    """A connection to a local server that sends ``MESSAGES`` and waits."""
    async with serve(_server_sends, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with websockets.connect(
            f"ws://127.0.0.1:{port}", create_connection=StampedConnection
        ) as client:
            assert isinstance(client, StampedConnection)
            yield client


async def test_each_message_keeps_the_time_it_came_off_the_socket() -> None:
    async with _client() as client:
        for _ in range(100):  # until the three messages are parsed and queued
            if len(client.arrivals) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(client.arrivals) == 3
        queued_by = time.time()
        await client.pong()  # control frames are not messages: no arrival
        await asyncio.wait_for(client.ping(), 5)  # the server's pong: none either
        assert len(client.arrivals) == 3

        await asyncio.sleep(0.05)  # the reader is late
        received = []
        for _ in MESSAGES:
            message = await client.recv()
            now = time.time()
            received.append((message, client.arrived(now), now))

    assert [m for m, _, _ in received] == MESSAGES
    stamps = [stamp for _, stamp, _ in received]
    assert stamps == sorted(stamps)
    for _, stamp, read_at in received:
        assert stamp <= queued_by  # when it arrived, not when it was read ...
        assert read_at - stamp >= 0.05  # ... so the reader's lateness is counted
    assert not client.arrivals
    assert client.unstamped == 0


async def test_a_message_read_with_no_arrival_noted_takes_the_read_time_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What a websockets that stopped calling process_event per frame would do.
    async with _client() as client:
        for _ in MESSAGES:
            await client.recv()
            client.arrivals.clear()
            with caplog.at_level(logging.WARNING, logger="connector.stream.arrival"):
                assert client.arrived(123.0) == 123.0
    assert client.unstamped == len(MESSAGES)
    warnings = [r for r in caplog.records if "no arrival time noted" in r.getMessage()]
    assert len(warnings) == 1  # once per connection, then counted
