"""One WebSocket connection and its state, shared by the parts of ``Connection``.

A ``Link`` is one socket: its protocol object, heartbeat counters, the make-before-break
state when it is the old or the new side of a handover, and the pacing of the control
frames sent on it. ``Reconnect`` ends a session; ``backoff_delay`` spaces the attempts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connector.events import MarketEvent, Resync
    from connector.exchanges.base import WireProtocol
    from connector.stream.arrival import StampedConnection
    from connector.stream.gaps import SubState
    from connector.stream.overlap import Dedup, Tail


class Reconnect(Exception):
    """Ends one connection's session; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.immediate = reason == "request_reconnect"


def backoff_delay(attempt: int, initial: float, cap: float) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, initial·2^attempt))."""
    return random.uniform(0, min(cap, initial * 2 ** min(attempt, 32)))


@dataclass(eq=False)
class Link:
    """One WebSocket connection and its reader's state."""

    ws: StampedConnection
    decoder: WireProtocol
    cid: str
    opened: float  # monotonic
    control_rate: float = 0.0  # control frames per second the exchange takes (0: no limit)
    next_send: float = 0.0  # monotonic: control frames are paced to the exchange's limit
    paused: bool = False  # the exchange announced maintenance: silence is expected
    reader: asyncio.Task[None] | None = None
    last_frame_ts: float = 0.0  # wall clock
    # heartbeats: time of the oldest unanswered one (0: none), and counts for the barrier
    hb_pending_since: float = 0.0
    hb_sent: int = 0
    hb_replies: int = 0
    barrier: int = 0  # stop reading after this many heartbeat replies (0: no barrier)
    stop_reading: bool = False
    # make-before-break: wanted (reason, retry time), the old side's tail, the
    # successor's buffer and confirmations, and the filters once it took over
    handover_reason: str = ""
    handover_retry_at: float = 0.0
    handover_attempts: int = 0
    handover_wanted: asyncio.Event = field(default_factory=asyncio.Event)
    tail: Tail | None = None
    buffering: bool = False
    buffer: deque[tuple[SubState | None, MarketEvent, float]] = field(default_factory=deque)
    required: set[str] = field(default_factory=set)
    confirmed: set[str] = field(default_factory=set)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failure: str = ""
    dedup: dict[str, Dedup] | None = None
    resyncs: list[Resync] = field(default_factory=list)  # breaks seen while buffering

    def want_handover(self, reason: str) -> None:
        self.handover_reason = reason
        self.handover_wanted.set()

    async def send(self, frames: list[str]) -> None:
        """Sends control frames, paced to the exchange's limit on incoming messages."""
        rate = self.control_rate
        for frame in frames:
            if rate:
                now = time.monotonic()
                wait = self.next_send - now
                self.next_send = max(now, self.next_send) + 1.0 / rate
                if wait > 0:
                    await asyncio.sleep(wait)
            await self.ws.send(frame)
