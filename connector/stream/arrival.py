"""When a frame arrived: the client connection that notes it.

websockets parses frames as the bytes come off the socket and queues complete messages
for ``recv``; the reader takes them one at a time, and in a burst (an exchange sends many
markets' updates at once; the reader lets the loop send and acknowledge between
slices) a message can wait milliseconds in that queue. Stamped when
the reader took it, that wait was missing from the event's ``receive_ts_us`` and from the
receive→ack latency. This connection notes the time each message's last frame was
parsed, in the order the messages are queued, and the reader takes the stamp with the
message.

What it cannot see: time the bytes spent in the kernel's socket buffer before the event
loop read them (while the loop ran other work, or while websockets paused reading because
more than ``max_queue`` frames were waiting).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.frames import DATA_OPCODES, Frame
from websockets.protocol import Event
from websockets.version import version as websockets_version

log = logging.getLogger(__name__)


class StampedConnection(ClientConnection):
    """``arrivals``: one wall-clock time (``time.time()``) per complete message not yet
    read, oldest first. Its length follows websockets' own message queue, which
    ``max_queue`` bounds (reading from the socket pauses above it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: deque[float] = deque()
        self.unstamped = 0  # messages read with no arrival noted (see ``arrived``)

    def process_event(self, event: Event) -> None:
        super().process_event(event)  # queues a data frame (raises if the queue is closed)
        # A message is complete with its final frame (a fragmented one with its last).
        if isinstance(event, Frame) and event.fin and event.opcode in DATA_OPCODES:
            self.arrivals.append(time.time())

    def arrived(self, now: float) -> float:
        """The arrival time of the message just read; ``now`` if none was noted, which
        websockets as pinned never does (a test reads real connections' stamps): another
        version that stops calling ``process_event`` is reported once, then counted."""
        if self.arrivals:
            return self.arrivals.popleft()
        if not self.unstamped:
            log.warning(
                "websockets %s delivered a message with no arrival time noted: receive "
                "times are now taken when the reader gets each message (its connection "
                "no longer calls process_event per frame?)",
                websockets_version,
            )
        self.unstamped += 1
        return now
