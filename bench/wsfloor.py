"""The read side's floor beside the connector: a bare websockets client that subscribes to
the simulator's stream as the connector does (same URL, channels, markets, websockets
settings) and reads every frame with ``async for``, doing nothing with it. No decoding, no
encoding, no Kafka: what reading the stream costs on this machine with websockets and
asyncio (bench/run.py measures its CPU per frame at the rates users run).

    python bench/wsfloor.py WS_URL CHANNEL_MARKET[,CHANNEL_MARKET...]

Runs until SIGTERM; prints the frames it read, on stderr, as it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import orjson
import websockets


async def main(url: str, names: list[str]) -> int:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    frames = 0
    async with websockets.connect(url, compression=None, max_size=2**26, max_queue=64) as ws:
        for name in names:
            await ws.send(orjson.dumps({"event": "bts:subscribe", "data": {"channel": name}}))

        async def read() -> None:
            nonlocal frames
            async for _ in ws:
                frames += 1

        reader = asyncio.create_task(read())
        await stop.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    print(f"{frames} frames read", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2].split(","))))
