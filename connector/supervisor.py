"""Supervisor: owns Bitstamp connections, subscriptions, heartbeats and reconnects.

One ``Connection`` per group of at most 1024 channels (Bitstamp's per-connection limit).
Each runs forever until asked to stop:

    connect → subscribe (one channel per frame) → read, decode, publish
            ↘ heartbeat every N s; no reply within the deadline → dead, reconnect
            ↘ bts:request_reconnect → reconnect at once
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

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from connector.bitstamp.decoder import BitstampDecoder
from connector.bitstamp.gaps import Gaps, SubState
from connector.bitstamp.protocol import (
    EXCHANGE,
    HEARTBEAT_FRAME,
    MAX_CHANNELS_PER_CONNECTION,
    channel_name,
    subscribe_frame,
    unsubscribe_frame,
)
from connector.bitstamp.recovery import RecentTrades
from connector.bitstamp.rest import BitstampRest
from connector.checkpoints import Checkpoint
from connector.errors import ConfigError, ProtocolError
from connector.events import (
    ExchangeError,
    HeartbeatReply,
    MarketEvent,
    ReconnectRequested,
    SubscriptionSucceeded,
    UnsubscriptionSucceeded,
)
from connector.metrics import Metrics
from connector.pipeline import Publisher
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


class Connection:
    def __init__(
        self,
        index: int,
        subs: list[tuple[str, str]],
        settings: Settings,
        publisher: Publisher,
        metrics: Metrics,
        gaps: Gaps,
    ) -> None:
        self.index = index
        self.gaps = gaps
        self._settings = settings
        self._publisher = publisher
        self._metrics = metrics
        self.subs = {channel_name(c, m): SubState(c, m, channel_name(c, m)) for c, m in subs}
        self._by_pair = {(s.channel, s.market): s for s in self.subs.values()}
        self._last_frame_ts = 0.0
        self._drained: asyncio.Event | None = None  # set while draining at shutdown
        self.connection_id = ""
        self.connected = False
        self._invalid = 0
        self._hb_sent = 0.0  # monotonic time of the unanswered heartbeat, 0: none pending

    @property
    def live(self) -> int:
        return sum(1 for s in self.subs.values() if s.confirmed)

    async def run(self, stop: asyncio.Event) -> None:
        s = self._settings
        attempt = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self._session(stop)
            except _Reconnect as exc:
                reason, immediate = exc.reason, exc.immediate
                log.warning(
                    "[conn %d %s] connection ended: %s", self.index, self.connection_id, exc
                )
            except InvalidURI as exc:
                raise ConfigError(f"BITSTAMP_WS_URL is not a valid WebSocket URI: {exc}") from exc
            except InvalidStatus as exc:
                status = exc.response.status_code
                reason, immediate = f"http_{status}", False
                log.warning("[conn %d] handshake rejected with HTTP %d", self.index, status)
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
                reason, immediate = type(exc).__name__, False
                log.warning(
                    "[conn %d %s] connection to %s failed: %r",
                    self.index,
                    self.connection_id,
                    self._settings.bitstamp_ws_url,
                    exc,
                )
            else:
                return  # stop requested
            self.connected = False
            self._metrics.reconnects.labels(EXCHANGE, reason).inc()
            last_frame = self._last_frame_ts or time.time()
            self.gaps.lost(list(self.subs.values()), reason, int(last_frame * 1_000_000))
            self._update_live_gauge()
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
                "[conn %d] reconnecting in %.2fs (attempt %d, reason %s)",
                self.index,
                delay,
                attempt,
                reason,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _session(self, stop: asyncio.Event) -> None:
        s = self._settings
        self.connection_id = uuid.uuid4().hex[:16]
        self.gaps.connection_id = self.connection_id
        decoder = BitstampDecoder(self.connection_id)
        async with websockets.connect(
            s.bitstamp_ws_url,
            max_size=s.ws_max_size_bytes,
            open_timeout=s.ws_open_timeout_s,
            close_timeout=5,
            compression=None,  # CPU over bandwidth; Bitstamp frames are small JSON
            ping_interval=20,
            ping_timeout=20,
            max_queue=64,
        ) as ws:
            self.connected = True
            self._hb_sent = 0.0
            log.info(
                "[conn %d %s] connected to %s", self.index, self.connection_id, s.bitstamp_ws_url
            )
            now = time.monotonic()
            for sub in self.subs.values():
                await self._subscribe(ws, sub, now)
            log.info(
                "[conn %d %s] subscribing to %d channel(s)",
                self.index,
                self.connection_id,
                len(self.subs),
            )
            watch = asyncio.create_task(self._watch(ws), name=f"watch-{self.index}")
            stopper = asyncio.create_task(stop.wait(), name=f"stop-{self.index}")
            reader = asyncio.create_task(self._read(ws, decoder), name=f"read-{self.index}")
            try:
                done, _ = await asyncio.wait(
                    {watch, stopper, reader}, return_when=asyncio.FIRST_COMPLETED
                )
                if stopper in done and reader not in done:
                    await self._unsubscribe_and_drain(ws)
            finally:
                for task in (watch, stopper, reader):
                    task.cancel()
                await asyncio.gather(watch, stopper, reader, return_exceptions=True)
                # What was received is published even when recovery did not finish.
                await self.gaps.drain(list(self.subs.values()))
            if stopper in done:
                log.info("[conn %d %s] closing (shutdown)", self.index, self.connection_id)
                return
            for task in (reader, watch):
                if task in done and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            raise _Reconnect("closed", "the exchange closed the connection")

    async def _unsubscribe_and_drain(self, ws: ClientConnection) -> None:
        """Unsubscribes everything and keeps the reader going until the exchange confirms
        (or the deadline passes): what it already sent is still published."""
        deadline = self._settings.unsubscribe_timeout_s
        live = [s for s in self.subs.values() if s.confirmed]
        if not live or deadline <= 0:
            return
        self._drained = asyncio.Event()
        try:
            for sub in live:
                await ws.send(unsubscribe_frame(sub.name))
            await asyncio.wait_for(self._drained.wait(), deadline)
            log.info(
                "[conn %d %s] %d unsubscription(s) confirmed; drained",
                self.index,
                self.connection_id,
                len(live),
            )
        except TimeoutError:
            left = sum(1 for s in self.subs.values() if s.confirmed)
            log.warning(
                "[conn %d %s] %d unsubscription(s) unconfirmed after %.0fs; closing",
                self.index,
                self.connection_id,
                left,
                deadline,
            )
        except ConnectionClosed:
            log.warning(
                "[conn %d %s] connection closed while draining", self.index, self.connection_id
            )
        finally:
            self._drained = None

    async def _subscribe(self, ws: ClientConnection, sub: SubState, now: float) -> None:
        sub.subscribed_at = now
        sub.confirmed = False
        sub.retry_at = 0.0
        sub.silent_warned = False
        sub.stale_resubscribed = False
        await ws.send(subscribe_frame(sub.name))

    async def _read(self, ws: ClientConnection, decoder: BitstampDecoder) -> None:
        publish = self._publisher.publish
        admit = self.gaps.admit
        by_pair = self._by_pair
        async for frame in ws:
            receive_ts = self._last_frame_ts = time.time()
            try:
                messages = decoder.feed(frame, int(receive_ts * 1_000_000))
            except ProtocolError as exc:
                self._invalid_frame(exc)
                await self._publisher.dead_letter(EXCHANGE, exc, self.connection_id, receive_ts)
                continue
            for msg in messages:
                if isinstance(msg, MarketEvent):
                    sub = by_pair.get((msg.channel, msg.market))
                    if sub is not None:
                        sub.last_event = time.monotonic()
                        if sub.recovering and self.gaps.full(sub):
                            await self.gaps.overflow(sub)
                        kept = admit(sub, msg, receive_ts)
                        if kept is None:
                            continue
                        msg = kept
                    await publish(msg, receive_ts)
                else:
                    self._control(msg)
        raise _Reconnect("closed", f"code {ws.close_code} {ws.close_reason!r}")

    def _invalid_frame(self, exc: ProtocolError) -> None:
        self._invalid += 1
        self._metrics.frames_invalid.labels(EXCHANGE, exc.reason).inc()
        if self._invalid <= 10 or self._invalid % _INVALID_LOG_EVERY == 0:
            frame = exc.frame if isinstance(exc.frame, str) else repr(exc.frame)
            log.warning(
                "[conn %d %s] invalid frame #%d skipped (%s): %.200s",
                self.index,
                self.connection_id,
                self._invalid,
                exc,
                frame,
            )

    def _control(self, msg: object) -> None:
        if isinstance(msg, HeartbeatReply):
            self._hb_sent = 0.0
        elif isinstance(msg, SubscriptionSucceeded):
            sub = self.subs.get(msg.channel)
            if sub is None:
                log.warning(
                    "[conn %d] confirmation for a channel we did not ask for: %s",
                    self.index,
                    msg.channel,
                )
                return
            if not sub.confirmed:
                sub.confirmed = True
                sub.last_event = time.monotonic()
                log.info("[conn %d %s] subscribed %s", self.index, self.connection_id, sub.name)
                self._update_live_gauge()
                self.gaps.live(sub)
        elif isinstance(msg, UnsubscriptionSucceeded):
            sub = self.subs.get(msg.channel)
            if sub is not None:
                sub.confirmed = False
                self._update_live_gauge()
            if self._drained is not None and not any(s.confirmed for s in self.subs.values()):
                self._drained.set()
        elif isinstance(msg, ReconnectRequested):
            raise _Reconnect("request_reconnect", "the exchange asked us to reconnect")
        elif isinstance(msg, ExchangeError):
            self._metrics.exchange_errors.labels(EXCHANGE).inc()
            log.error(
                "[conn %d %s] bts:error on channel %r: code=%s message=%s",
                self.index,
                self.connection_id,
                msg.channel,
                msg.code,
                msg.message,
            )
            sub = self.subs.get(msg.channel)
            if sub is not None and not sub.confirmed:
                self._reject(sub, time.monotonic(), f"bts:error {msg.message}")

    def _reject(self, sub: SubState, now: float, why: str) -> None:
        sub.retry_at = now + self._settings.resubscribe_backoff_s
        log.error(
            "[conn %d %s] subscription %s not accepted (%s); retrying in %.0fs",
            self.index,
            self.connection_id,
            sub.name,
            why,
            self._settings.resubscribe_backoff_s,
        )

    def _update_live_gauge(self) -> None:
        self._metrics.subscriptions_live.labels(EXCHANGE).set(self.live)

    async def _watch(self, ws: ClientConnection) -> None:
        """Heartbeats, subscription confirmations and silence, once a second."""
        s = self._settings
        next_hb = time.monotonic() + s.heartbeat_interval_s
        while True:
            await asyncio.sleep(min(1.0, s.heartbeat_interval_s))
            if self._drained is not None:
                continue  # shutting down: unsubscriptions are expected, not failures
            now = time.monotonic()
            if self._publisher.saturated:
                # The reader is paused by Kafka backpressure, so replies sit unread:
                # that is no evidence of a dead connection.
                self._hb_sent = 0.0
            elif self._hb_sent and now - self._hb_sent > s.heartbeat_timeout_s:
                raise _Reconnect(
                    "heartbeat_timeout",
                    f"no bts:heartbeat reply within {s.heartbeat_timeout_s:.0f}s (half-open?)",
                )
            if now >= next_hb:
                next_hb = now + s.heartbeat_interval_s
                if not self._hb_sent:
                    self._hb_sent = now
                await ws.send(HEARTBEAT_FRAME)
            stale = await self._check_subscriptions(ws, now)
            if stale:
                raise _Reconnect(
                    "stale", f"all {stale} subscriptions stay silent after resubscribing"
                )

    async def _check_subscriptions(self, ws: ClientConnection, now: float) -> int:
        """Confirmations, silence and staleness, per subscription. Returns the number of
        stale subscriptions if every subscription with a threshold is stale even after a
        resubscribe (the connection is then suspect), else 0."""
        s = self._settings
        watched = still_stale = 0
        for sub in self.subs.values():
            if sub.confirmed:
                silent = now - sub.last_event
                threshold = s.stale_after_s.get(sub.channel, 0.0)
                if threshold:
                    watched += 1
                    if silent <= threshold:
                        sub.stale_resubscribed = False
                    elif not sub.stale_resubscribed:
                        await self._resubscribe_stale(ws, sub, now, silent, threshold)
                        continue
                    else:
                        still_stale += 1
                elif not sub.silent_warned and silent > s.silence_warning_s:
                    sub.silent_warned = True
                    log.warning(
                        "[conn %d %s] %s confirmed but silent for %.0fs: is %r a listed "
                        "Bitstamp market? (unknown markets are acknowledged, then silent)",
                        self.index,
                        self.connection_id,
                        sub.name,
                        silent,
                        sub.market,
                    )
            elif sub.retry_at:
                if now >= sub.retry_at:
                    log.info("[conn %d] retrying subscription %s", self.index, sub.name)
                    await self._subscribe(ws, sub, now)
            elif now - sub.subscribed_at > s.subscribe_timeout_s:
                self._reject(sub, now, f"no confirmation within {s.subscribe_timeout_s:.0f}s")
        return still_stale if watched and still_stale == watched else 0

    async def _resubscribe_stale(
        self, ws: ClientConnection, sub: SubState, now: float, silent: float, threshold: float
    ) -> None:
        """A silent subscription on a live connection: resubscribe it alone. The silence is
        a gap (from its last event) recovered like any other once it is live again."""
        log.warning(
            "[conn %d %s] %s silent for %.0fs (stale after %.0fs): resubscribing",
            self.index,
            self.connection_id,
            sub.name,
            silent,
            threshold,
        )
        self._metrics.resubscribes.labels(EXCHANGE, sub.channel).inc()
        last_event_us = int((time.time() - silent) * 1_000_000)
        self.gaps.lost([sub], "stale", last_event_us)
        await ws.send(unsubscribe_frame(sub.name))
        await self._subscribe(ws, sub, now)
        sub.stale_resubscribed = True  # _subscribe resets the subscription's state


class Supervisor:
    """Spreads the configured subscriptions over connections and runs them."""

    def __init__(
        self,
        subs: list[tuple[str, str]],
        settings: Settings,
        publisher: Publisher,
        metrics: Metrics,
        checkpoints: dict[str, Checkpoint] | None = None,
    ) -> None:
        size = MAX_CHANNELS_PER_CONNECTION
        self.rest = BitstampRest(settings.bitstamp_rest_url)
        recent = RecentTrades()  # shared: one market's trades may move between connections
        self.connections = [
            Connection(
                i,
                subs[i * size : (i + 1) * size],
                settings,
                publisher,
                metrics,
                Gaps(publisher, self.rest, recent, metrics),
            )
            for i in range((len(subs) + size - 1) // size)
        ]
        for conn in self.connections:
            for sub in conn.subs.values():
                cp = (checkpoints or {}).get(sub.market)
                if sub.channel == "live_trades" and cp is not None:
                    conn.gaps.restarted(sub, cp.trade_id, cp.exchange_ts_us)

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(c.run(stop), name=f"connection-{c.index}") for c in self.connections
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.rest.close()
