"""Reading one connection: frames off the socket, decoded, delivered in order.

Each frame is stamped with when it came off the socket, decoded by the adapter's
protocol object, and its events go to the publisher through the subscription's gap
recovery (held while a gap is recovered) and, after a handover, the overlap filter. A
successor that is not publishing yet buffers its events. A bad frame is counted, logged
and dead-lettered, and never stops the reader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, NoReturn

from connector.errors import ProtocolError
from connector.events import MarketEvent
from connector.stream.link import Reconnect

if TYPE_CHECKING:
    from websockets.exceptions import ConnectionClosed

    from connector.kafka.publisher import Publisher
    from connector.metrics import Metrics
    from connector.settings import Settings
    from connector.stream.control import Control
    from connector.stream.gaps import SubState
    from connector.stream.link import Link
    from connector.stream.subscriptions import Subscriptions

log = logging.getLogger(__name__)

_INVALID_LOG_EVERY = 1000  # after the first few, log one bad frame in this many
HANDOVER_BUFFER_LIMIT = 200_000  # successor events buffered before the switch
# The longest a connection's reader runs through buffered frames without letting the
# event loop run anything else: the producer's acks and timers must not wait a burst.
READ_SLICE_S = 0.001


def _oversized(frame: str | bytes, max_size: int) -> NoReturn:
    raise ProtocolError(
        "oversized", f"{len(frame)}-byte frame over ws_max_size_bytes ({max_size})", frame
    )


class Reader:
    def __init__(
        self,
        subscriptions: Subscriptions,
        control: Control,
        settings: Settings,
        publisher: Publisher,
        metrics: Metrics,
    ) -> None:
        self._subs = subscriptions
        self._control = control
        self._settings = settings
        self._publisher = publisher
        self._metrics = metrics
        self.exchange = subscriptions.exchange
        self.tag = subscriptions.tag
        self._invalid = 0

    async def read(self, link: Link) -> None:
        by_pair = self._subs.by_pair
        deliver = self.deliver
        control = self._control.handle
        max_size = self._settings.ws_max_size_bytes
        arrived = link.ws.arrived
        yielded = time.time()
        async for frame in link.ws:
            now = time.time()
            # Received is when the frame came off the socket, not now: the time it waited
            # behind a burst counts in its receive→ack latency and its receive_ts_us.
            receive_ts = link.last_frame_ts = arrived(now)
            if now - yielded > READ_SLICE_S:
                # Frames already buffered are read without suspending: after a slice, let
                # the loop run the producer's acks and linger timers, other connections.
                await asyncio.sleep(0)
                yielded = time.time()
            try:
                if len(frame) > max_size:
                    _oversized(frame, max_size)
                messages = link.decoder.feed(frame, int(receive_ts * 1_000_000))
            except ProtocolError as exc:
                self._invalid_frame(exc, link.cid)
                await self._publisher.dead_letter(self.exchange, exc, link.cid, receive_ts)
                continue
            for msg in messages:
                if isinstance(msg, MarketEvent):
                    sub = by_pair.get((msg.channel, msg.market))
                    if link.buffering:
                        link.buffer.append((sub, msg, receive_ts))
                        if len(link.buffer) > HANDOVER_BUFFER_LIMIT and not link.failure:
                            link.failure = f"over {HANDOVER_BUFFER_LIMIT} events buffered"
                            link.ready.set()
                        continue
                    if link.tail is not None and sub is not None:
                        link.tail.saw(sub.name, msg)
                        if link.tail.overflowing:
                            link.tail = None  # a handover that long is abandoned
                    await deliver(link, sub, msg, receive_ts)
                else:
                    control(msg, link)
            if link.stop_reading:
                return  # the handover barrier: the successor takes over from here
        raise Reconnect("closed", f"code {link.ws.close_code} {link.ws.close_reason!r}")

    async def deliver(
        self, link: Link, sub: SubState | None, msg: MarketEvent, receive_ts: float
    ) -> None:
        if sub is not None:
            if link.dedup is not None:
                dedup = link.dedup.get(sub.name)
                if dedup is not None:
                    if not dedup.keep(msg):
                        self._metrics.duplicates.labels(self.exchange, sub.channel).inc()
                        self._metrics.events_dropped.labels(
                            self.exchange, sub.channel, "duplicate"
                        ).inc()
                        return
                    if dedup.done:  # past the overlap: no more lookups on the hot path
                        del link.dedup[sub.name]
                        if not link.dedup:
                            link.dedup = None
            sub.last_event = time.monotonic()
            gaps = self._subs.gaps
            if sub.recovering and gaps.full(sub):
                await gaps.overflow(sub)
            kept = gaps.admit(sub, msg, receive_ts)
            if kept is None:
                return
            msg = kept
        await self._publisher.publish(msg, receive_ts)

    async def too_big(self, exc: ConnectionClosed, cid: str) -> None:
        """A frame over the hard limit closed the connection (websockets never hands it
        over): counted, and a dead letter without payload saying so."""
        detail = (
            f"a frame over 4 x ws_max_size_bytes ({4 * self._settings.ws_max_size_bytes}) "
            f"closed the connection: {exc}"
        )
        error = ProtocolError("oversized", detail, b"")
        self._invalid_frame(error, cid)
        await self._publisher.dead_letter(self.exchange, error, cid, time.time())

    def _invalid_frame(self, exc: ProtocolError, cid: str) -> None:
        self._invalid += 1
        self._metrics.frames_invalid.labels(self.exchange, exc.reason).inc()
        if self._invalid <= 10 or self._invalid % _INVALID_LOG_EVERY == 0:
            frame = exc.frame if isinstance(exc.frame, str) else repr(exc.frame)
            log.warning(
                "[%s %s] invalid frame #%d skipped (%s): %.200s",
                self.tag,
                cid,
                self._invalid,
                exc,
                frame,
            )
