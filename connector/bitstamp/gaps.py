"""Gaps and their recovery for one Bitstamp connection.

The connection calls four hooks; this module decides what consumers see:

- ``lost(reason, last_frame_us)``: the connection ended; every live subscription is now in
  a gap that started at the last frame received;
- ``live(sub)``: a subscription is confirmed; recovery starts by channel:
    live_trades        backfill from REST /transactions/ (after a gap), oldest first,
                       deduplicated by trade id, held live trades published after it;
    diff_order_book    a REST snapshot, always (also at start: diffs alone build no book),
                       published as BookDelta(resync=True); older diffs discarded;
    order_book,
    detail_order_book  the next message (a full book) is marked resync;
    live_orders,
    funding_rate       nothing to fetch (reported; funding_rate is self-healing);
  every gap ends in one Status event (kind GAP) with its recovery;
- ``admit(event)``: the read path asks whether to publish an event now (False: held during
  recovery, a duplicate trade, or a diff older than the resync snapshot);
- ``drain()``: the session is ending: publish what is held (it was received, so it is not
  dropped); an unfinished recovery leaves the gap open for the next connection.

Live-order event chains (``event_id``/``pre_event_id``) are checked here too: a break is a
Status event of kind SEQUENCE_BREAK.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from connector.bitstamp.protocol import EXCHANGE
from connector.bitstamp.recovery import (
    RecentTrades,
    backfill_span,
    snapshot_from_rest,
    trades_from_rest,
)
from connector.bitstamp.rest import BitstampRest
from connector.errors import ProtocolError, RestError
from connector.events import (
    BookDelta,
    BookSnapshot,
    MarketEvent,
    OrderEvent,
    Recovery,
    Status,
    StatusKind,
    Trade,
)
from connector.metrics import Metrics
from connector.pipeline import Publisher

log = logging.getLogger(__name__)

HOLD_LIMIT = 100_000  # events held per subscription while its recovery runs


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(slots=True)
class SubState:
    channel: str
    market: str
    name: str
    subscribed_at: float = 0.0  # monotonic, when the subscribe frame was sent
    confirmed: bool = False
    last_event: float = 0.0  # monotonic
    retry_at: float = 0.0  # monotonic; 0: not waiting
    silent_warned: bool = False
    stale_resubscribed: bool = False
    # gap bookkeeping
    down_since_us: int | None = None
    down_reason: str = ""
    recovering: bool = False
    held: deque[tuple[MarketEvent, float]] = field(default_factory=deque)
    resync_next: bool = False
    cutoff_us: int = 0  # diffs at or before this time are older than the snapshot


class Gaps:
    def __init__(
        self,
        publisher: Publisher,
        rest: BitstampRest,
        recent: RecentTrades,
        metrics: Metrics,
    ) -> None:
        self._publisher = publisher
        self._rest = rest
        self._recent = recent
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_event_id: dict[str, tuple[str, int]] = {}
        self.connection_id = ""

    def restarted(
        self,
        sub: SubState,
        last_trade_id: int | None,
        last_event_us: int,
        reason: str = "restart",
    ) -> None:
        """Before the subscription starts here (a restart, or a subscription taken over
        from another replica): the gap since the last event published for it."""
        sub.down_since_us = last_event_us
        sub.down_reason = reason
        if last_trade_id is not None:
            self._recent.add(sub.market, str(last_trade_id))

    # --- hooks -----------------------------------------------------------------------
    def lost(self, subs: list[SubState], reason: str, last_frame_us: int) -> None:
        for sub in subs:
            if sub.confirmed and sub.down_since_us is None:
                sub.down_since_us = last_frame_us
                sub.down_reason = reason
            sub.confirmed = False
            sub.resync_next = False
            if sub.channel == "live_orders":
                self._last_event_id.pop(sub.market, None)  # a new subscription, a new chain

    def live(self, sub: SubState) -> None:
        gap_start = sub.down_since_us
        if sub.channel == "live_trades" and gap_start is not None:
            sub.recovering = True  # hold live trades until the backfill is published
            self._spawn(self._backfill(sub, gap_start))
        elif sub.channel == "diff_order_book":
            sub.recovering = True  # hold diffs until the snapshot is published
            self._spawn(self._resync_diffs(sub, gap_start))
        elif sub.channel in ("order_book", "detail_order_book"):
            sub.resync_next = True
            if gap_start is not None:
                self._spawn(
                    self._close_gap(
                        sub, gap_start, Recovery.RESYNCED, 0, "the next full book is marked resync"
                    )
                )
        elif gap_start is not None:
            if sub.channel == "funding_rate":
                detail = "funding_rate messages are full state; the next one is current"
            elif sub.channel.startswith("private_"):
                detail = (
                    "account events in the gap are not replayed on the WebSocket; reconcile "
                    "with the REST API (open_orders, user_transactions)"
                )
            else:
                detail = (
                    "order events in the gap cannot be fetched; rebuild L3 state from a "
                    "detail_order_book resync"
                )
            self._spawn(self._close_gap(sub, gap_start, Recovery.NONE, 0, detail))

    def admit(self, sub: SubState, event: MarketEvent, receive_ts: float) -> MarketEvent | None:
        """The event to publish now, or None (held, duplicate, or stale)."""
        if sub.recovering:
            sub.held.append((event, receive_ts))
            return None
        return self._filter(sub, event)

    def full(self, sub: SubState) -> bool:
        return sub.recovering and len(sub.held) >= HOLD_LIMIT

    async def overflow(self, sub: SubState) -> None:
        """The hold is full and recovery is still running: stop waiting for it. What is
        held is published now, in order, before anything newer (the reader awaits this,
        so Kafka backpressure applies); the recovery's own events follow when it ends."""
        log.error(
            "%s: %d events held while recovering; publishing them without waiting",
            sub.name,
            len(sub.held),
        )
        await self._release(sub)

    def _filter(self, sub: SubState, event: MarketEvent) -> MarketEvent | None:
        if isinstance(event, Trade):
            if not self._recent.add(event.market, event.trade_id):
                self._metrics.duplicates.labels(EXCHANGE, "live_trades").inc()
                self._metrics.events_dropped.labels(EXCHANGE, "live_trades", "duplicate").inc()
                return None
        elif isinstance(event, OrderEvent):
            self._check_chain(event)
        elif isinstance(event, BookSnapshot):
            if sub.cutoff_us and isinstance(event, BookDelta):
                if event.exchange_ts_us <= sub.cutoff_us:
                    self._metrics.stale_diffs.labels(EXCHANGE).inc()
                    self._metrics.events_dropped.labels(EXCHANGE, sub.channel, "stale_diff").inc()
                    return None
                sub.cutoff_us = 0
            if sub.resync_next:
                sub.resync_next = False
                return replace(event, resync=True)
        return event

    async def drain(self, subs: list[SubState]) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in subs:
            await self._release(sub)

    # --- recovery tasks ----------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("recovery task failed: %r", task.exception())

    async def _release(self, sub: SubState) -> None:
        """Publishes what was held, in order, then lets events through."""
        while sub.held:
            event, receive_ts = sub.held.popleft()
            kept = self._filter(sub, event)
            if kept is not None:
                await self._publisher.publish(kept, receive_ts)
        sub.recovering = False

    async def _backfill(self, sub: SubState, gap_start: int) -> None:
        end = now_us()
        span, whole = backfill_span((end - gap_start) / 1e6)
        recovery, detail, trades = Recovery.BACKFILLED, "", []
        try:
            payload = await self._rest.transactions(sub.market, span)
            trades = trades_from_rest(
                payload,
                sub.market,
                connection_id=self.connection_id,
                receive_ts_us=end,
                after_id=self._recent.last_id.get(sub.market),
                since_us=gap_start,
                recent=self._recent,
            )
            if not whole:
                recovery = Recovery.FAILED
                detail = "gap longer than a day: older trades are beyond the REST window"
        except (RestError, ProtocolError) as exc:
            recovery, detail = Recovery.FAILED, f"backfill failed: {exc}"
        published = 0
        for trade in trades:
            if self._recent.add(trade.market, trade.trade_id):
                await self._publisher.publish(trade, time.time())
                published += 1
        self._metrics.backfilled.labels(EXCHANGE).inc(published)
        await self._release(sub)
        await self._close_gap(sub, gap_start, recovery, published, detail, end)

    async def _resync_diffs(self, sub: SubState, gap_start: int | None) -> None:
        end = now_us()
        recovery, detail, published = Recovery.RESYNCED, "", 0
        try:
            payload = await self._rest.order_book(sub.market)
            snapshot = snapshot_from_rest(
                payload, sub.market, connection_id=self.connection_id, receive_ts_us=now_us()
            )
            await self._publisher.publish(snapshot, time.time())
            sub.cutoff_us = snapshot.exchange_ts_us
            published = 1
        except (RestError, ProtocolError) as exc:
            recovery, detail = Recovery.FAILED, f"snapshot failed: {exc}"
            log.error("%s: no REST snapshot (%s); diffs follow without a resync", sub.name, exc)
        await self._release(sub)
        if gap_start is not None:
            await self._close_gap(sub, gap_start, recovery, published, detail, end)

    async def _close_gap(
        self,
        sub: SubState,
        start: int,
        recovery: Recovery,
        recovered: int,
        detail: str,
        end: int | None = None,
    ) -> None:
        sub.down_since_us = None
        self._metrics.gaps.labels(EXCHANGE, sub.channel, sub.down_reason).inc()
        await self._publisher.publish_status(
            Status(
                exchange=EXCHANGE,
                market=sub.market,
                channel=sub.channel,
                kind=StatusKind.GAP,
                reason=sub.down_reason or "unknown",
                start_us=start,
                end_us=end or now_us(),
                recovery=recovery,
                recovered_events=recovered,
                connection_id=self.connection_id,
                detail=detail,
                emitted_ts_us=now_us(),
            )
        )

    def _check_chain(self, event: OrderEvent) -> None:
        if event.event_id is None:
            return
        previous = self._last_event_id.get(event.market)
        self._last_event_id[event.market] = (event.event_id, event.exchange_ts_us)
        if previous is None or event.pre_event_id is None or event.pre_event_id == previous[0]:
            return
        self._spawn(
            self._publisher.publish_status(
                Status(
                    exchange=EXCHANGE,
                    market=event.market,
                    channel=event.channel,
                    kind=StatusKind.SEQUENCE_BREAK,
                    reason="event_chain",
                    start_us=previous[1],
                    end_us=event.exchange_ts_us,
                    recovery=Recovery.NONE,
                    recovered_events=0,
                    connection_id=self.connection_id,
                    detail=f"pre_event_id {event.pre_event_id} does not follow {previous[0]}",
                    emitted_ts_us=now_us(),
                )
            )
        )
