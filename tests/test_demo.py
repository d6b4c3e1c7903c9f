"""``connector demo`` (``make demo``): offline, one command, Ctrl-C stops everything."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys

import pytest

from connector.kafka.embedded import free_port
from connector.settings import INTERFACE_ENV_PREFIXES

pytestmark = pytest.mark.integration


async def demo(*args: str, port: int) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith(INTERFACE_ENV_PREFIXES)}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "connector.cli",
        "demo",
        *args,
        env={**env, "CONNECTOR_EMBEDDED_BROKER_PORT": str(port), "CONNECTOR_HTTP_PORT": "0"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def trades(out: bytes) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert lines and all(line["schema"] == "connector.Trade" for line in lines)
    return lines


async def test_demo_prints_trades_and_ctrl_c_stops_everything() -> None:
    proc = await demo(port=free_port())
    assert proc.stdout is not None and proc.stderr is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 60)
    proc.send_signal(signal.SIGINT)
    rest, err = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert len(trades(first + rest)) >= 1
    log = err.decode()
    assert "connector tail" in log  # says how to read the broker from another shell
    assert "producer closed:" in log and "0 undelivered" in log
    assert "embedded broker on" in log and "stopped" in log  # nothing left running


async def test_a_taken_broker_port_falls_back_to_a_free_one_and_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await demo("--max", "3", port=port)
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert len(trades(out)) == 3
    assert f"port {port} is taken" in err.decode()
