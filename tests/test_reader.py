"""A connection's reader shares the event loop: a burst of buffered frames must not hold
it (the producer's acks and linger timers, heartbeats and other connections run on it)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from itertools import pairwise
from typing import Any

import orjson
import pytest

from connector.events import MarketEvent
from connector.exchanges.registry import adapter_for
from connector.metrics import Metrics
from connector.settings import load_settings
from connector.stream import reader as supervisor
from connector.stream.arrival import StampedConnection
from connector.stream.connection import Connection
from connector.stream.link import Link as _Link
from connector.stream.link import Reconnect as _Reconnect
from connector.stream.recent import RecentTrades
from tests.frames import ORDER_BOOK


class _Burst:
    """A WebSocket whose frames are all buffered already, all arrived when it was made:
    iterating never suspends, as websockets' ``recv`` does not while messages are queued.
    ``arrived`` is ``StampedConnection``'s."""

    close_code = 1000
    close_reason = ""

    def __init__(self, frames: list[bytes]) -> None:
        self._frames = frames
        self.arrivals = deque([time.time()] * len(frames))
        self.unstamped = 0
        self.arrived = StampedConnection.arrived.__get__(self)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for frame in self._frames:
            yield frame


def _busy(seconds: float) -> None:
    """CPU work that holds the event loop for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class _Publisher:
    """Stands for the pipeline: each event costs ``cost_s`` of CPU, and records how many
    times the loop ran something else before it."""

    def __init__(self, loop_turns: list[int], cost_s: float) -> None:
        self.turns_seen: list[int] = []
        self.waits: list[float] = []  # receive_ts → publish, seconds
        self._loop_turns = loop_turns
        self._cost_s = cost_s

    async def publish(self, event: MarketEvent, receive_ts: float) -> None:
        self.turns_seen.append(self._loop_turns[0])
        self.waits.append(time.time() - receive_ts)
        _busy(self._cost_s)

    async def dead_letter(self, *args: Any) -> None:
        raise AssertionError("no frame here is invalid")


async def _read_burst(publisher: _Publisher, turns: list[int], turn_cost_s: float) -> _Burst:
    """100 buffered order books through ``Connection._read``, while another task takes a
    turn (costing ``turn_cost_s``) whenever the loop lets it."""
    settings = load_settings(markets=["btcusd"], channels=["order_book"])
    adapter = adapter_for("bitstamp", settings)
    metrics = Metrics()
    conn = Connection(
        0,
        [("order_book", "btcusd")],
        adapter,
        settings,
        publisher,  # type: ignore[arg-type]
        metrics,
        RecentTrades(),
    )
    frames = []
    for i in range(100):  # 100 frames x 0.2 ms: a 20 ms burst
        frame = orjson.loads(orjson.dumps(ORDER_BOOK))
        frame["data"]["microtimestamp"] = str(1_700_000_000_100_000 + i)
        frames.append(orjson.dumps(frame))
    burst = _Burst(frames)
    link = _Link(burst, adapter.new_protocol("c"), "c", time.monotonic())  # type: ignore[arg-type]

    async def other_work() -> None:
        while True:
            await asyncio.sleep(0)
            turns[0] += 1
            _busy(turn_cost_s)

    other = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    try:
        with pytest.raises(_Reconnect):  # the burst read, the socket "closed"
            await conn.reader.read(link)
    finally:
        other.cancel()
    return burst


async def test_a_burst_of_buffered_frames_lets_the_loop_run_between_slices() -> None:
    turns = [0]
    publisher = _Publisher(turns, cost_s=0.0002)
    await _read_burst(publisher, turns, turn_cost_s=0.0)
    seen = publisher.turns_seen
    assert len(seen) == 100
    # The loop ran other work during the burst, about once a slice (20 ms / 1 ms) ...
    assert seen[-1] - seen[0] >= 20 * 0.001 / supervisor.READ_SLICE_S / 2
    # ... and the reader never held it for long: no run of events without a turn longer
    # than a slice's worth (plus the event that crosses the slice's end).
    longest = max(sum(1 for _ in run) for run in _runs(seen))
    assert longest <= supervisor.READ_SLICE_S / 0.0002 + 2


def _runs(values: list[int]) -> list[list[int]]:
    out: list[list[int]] = [[values[0]]]
    for v in values[1:]:
        if v == out[-1][-1]:
            out[-1].append(v)
        else:
            out.append([v])
    return out


async def test_a_frame_read_before_the_loop_ran_other_work_keeps_its_receive_time() -> None:
    # The frame after each slice waits while the loop runs other work (2 ms here): that
    # wait is part of its receive→ack latency, so its receive time is not taken again.
    turns = [0]
    publisher = _Publisher(turns, cost_s=0.0002)
    await _read_burst(publisher, turns, turn_cost_s=0.002)
    after_a_turn = [
        wait
        for previous, turn, wait in zip(
            publisher.turns_seen, publisher.turns_seen[1:], publisher.waits[1:], strict=False
        )
        if turn != previous
    ]
    assert after_a_turn, "the loop ran no other work during the burst"
    assert min(after_a_turn) >= 0.002


async def test_a_frame_that_waited_behind_a_burst_counts_the_wait() -> None:
    # All 100 frames came off the socket at once; each is read after the ones before it
    # (0.2 ms each). Their receive time is the arrival, so the wait behind the burst is in
    # the latency: ~20 ms for the last one, not the ~0 a time taken at the read would give.
    turns = [0]
    publisher = _Publisher(turns, cost_s=0.0002)
    burst = await _read_burst(publisher, turns, turn_cost_s=0.0)
    assert not burst.arrivals  # one arrival taken per frame read
    waits = publisher.waits
    assert len(waits) == 100
    assert waits[-1] >= 99 * 0.0002
    assert all(later >= earlier for earlier, later in pairwise(waits))
