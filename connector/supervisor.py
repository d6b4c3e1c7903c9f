"""Supervisor: owns one exchange's connections, subscriptions, heartbeats and reconnects.

Everything exchange-specific comes from its adapter (``connector.exchange``): the wire
protocol, limits and recovery. One ``Connection`` per group of at most the exchange's
per-connection limit of subscriptions. Each runs forever until asked to stop:

    connect → subscribe (batched and paced within the exchange's limits) → read, decode,
              publish
            ↘ heartbeat (the adapter's ping) every N s; no reply within the deadline →
              dead, reconnect
            ↘ a stream break (sequence gap, checksum mismatch) → that subscription is
              resubscribed and its gap recovered
            ↘ the exchange asks for a reconnect, or the connection's age limit (ours, or
              just under the server's) → make-before-break:
              a second connection subscribes while this one reads on; once every
              subscription is confirmed there, a heartbeat barrier ends this reader, the
              successor publishes past the overlap (each event once), this one closes
            ↘ connection lost / handshake failed → reconnect after capped, jittered backoff

A subscription not confirmed in time is reported and retried after a long backoff (never
in a tight loop); a confirmed subscription that stays silent is warned about. A bad
frame is counted and logged and never stops the reader. Each state change is one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import NoReturn, cast

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import CloseCode
from websockets.protocol import State

from connector.arrival import StampedConnection
from connector.checkpoints import Checkpoint
from connector.errors import ConfigError, ProtocolError
from connector.events import (
    ExchangeError,
    HeartbeatReply,
    Maintenance,
    MarketEvent,
    ReconnectRequested,
    Resync,
    SubscriptionSucceeded,
    UnsubscriptionSucceeded,
)
from connector.exchange import Adapter, WireProtocol
from connector.gaps import Gaps, SubState
from connector.handover import Dedup, Tail
from connector.metrics import Metrics
from connector.pipeline import Publisher
from connector.recent import RecentTrades
from connector.settings import Settings

log = logging.getLogger(__name__)

_INVALID_LOG_EVERY = 1000  # after the first few, log one bad frame in this many


class _Reconnect(Exception):
    """Ends one connection's session; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.immediate = reason == "request_reconnect"


def backoff_delay(attempt: int, initial: float, cap: float) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, initial·2^attempt))."""
    return random.uniform(0, min(cap, initial * 2 ** min(attempt, 32)))


def _oversized(frame: str | bytes, max_size: int) -> NoReturn:
    raise ProtocolError(
        "oversized", f"{len(frame)}-byte frame over ws_max_size_bytes ({max_size})", frame
    )


HANDOVER_BUFFER_LIMIT = 200_000  # successor events buffered before the switch
# The longest a connection's reader runs through buffered frames without letting the
# event loop run anything else (a burst of 100-level books is ~60 µs a frame).
READ_SLICE_S = 0.001


@dataclass(eq=False)
class _Link:
    """One WebSocket connection and its reader's state."""

    ws: StampedConnection
    decoder: WireProtocol
    cid: str
    opened: float  # monotonic
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


class Connection:
    def __init__(
        self,
        index: int,
        subs: list[tuple[str, str]],
        adapter: Adapter,
        settings: Settings,
        publisher: Publisher,
        metrics: Metrics,
        gaps: Gaps,
    ) -> None:
        self.index = index
        self.tag = f"{adapter.name} {index}"  # log lines: which exchange, which connection
        self.gaps = gaps
        self.adapter = adapter
        self.exchange = adapter.name
        self._settings = settings
        self._publisher = publisher
        self._metrics = metrics
        name = adapter.sub_name
        self.subs = {name(c, m): SubState(c, m, name(c, m)) for c, m in subs}
        gaps.resync_wanted = self._resync_wanted
        self._by_pair = {(s.channel, s.market): s for s in self.subs.values()}
        self._drained: asyncio.Event | None = None  # set while draining at shutdown
        self._active: _Link | None = None
        self._unsubscribed = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()
        self._resyncing: set[str] = set()
        self.connection_id = ""
        self.connected = False
        self._invalid = 0

    # --- subscriptions that come and go (scale-out: ownership moves between replicas) ----
    async def add(self, subs: list[SubState]) -> None:
        """Takes on subscriptions; subscribes them now if connected (else the next
        session does)."""
        for sub in subs:
            self.subs[sub.name] = sub
            self._by_pair[(sub.channel, sub.market)] = sub
        link = self._active
        if link is not None and self.connected and link.ws.state is State.OPEN:
            # If the connection drops meanwhile, the next session subscribes them.
            with contextlib.suppress(ConnectionClosed):
                await self._subscribe_all(link, subs, time.monotonic())

    async def remove(self, names: list[str], deadline_s: float) -> None:
        """Gives up subscriptions: unsubscribes, keeps reading until the exchange confirms
        (what it already sent is still published), publishes what was held, forgets."""
        subs = [self.subs[n] for n in names if n in self.subs]
        live = [s for s in subs if s.confirmed]
        link = self._active
        if live and link is not None and self.connected:
            try:
                await self._send(link, link.decoder.unsubscribe([s.name for s in live]))
                async with asyncio.timeout(deadline_s):
                    while any(s.confirmed for s in live):
                        self._unsubscribed.clear()
                        await self._unsubscribed.wait()
            except (TimeoutError, ConnectionClosed):
                log.warning(
                    "[%s %s] %d unsubscription(s) not confirmed; giving them up anyway",
                    self.tag,
                    self.connection_id,
                    sum(1 for s in live if s.confirmed),
                )
        await self.gaps.drain(subs)
        for sub in subs:
            sub.confirmed = False
            self.subs.pop(sub.name, None)
            self._by_pair.pop((sub.channel, sub.market), None)

    async def run(self, stop: asyncio.Event) -> None:
        s = self._settings
        attempt = 0
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await self._session(stop)
                except _Reconnect as exc:
                    reason, immediate = exc.reason, exc.immediate
                    log.warning("[%s %s] connection ended: %s", self.tag, self.connection_id, exc)
                except InvalidURI as exc:
                    raise ConfigError(
                        f"{self.exchange.upper()}_WS_URL is not a valid WebSocket URI: {exc}"
                    ) from exc
                except InvalidStatus as exc:
                    status = exc.response.status_code
                    reason, immediate = f"http_{status}", False
                    log.warning("[%s] handshake rejected with HTTP %d", self.tag, status)
                except ConnectionClosed as exc:
                    reason, immediate = type(exc).__name__, False
                    if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                        reason = "frame_too_large"
                        await self._too_big(exc)
                    log.warning("[%s %s] connection lost: %r", self.tag, self.connection_id, exc)
                except (OSError, InvalidHandshake, TimeoutError) as exc:
                    reason, immediate = type(exc).__name__, False
                    log.warning(
                        "[%s %s] connection to %s failed: %r",
                        self.tag,
                        self.connection_id,
                        self.adapter.ws_url,
                        exc,
                    )
                else:
                    return  # stop requested
                self.connected = False
                self._metrics.reconnects.labels(self.exchange, reason).inc()
                last_frame = (self._active.last_frame_ts if self._active else 0.0) or time.time()
                self.gaps.lost(list(self.subs.values()), reason, int(last_frame * 1_000_000))
                if stop.is_set():
                    return
                # A connection that stayed up a while was healthy: start the backoff afresh.
                if time.monotonic() - started > 2 * s.reconnect_backoff_max_s:
                    attempt = 0
                delay = (
                    0.0
                    if immediate
                    else backoff_delay(
                        attempt, s.reconnect_backoff_initial_s, s.reconnect_backoff_max_s
                    )
                )
                attempt = 0 if immediate else attempt + 1
                log.info(
                    "[%s] reconnecting in %.2fs (attempt %d, reason %s)",
                    self.tag,
                    delay,
                    attempt,
                    reason,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _too_big(self, exc: ConnectionClosed) -> None:
        """A frame over the hard limit closed the connection (websockets never hands it
        over): counted, and a dead letter without payload saying so."""
        detail = (
            f"a frame over 4 x ws_max_size_bytes ({4 * self._settings.ws_max_size_bytes}) "
            f"closed the connection: {exc}"
        )
        error = ProtocolError("oversized", detail, b"")
        self._invalid_frame(error)
        await self._publisher.dead_letter(self.exchange, error, self.connection_id, time.time())

    # --- one session: a chain of connections handed over make-before-break ------------
    async def _connect(self) -> _Link:
        s = self._settings
        cid = uuid.uuid4().hex[:16]
        self.connection_id = self.connection_id or cid
        ws = await websockets.connect(
            self.adapter.ws_url,
            max_size=4 * s.ws_max_size_bytes,  # hard bound; larger frames: dead letters
            open_timeout=s.ws_open_timeout_s,
            close_timeout=5,
            compression=None,  # CPU over bandwidth; market data frames are small JSON
            ping_interval=20,
            ping_timeout=20,
            max_queue=64,
            create_connection=StampedConnection,  # notes when each frame arrived
        )
        # connect() is typed as returning its base class; it made the class it was given.
        return _Link(
            cast(StampedConnection, ws), self.adapter.new_protocol(cid), cid, time.monotonic()
        )

    def _adopt(self, link: _Link) -> None:
        self._active = link
        self.connection_id = link.cid
        self.gaps.connection_id = link.cid
        self.connected = True

    async def _session(self, stop: asyncio.Event) -> None:
        self.connection_id = ""
        link = await self._connect()
        self._adopt(link)
        log.info(
            "[%s %s] connected to %s",
            self.tag,
            self.connection_id,
            self.adapter.ws_url,
        )
        try:
            # Reading starts first: confirmations and events are taken as they come, even
            # while private channels wait for their token.
            link.reader = asyncio.create_task(self._read(link), name=f"read-{self.index}")
            log.info(
                "[%s %s] subscribing to %d channel(s)",
                self.tag,
                self.connection_id,
                len(self.subs),
            )
            await self._subscribe_all(link, list(self.subs.values()), time.monotonic())
            while True:
                successor = await self._serve(link, stop)
                if successor is None:
                    return  # stop requested
                link = await self._switch(link, successor)
        finally:
            if link.reader is not None:
                link.reader.cancel()
                await asyncio.gather(link.reader, return_exceptions=True)
            # What was received is published even when recovery did not finish.
            await self.gaps.drain(list(self.subs.values()))
            await self._close(link)

    async def _close(self, link: _Link) -> None:
        with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
            await asyncio.wait_for(link.ws.close(), 6)

    async def _serve(self, link: _Link, stop: asyncio.Event) -> _Link | None:
        """Runs ``link`` until it fails (raises), stop is requested (None), or a
        successor is subscribed and confirmed (returned, buffering)."""
        assert link.reader is not None
        watch = asyncio.create_task(self._watch(link), name=f"watch-{self.index}")
        stopper = asyncio.create_task(stop.wait(), name=f"stop-{self.index}")
        wanted: asyncio.Task[bool] = asyncio.create_task(
            link.handover_wanted.wait(), name=f"want-{self.index}"
        )
        handover: asyncio.Task[_Link | None] | None = None
        successor: _Link | None = None
        try:
            while True:
                pending = {watch, stopper, link.reader, handover or wanted}
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    if not link.reader.done():
                        await self._unsubscribe_and_drain(link)
                    log.info("[%s %s] closing (shutdown)", self.tag, link.cid)
                    return None
                for task in (link.reader, watch):
                    if task in done:
                        exc = task.exception()
                        if link.handover_reason == "request_reconnect":
                            raise _Reconnect(
                                "request_reconnect", f"before the handover completed ({exc})"
                            )
                        if exc is not None:
                            raise exc
                        raise _Reconnect("closed", "the exchange closed the connection")
                if wanted in done:
                    link.handover_wanted.clear()
                    handover = asyncio.create_task(
                        self._prepare_successor(link), name=f"handover-{self.index}"
                    )
                    wanted = asyncio.create_task(link.handover_wanted.wait())
                elif handover is not None and handover in done:
                    successor = handover.result()
                    handover = None
                    if successor is not None:
                        return successor
                    self._handover_failed(link)
        finally:
            for aux in (watch, stopper, wanted):
                aux.cancel()
            if handover is not None:
                handover.cancel()  # its own cleanup closes the successor
            await asyncio.gather(
                *(t for t in (watch, stopper, wanted, handover) if t is not None),
                return_exceptions=True,
            )

    def _handover_failed(self, link: _Link) -> None:
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

    async def _prepare_successor(self, old: _Link) -> _Link | None:
        """Opens a second connection and subscribes everything there while ``old`` keeps
        reading; returns it once every subscription live on ``old`` is confirmed on it
        (buffering what it receives), or None (logged) if that does not happen."""
        s = self._settings
        old.tail = Tail()  # from now on, ``old`` remembers what it received
        try:
            new = await self._connect()
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            log.warning("[%s] handover: cannot open a second connection: %r", self.tag, exc)
            return None
        adopted = False
        new.failure = "cancelled"  # until it is ready
        try:
            new.buffering = True
            new.required = {sub.name for sub in self.subs.values() if sub.confirmed}
            log.info(
                "[%s %s] handover (%s): connection %s subscribing to %d channel(s)",
                self.tag,
                old.cid,
                old.handover_reason,
                new.cid,
                len(self.subs),
            )
            new.reader = asyncio.create_task(self._read(new), name=f"read-{self.index}-next")
            new.reader.add_done_callback(lambda _: new.ready.set())
            frames, failed, error = await self.adapter.subscribe_frames(
                new.decoder, list(self.subs.values())
            )
            await self._send(new, frames)
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
            adopted = not new.failure
            if not adopted:
                if new.reader is not None:
                    new.reader.cancel()
                    await asyncio.gather(new.reader, return_exceptions=True)
                await self._close(new)
        if new.failure:
            log.warning("[%s] handover: %s", self.tag, new.failure)
            return None
        return new

    async def _switch(self, old: _Link, new: _Link) -> _Link:
        """Ends ``old`` at the barrier, then publishes ``new``'s buffer past the overlap
        and lets ``new`` publish directly. If ``old`` dies first, the overlap is not
        proven: that is a gap (recovered like any other) from its last frame."""
        s = self._settings
        assert old.reader is not None and new.reader is not None
        reason = old.handover_reason
        old.hb_sent += 1
        old.barrier = old.hb_sent
        proven = False
        try:
            await self._send(old, [old.decoder.ping()])
            await asyncio.wait_for(asyncio.shield(old.reader), s.heartbeat_timeout_s)
            proven = old.stop_reading
        except (ConnectionClosed, OSError, TimeoutError, _Reconnect) as exc:
            log.warning(
                "[%s %s] handover: the old connection ended before the barrier (%r)",
                self.tag,
                old.cid,
                exc,
            )
        if not old.reader.done():
            old.reader.cancel()
            await asyncio.gather(old.reader, return_exceptions=True)
        task = asyncio.create_task(self._close(old))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        self._adopt(new)
        if proven and old.tail is not None:
            new.dedup = old.tail.filters()
            outcome = "switched"
        else:
            last_us = int((old.last_frame_ts or time.time()) * 1_000_000)
            self.gaps.lost(list(self.subs.values()), reason, last_us)
            outcome = "gap"
        for sub in self.subs.values():
            if sub.name in new.confirmed and not sub.confirmed:
                self._confirmed(new, sub)  # not live on ``old`` (or a gap): recovery starts
        old.tail = None
        self._metrics.handovers.labels(self.exchange, reason, outcome).inc()
        buffered = len(new.buffer)
        while new.buffer:  # the reader keeps appending while we publish
            held, msg, receive_ts = new.buffer.popleft()
            await self._deliver(new, held, msg, receive_ts)
        new.buffering = False  # no await since the buffer was seen empty: order holds
        for brk in new.resyncs:
            broken = self.subs.get(brk.channel)
            if broken is not None and broken.confirmed:
                self._resync_wanted(broken, brk.reason, brk.detail)
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

    async def _unsubscribe_and_drain(self, link: _Link) -> None:
        """Unsubscribes everything and keeps the reader going until the exchange confirms
        (or the deadline passes): what it already sent is still published."""
        deadline = self._settings.unsubscribe_timeout_s
        live = [s for s in self.subs.values() if s.confirmed]
        if not live or deadline <= 0:
            return
        self._drained = asyncio.Event()
        try:
            await self._send(link, link.decoder.unsubscribe([s.name for s in live]))
            await asyncio.wait_for(self._drained.wait(), deadline)
            log.info(
                "[%s %s] %d unsubscription(s) confirmed; drained",
                self.tag,
                link.cid,
                len(live),
            )
        except TimeoutError:
            left = sum(1 for s in self.subs.values() if s.confirmed)
            log.warning(
                "[%s %s] %d unsubscription(s) unconfirmed after %.0fs; closing",
                self.tag,
                link.cid,
                left,
                deadline,
            )
        except ConnectionClosed:
            log.warning("[%s %s] connection closed while draining", self.tag, link.cid)
        finally:
            self._drained = None

    async def _send(self, link: _Link, frames: list[str]) -> None:
        """Sends control frames, paced to the exchange's limit on incoming messages."""
        rate = self.adapter.control_frames_per_second
        for frame in frames:
            if rate:
                now = time.monotonic()
                wait = link.next_send - now
                link.next_send = max(now, link.next_send) + 1.0 / rate
                if wait > 0:
                    await asyncio.sleep(wait)
            await link.ws.send(frame)

    async def _subscribe_all(self, link: _Link, subs: list[SubState], now: float) -> None:
        for sub in subs:
            sub.subscribed_at = now
            sub.confirmed = False
            sub.retry_at = 0.0
            sub.silent_warned = False
            sub.stale_resubscribed = False
        # Public channels go first: a slow token endpoint must not hold them back.
        private = self.adapter.is_private
        failed: list[SubState] = []
        error = ""
        for group in (
            [sub for sub in subs if not private(sub.name)],
            [sub for sub in subs if private(sub.name)],
        ):
            if not group:
                continue
            frames, missing, why = await self.adapter.subscribe_frames(link.decoder, group)
            await self._send(link, frames)
            failed += missing
            error = error or why
        if failed:
            self._metrics.auth_failures.labels(self.exchange).inc()
            retry = self._settings.resubscribe_backoff_s
            for sub in failed:
                sub.retry_at = now + retry
            log.error(
                "[%s %s] no WebSocket token for %d private channel(s): %s; retrying in %.0fs",
                self.tag,
                self.connection_id,
                len(failed),
                error,
                retry,
            )

    # --- reading -----------------------------------------------------------------------
    async def _read(self, link: _Link) -> None:
        by_pair = self._by_pair
        deliver = self._deliver
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
                self._invalid_frame(exc)
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
                    self._control(msg, link)
            if link.stop_reading:
                return  # the handover barrier: the successor takes over from here
        raise _Reconnect("closed", f"code {link.ws.close_code} {link.ws.close_reason!r}")

    async def _deliver(
        self, link: _Link, sub: SubState | None, msg: MarketEvent, receive_ts: float
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
            if sub.recovering and self.gaps.full(sub):
                await self.gaps.overflow(sub)
            kept = self.gaps.admit(sub, msg, receive_ts)
            if kept is None:
                return
            msg = kept
        await self._publisher.publish(msg, receive_ts)

    def _invalid_frame(self, exc: ProtocolError) -> None:
        self._invalid += 1
        self._metrics.frames_invalid.labels(self.exchange, exc.reason).inc()
        if self._invalid <= 10 or self._invalid % _INVALID_LOG_EVERY == 0:
            frame = exc.frame if isinstance(exc.frame, str) else repr(exc.frame)
            log.warning(
                "[%s %s] invalid frame #%d skipped (%s): %.200s",
                self.tag,
                self.connection_id,
                self._invalid,
                exc,
                frame,
            )

    def _control(self, msg: object, link: _Link) -> None:
        if isinstance(msg, HeartbeatReply):
            link.hb_pending_since = 0.0
            link.hb_replies += 1
            if link.barrier and link.hb_replies >= link.barrier:
                link.stop_reading = True
            return
        if link.buffering:
            self._successor_control(msg, link)
        elif isinstance(msg, SubscriptionSucceeded):
            sub = self.subs.get(msg.channel)
            if sub is None:
                log.warning(
                    "[%s] confirmation for a channel we did not ask for: %s",
                    self.tag,
                    msg.channel,
                )
                return
            link.confirmed.add(sub.name)
            if not sub.confirmed:
                self._confirmed(link, sub)
        elif isinstance(msg, UnsubscriptionSucceeded):
            sub = self.subs.get(msg.channel)
            if sub is not None:
                sub.confirmed = False
            self._unsubscribed.set()
            if self._drained is not None and not any(s.confirmed for s in self.subs.values()):
                self._drained.set()
        elif isinstance(msg, ReconnectRequested):
            if not link.handover_reason:
                log.warning(
                    "[%s %s] the exchange asked us to reconnect: handing over make-before-break",
                    self.tag,
                    link.cid,
                )
                link.handover_reason = "request_reconnect"
                link.handover_wanted.set()
        elif isinstance(msg, ExchangeError):
            self._exchange_error(msg, link)
        elif isinstance(msg, Resync):
            sub = self.subs.get(msg.channel)
            if sub is not None and sub.confirmed:
                self._resync_wanted(sub, msg.reason, msg.detail)
        elif isinstance(msg, Maintenance):
            self._maintenance(msg, link)

    def _successor_control(self, msg: object, link: _Link) -> None:
        """Control messages of a successor that is not publishing yet."""
        if isinstance(msg, SubscriptionSucceeded):
            link.confirmed.add(msg.channel)
            if link.required <= link.confirmed:
                link.ready.set()
        elif isinstance(msg, ExchangeError):
            self._exchange_error(msg, link)
            if msg.channel in link.required and not link.failure:
                link.failure = f"exchange error on {msg.channel}: {msg.message}"
                link.ready.set()
        elif isinstance(msg, ReconnectRequested):
            log.warning("[%s %s] reconnect requested on the new connection", self.tag, link.cid)
        elif isinstance(msg, Maintenance):
            link.paused = msg.active
        elif isinstance(msg, Resync):
            link.resyncs.append(msg)  # acted on once this connection took over

    def _maintenance(self, msg: Maintenance, link: _Link) -> None:
        link.paused = msg.active
        if msg.active:
            log.warning(
                "[%s %s] the exchange entered maintenance (%s): silence is expected, "
                "the connection stays",
                self.tag,
                link.cid,
                msg.message,
            )
        elif not link.handover_reason:
            # The exchange advises subscribing everything again: a fresh connection does
            # that make-before-break, so nothing sent meanwhile is lost.
            log.warning(
                "[%s %s] maintenance ended (%s): renewing the connection make-before-break",
                self.tag,
                link.cid,
                msg.message,
            )
            link.handover_reason = "maintenance_ended"
            link.handover_wanted.set()

    def _resync_wanted(self, sub: SubState, reason: str, detail: str) -> None:
        """A subscription's stream broke: resubscribed (the exchange sends a fresh
        snapshot, or recovery fetches one); the break is a gap recovered as usual."""
        if sub.name in self._resyncing or self._active is None:
            return
        link = self._active
        self._metrics.resubscribes.labels(self.exchange, sub.channel).inc()
        log.warning(
            "[%s %s] %s: %s (%s): resubscribing",
            self.tag,
            link.cid,
            sub.name,
            reason,
            detail,
        )
        self.gaps.lost([sub], reason, int(time.time() * 1_000_000), detail)
        self._resyncing.add(sub.name)
        task = asyncio.create_task(self._resubscribe(link, sub))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _resubscribe(self, link: _Link, sub: SubState) -> None:
        try:
            with contextlib.suppress(ConnectionClosed):
                await self._send(link, link.decoder.unsubscribe([sub.name]))
                await self._subscribe_all(link, [sub], time.monotonic())
        finally:
            self._resyncing.discard(sub.name)

    def _confirmed(self, link: _Link, sub: SubState) -> None:
        sub.confirmed = True
        sub.last_event = time.monotonic()
        log.info("[%s %s] subscribed %s", self.tag, link.cid, sub.name)
        self.gaps.live(sub)

    def _exchange_error(self, msg: ExchangeError, link: _Link) -> None:
        self._metrics.exchange_errors.labels(self.exchange).inc()
        log.error(
            "[%s %s] exchange error on subscription %r: code=%s message=%s",
            self.tag,
            link.cid,
            msg.channel,
            msg.code,
            msg.message,
        )
        sub = self.subs.get(msg.channel)
        if sub is not None and not sub.confirmed and not link.buffering:
            self._reject(sub, time.monotonic(), f"error {msg.message}")

    def _reject(self, sub: SubState, now: float, why: str) -> None:
        sub.retry_at = now + self._settings.resubscribe_backoff_s
        log.error(
            "[%s %s] subscription %s not accepted (%s); retrying in %.0fs",
            self.tag,
            self.connection_id,
            sub.name,
            why,
            self._settings.resubscribe_backoff_s,
        )

    # --- liveness ----------------------------------------------------------------------
    async def _watch(self, link: _Link) -> None:
        """Heartbeats, subscription confirmations, silence and the connection's age, once
        a second."""
        s = self._settings
        next_hb = time.monotonic() + s.heartbeat_interval_s
        max_age = s.connection_max_age_s
        if self.adapter.server_max_age_s:  # rotate well before the server drops it
            limit = self.adapter.server_max_age_s * 0.95
            max_age = min(max_age, limit) if max_age else limit
        while True:
            await asyncio.sleep(min(1.0, s.heartbeat_interval_s))
            if self._drained is not None:
                continue  # shutting down: unsubscriptions are expected, not failures
            now = time.monotonic()
            if self._publisher.saturated or link.paused:
                # The reader is paused by Kafka backpressure, so replies sit unread; or
                # the exchange announced maintenance: no evidence of a dead connection.
                link.hb_pending_since = 0.0
            elif link.hb_pending_since and now - link.hb_pending_since > s.heartbeat_timeout_s:
                raise _Reconnect(
                    "heartbeat_timeout",
                    f"no heartbeat reply within {s.heartbeat_timeout_s:.0f}s (half-open?)",
                )
            if now >= next_hb and not link.paused:  # a ping in maintenance may go unanswered
                next_hb = now + s.heartbeat_interval_s
                if not link.hb_pending_since:
                    link.hb_pending_since = now
                link.hb_sent += 1
                await self._send(link, [link.decoder.ping()])
            if not link.handover_reason and max_age and now - link.opened > max_age:
                log.info(
                    "[%s %s] connection is %.0fs old (limit %.0fs): rotating it make-before-break",
                    self.tag,
                    link.cid,
                    now - link.opened,
                    max_age,
                )
                link.handover_reason = "max_age"
                link.handover_wanted.set()
            elif (
                link.handover_reason
                and link.handover_retry_at
                and now >= link.handover_retry_at
                and link.tail is None
            ):
                link.handover_retry_at = 0.0
                link.handover_wanted.set()
            if link.paused:
                continue  # maintenance: silence and unconfirmed subscriptions are expected
            stale = await self._check_subscriptions(link, now)
            if stale:
                raise _Reconnect(
                    "stale", f"all {stale} subscriptions stay silent after resubscribing"
                )

    async def _check_subscriptions(self, link: _Link, now: float) -> int:
        """Confirmations, silence and staleness, per subscription. Returns the number of
        stale subscriptions if every subscription with a threshold is stale even after a
        resubscribe (the connection is then suspect), else 0."""
        s = self._settings
        watched = still_stale = 0
        due: list[SubState] = []
        for sub in self.subs.values():
            if sub.confirmed:
                silent = now - sub.last_event
                threshold = s.stale_after_s.get(sub.channel, 0.0)
                if threshold:
                    watched += 1
                    if silent <= threshold:
                        sub.stale_resubscribed = False
                    elif not sub.stale_resubscribed:
                        await self._resubscribe_stale(link, sub, now, silent, threshold)
                        continue
                    else:
                        still_stale += 1
                elif (
                    not sub.silent_warned
                    and silent > s.silence_warning_s
                    and not self.adapter.is_private(sub.name)  # quiet while the account is
                ):
                    sub.silent_warned = True
                    log.warning(
                        "[%s %s] %s confirmed but silent for %.0fs: %s",
                        self.tag,
                        self.connection_id,
                        sub.name,
                        silent,
                        self.adapter.silence_hint(sub),
                    )
            elif sub.retry_at:
                if now >= sub.retry_at:
                    log.info("[%s] retrying subscription %s", self.tag, sub.name)
                    due.append(sub)
            elif now - sub.subscribed_at > s.subscribe_timeout_s:
                self._reject(sub, now, f"no confirmation within {s.subscribe_timeout_s:.0f}s")
        if due:
            await self._subscribe_all(link, due, now)  # one token for all private ones
        return still_stale if watched and still_stale == watched else 0

    async def _resubscribe_stale(
        self, link: _Link, sub: SubState, now: float, silent: float, threshold: float
    ) -> None:
        """A silent subscription on a live connection: resubscribe it alone. The silence is
        a gap (from its last event) recovered like any other once it is live again."""
        log.warning(
            "[%s %s] %s silent for %.0fs (stale after %.0fs): resubscribing",
            self.tag,
            self.connection_id,
            sub.name,
            silent,
            threshold,
        )
        self._metrics.resubscribes.labels(self.exchange, sub.channel).inc()
        last_event_us = int((time.time() - silent) * 1_000_000)
        self.gaps.lost([sub], "stale", last_event_us)
        await self._send(link, link.decoder.unsubscribe([sub.name]))
        await self._subscribe_all(link, [sub], now)
        sub.stale_resubscribed = True  # _subscribe resets the subscription's state


class Supervisor:
    """Spreads subscriptions over connections and runs them. Static (the configured
    subscriptions) or, in scale-out mode, the ones the group assigns (``acquire`` /
    ``release``)."""

    def __init__(
        self,
        adapter: Adapter,
        subs: list[tuple[str, str]],
        settings: Settings,
        publisher: Publisher,
        metrics: Metrics,
        checkpoints: dict[str, Checkpoint] | None = None,
    ) -> None:
        size = adapter.max_subs_per_connection
        self.adapter = adapter
        self.exchange = adapter.name
        self._settings = settings
        self._publisher = publisher
        self._metrics = metrics
        self._recent = RecentTrades()  # one market's trades may move between connections
        self.connections = [
            self._connection(i, subs[i * size : (i + 1) * size])
            for i in range(max(1, (len(subs) + size - 1) // size))
        ]
        for conn in self.connections:
            for sub in conn.subs.values():
                cp = (checkpoints or {}).get(sub.name)
                if cp is not None:
                    conn.gaps.restarted(sub, cp.trade_id or None, cp.exchange_ts_us)
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._changes = asyncio.Lock()

    def _connection(self, index: int, subs: list[tuple[str, str]]) -> Connection:
        return Connection(
            index,
            subs,
            self.adapter,
            self._settings,
            self._publisher,
            self._metrics,
            self.adapter.new_gaps(self._publisher, self._recent, self._metrics),
        )

    def subscriptions(self) -> list[SubState]:
        return [sub for conn in self.connections for sub in conn.subs.values()]

    def owned(self) -> set[tuple[str, str]]:
        return {(sub.channel, sub.market) for sub in self.subscriptions()}

    async def acquire(
        self, pairs: list[tuple[str, str]], positions: dict[tuple[str, str], Checkpoint]
    ) -> None:
        """Starts subscriptions handed to this replica. Each is a gap since the last event
        published for it (``positions``, read back from Kafka): recovered as usual."""
        size = self.adapter.max_subs_per_connection
        async with self._changes:
            new = [p for p in pairs if p not in self.owned()]
            for conn in self.connections:
                room = size - len(conn.subs)
                take, new = new[:room], new[room:]
                if take:
                    await conn.add(self._states(conn, take, positions))
            while new:
                conn = self._connection(len(self.connections), [])
                take, new = new[:size], new[size:]
                await conn.add(self._states(conn, take, positions))
                self.connections.append(conn)
                if self._stop is not None:
                    self._tasks.append(
                        asyncio.create_task(conn.run(self._stop), name=f"connection-{conn.index}")
                    )

    def _states(
        self,
        conn: Connection,
        pairs: list[tuple[str, str]],
        positions: dict[tuple[str, str], Checkpoint],
    ) -> list[SubState]:
        out = []
        for c, m in pairs:
            sub = SubState(c, m, self.adapter.sub_name(c, m))
            pos = positions.get((c, m))
            if pos is not None:
                conn.gaps.restarted(sub, pos.trade_id or None, pos.exchange_ts_us, "rebalance")
            out.append(sub)
        return out

    async def release(self, pairs: list[tuple[str, str]]) -> None:
        """Stops subscriptions taken away: unsubscribed and drained (what was received is
        published), so their next owner starts from what Kafka has."""
        async with self._changes:
            wanted = set(pairs)
            await asyncio.gather(
                *(
                    conn.remove(
                        [s.name for s in conn.subs.values() if (s.channel, s.market) in wanted],
                        self._settings.unsubscribe_timeout_s,
                    )
                    for conn in self.connections
                )
            )

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._tasks = [
            asyncio.create_task(c.run(stop), name=f"connection-{c.index}") for c in self.connections
        ]
        try:
            while True:
                tasks = list(self._tasks)
                await asyncio.gather(*tasks)
                if len(self._tasks) == len(tasks):
                    break  # (connections added meanwhile are awaited in the next round)
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.adapter.aclose()


Key = tuple[str, str, str]  # (exchange, channel, market)


class Fleet:
    """The supervisors of every configured exchange, as one: subscriptions are
    (exchange, channel, market) (scale-out assigns them across replicas)."""

    def __init__(self, supervisors: list[Supervisor]) -> None:
        self.supervisors = {s.exchange: s for s in supervisors}

    @property
    def connections(self) -> list[Connection]:
        return [c for s in self.supervisors.values() for c in s.connections]

    def subscriptions(self) -> list[SubState]:
        return [sub for s in self.supervisors.values() for sub in s.subscriptions()]

    def owned(self) -> set[Key]:
        return {(e, c, m) for e, s in self.supervisors.items() for c, m in s.owned()}

    def _split(self, keys: list[Key]) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for e, c, m in keys:
            out.setdefault(e, []).append((c, m))
        return out

    async def acquire(self, keys: list[Key], positions: dict[Key, Checkpoint]) -> None:
        for exchange, pairs in self._split(keys).items():
            mine = {(c, m): cp for (e, c, m), cp in positions.items() if e == exchange}
            await self.supervisors[exchange].acquire(pairs, mine)

    async def release(self, keys: list[Key]) -> None:
        await asyncio.gather(
            *(self.supervisors[e].release(pairs) for e, pairs in self._split(keys).items())
        )

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(s.run(stop), name=f"exchange-{e}")
            for e, s in self.supervisors.items()
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
