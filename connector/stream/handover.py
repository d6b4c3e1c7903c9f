"""Make-before-break: a second connection takes over from the first without a gap.

``prepare`` opens the successor and subscribes everything there while the old
connection reads on; the successor buffers what it receives until every subscription
live on the old one is confirmed. ``switch`` sends a heartbeat on the old connection and
reads it up to the reply (the barrier: everything the exchange sent it before the
successor's streams began), then publishes the successor's buffer past the overlap
(``overlap.Dedup``) and lets it publish directly. If the old connection dies first, the
overlap is not proven: that is a gap, recovered like any other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from websockets.exceptions import ConnectionClosed, InvalidHandshake

from connector.stream.link import Reconnect, backoff_delay
from connector.stream.overlap import Tail

if TYPE_CHECKING:
    from connector.metrics import Metrics
    from connector.settings import Settings
    from connector.stream.connection import Connection
    from connector.stream.link import Link
    from connector.stream.reader import Reader
    from connector.stream.subscriptions import Subscriptions

log = logging.getLogger(__name__)


class Handover:
    def __init__(
        self,
        connection: Connection,
        subscriptions: Subscriptions,
        reader: Reader,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self._conn = connection
        self._subs = subscriptions
        self._reader = reader
        self._settings = settings
        self._metrics = metrics
        self.tag = subscriptions.tag
        self.exchange = subscriptions.exchange

    def failed(self, link: Link) -> None:
        s = self._settings
        link.tail = None
        delay = backoff_delay(
            link.handover_attempts, s.reconnect_backoff_initial_s, s.reconnect_backoff_max_s
        )
        link.handover_attempts += 1
        link.handover_retry_at = time.monotonic() + max(delay, 1.0)
        self._metrics.handovers.labels(self.exchange, link.handover_reason, "failed").inc()
        log.warning(
            "[%s %s] handover (%s) failed; the current connection stays, next try in %.1fs",
            self.tag,
            link.cid,
            link.handover_reason,
            max(delay, 1.0),
        )

    async def prepare(self, old: Link, index: int) -> Link | None:
        """Opens a second connection and subscribes everything there while ``old`` keeps
        reading; returns it once every subscription live on ``old`` is confirmed on it
        (buffering what it receives), or None (logged) if that does not happen."""
        s = self._settings
        subs = self._subs.all()
        old.tail = Tail()  # from now on, ``old`` remembers what it received
        try:
            new = await self._conn.connect()
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            log.warning("[%s] handover: cannot open a second connection: %r", self.tag, exc)
            return None
        new.failure = "cancelled"  # until it is ready
        try:
            new.buffering = True
            new.required = {sub.name for sub in subs if sub.confirmed}
            log.info(
                "[%s %s] handover (%s): connection %s subscribing to %d channel(s)",
                self.tag,
                old.cid,
                old.handover_reason,
                new.cid,
                len(subs),
            )
            new.reader = asyncio.create_task(self._reader.read(new), name=f"read-{index}-next")
            new.reader.add_done_callback(lambda _: new.ready.set())
            frames, failed, error = await self._subs.adapter.subscribe_frames(new.decoder, subs)
            await new.send(frames)
            if any(sub.name in new.required for sub in failed):
                new.failure = f"private channels not subscribed: {error}"
                return None
            if not new.required:
                new.ready.set()
            new.failure = ""
            try:
                await asyncio.wait_for(new.ready.wait(), s.subscribe_timeout_s)
            except TimeoutError:
                new.failure = new.failure or (
                    f"{len(new.required - new.confirmed)} subscription(s) unconfirmed "
                    f"after {s.subscribe_timeout_s:.0f}s"
                )
            if not new.failure and new.reader.done():
                new.failure = f"the new connection ended: {new.reader.exception()!r}"
        except (ConnectionClosed, OSError) as exc:
            new.failure = f"the new connection failed: {exc!r}"
        finally:
            if new.failure:
                if new.reader is not None:
                    new.reader.cancel()
                    await asyncio.gather(new.reader, return_exceptions=True)
                await self._conn.close(new)
        if new.failure:
            log.warning("[%s] handover: %s", self.tag, new.failure)
            return None
        return new

    async def switch(self, old: Link, new: Link) -> Link:
        """Ends ``old`` at the barrier, then publishes ``new``'s buffer past the overlap
        and lets ``new`` publish directly. If ``old`` dies first, the overlap is not
        proven: that is a gap (recovered like any other) from its last frame."""
        assert old.reader is not None and new.reader is not None
        reason = old.handover_reason
        old.hb_sent += 1
        old.barrier = old.hb_sent
        proven = False
        try:
            await old.send([old.decoder.ping()])
            timeout = self._settings.heartbeat_timeout_s
            await asyncio.wait_for(asyncio.shield(old.reader), timeout)
            proven = old.stop_reading
        except (ConnectionClosed, OSError, TimeoutError, Reconnect) as exc:
            log.warning(
                "[%s %s] handover: the old connection ended before the barrier (%r)",
                self.tag,
                old.cid,
                exc,
            )
        if not old.reader.done():
            old.reader.cancel()
            await asyncio.gather(old.reader, return_exceptions=True)
        self._conn.close_later(old)
        self._conn.adopt(new)
        subs = self._subs
        if proven and old.tail is not None:
            new.dedup = old.tail.filters()
            outcome = "switched"
        else:
            last_us = int((old.last_frame_ts or time.time()) * 1_000_000)
            subs.gaps.lost(subs.all(), reason, last_us)
            outcome = "gap"
        for sub in subs.all():
            if sub.name in new.confirmed and not sub.confirmed:
                subs.confirmed(new, sub)  # not live on ``old`` (or a gap): recovery starts
        old.tail = None
        self._metrics.handovers.labels(self.exchange, reason, outcome).inc()
        buffered = len(new.buffer)
        while new.buffer:  # the reader keeps appending while we publish
            held, msg, receive_ts = new.buffer.popleft()
            await self._reader.deliver(new, held, msg, receive_ts)
        new.buffering = False  # no await since the buffer was seen empty: order holds
        for brk in new.resyncs:
            broken = subs.by_name.get(brk.channel)
            if broken is not None and broken.confirmed:
                subs.resync_wanted(broken, brk.reason, brk.detail)
        new.resyncs.clear()
        dropped = sum(d.dropped for d in (new.dedup or {}).values())
        log.info(
            "[%s %s] handover (%s) from %s complete: %s, %d buffered event(s), %d "
            "overlapping dropped so far",
            self.tag,
            new.cid,
            reason,
            old.cid,
            "no gap" if outcome == "switched" else "gap recovered",
            buffered,
            dropped,
        )
        return new
