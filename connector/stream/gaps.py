"""Gaps and their recovery, for one connection of any exchange (the shared part).

The connection calls these hooks; this module decides what consumers see:

- ``lost(subs, reason, last_frame_us)``: the connection (or one subscription) ended;
  every live subscription is now in a gap that started at the last frame received;
- ``live(sub)``: a subscription is confirmed; recovery starts. *What* recovery means is
  the exchange's: each adapter's subclass implements ``live`` (a REST backfill, a REST
  book snapshot, or marking the next full book as a resync) with the helpers here;
- ``admit(sub, event)``: the read path asks whether to publish an event now (None: held
  during recovery, or a duplicate trade). Diffs older than a resync snapshot are
  published too, ahead of it when they arrive before it is published;
- ``drain(subs)``: the session is ending: publish what is held (it was received, so it
  is not dropped); an unfinished recovery leaves the gap open for the next connection.

Every gap ends in one Status event (kind GAP, or SEQUENCE_BREAK when the stream itself
showed the break) with its recovery. A subclass that finds a break the decoder cannot
see (a REST snapshot that does not join the stream) calls ``resync_wanted``: the
connection resubscribes that subscription.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

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

if TYPE_CHECKING:
    from connector.kafka.publisher import Publisher
    from connector.metrics import Metrics
    from connector.stream.recent import RecentTrades

log = logging.getLogger(__name__)

HOLD_LIMIT = 100_000  # events held per subscription while its recovery runs
# After a REST book snapshot, how long diffs are held for one newer than it to arrive.
RESYNC_WAIT_S = 5.0
# Gap reasons that are breaks seen in the stream itself (status kind SEQUENCE_BREAK).
BREAK_REASONS = frozenset({"sequence_break", "checksum_mismatch", "book_reset"})


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
    down_detail: str = ""
    recovering: bool = False
    held: deque[tuple[MarketEvent, float]] = field(default_factory=deque)
    resync_next: bool = False
    cutoff_us: int = 0  # diffs at or before this time are older than the snapshot
    cutoff_seq: int | None = None  # diffs ending at or before this id are older
    # A REST snapshot fetched but not yet published: diffs older than it go first.
    pending_snapshot: BookDelta | None = None


ResyncWanted = Callable[[SubState, str, str], None]


class Gaps:
    """The shared mechanics; ``live`` is the exchange's (subclasses)."""

    exchange = ""

    def __init__(
        self,
        publisher: Publisher,
        recent: RecentTrades,
        metrics: Metrics,
        resync: ResyncWanted | None = None,
    ) -> None:
        self._publisher = publisher
        self._recent = recent
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_event_id: dict[str, tuple[str, int]] = {}
        self.connection_id = ""
        # the connection's: resubscribes a subscription whose stream broke
        self.resync_wanted = resync

    def trade_key(self, channel: str, market: str) -> str:
        """Where a trade id is unique (one trade channel per market by default)."""
        return market

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
            self._recent.add(self.trade_key(sub.channel, sub.market), str(last_trade_id))

    # --- hooks -----------------------------------------------------------------------
    def lost(self, subs: list[SubState], reason: str, last_frame_us: int, detail: str = "") -> None:
        for sub in subs:
            if sub.confirmed and sub.down_since_us is None:
                sub.down_since_us = last_frame_us
                sub.down_reason = reason
                sub.down_detail = detail
            sub.confirmed = False
            sub.resync_next = False
            self._last_event_id.pop(sub.name, None)  # a new subscription, a new chain

    def live(self, sub: SubState) -> None:
        raise NotImplementedError

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
            if not self._recent.add(self.trade_key(sub.channel, event.market), event.trade_id):
                self._metrics.duplicates.labels(self.exchange, sub.channel).inc()
                self._metrics.events_dropped.labels(self.exchange, sub.channel, "duplicate").inc()
                return None
        elif isinstance(event, OrderEvent):
            self._check_chain(sub, event)
        elif isinstance(event, BookSnapshot):
            if (
                (sub.cutoff_seq is not None or sub.cutoff_us)  # only right after a snapshot
                and isinstance(event, BookDelta)
                and not event.resync
                and self._stale_diff(sub, event)
            ):
                # Older than the resync published before it (it came that late): it was
                # received, so it is published; the contract tells consumers to skip a
                # diff not newer than the last resync.
                self._metrics.stale_diffs.labels(self.exchange).inc()
            if sub.resync_next:
                sub.resync_next = False
                return msgspec.structs.replace(event, resync=True)
        return event

    def _stale_diff(self, sub: SubState, event: BookDelta) -> bool:
        """Older than the snapshot that resynced the book (then the cutoff is cleared at
        the first newer diff)."""
        if sub.cutoff_seq is not None and event.exchange_sequence is not None:
            if event.exchange_sequence <= sub.cutoff_seq:
                return True
            self._joined(sub, event)
            sub.cutoff_seq = None
        elif sub.cutoff_us:
            if event.exchange_ts_us <= sub.cutoff_us:
                return True
            sub.cutoff_us = 0
        return False

    def _joined(self, sub: SubState, first: BookDelta) -> None:
        """The first diff after a sequence-numbered snapshot (a subclass checks it
        joins)."""

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
        """Publishes what was held, in order, then lets events through. A fetched
        snapshot goes out just before the first held diff newer than it: the diffs it
        supersedes precede it, so a consumer replaying the topic ends at its book."""
        while sub.held:
            event, receive_ts = sub.held.popleft()
            if sub.pending_snapshot is not None and not _older_than(sub.pending_snapshot, event):
                await self._publish_snapshot(sub)
            kept = self._filter(sub, event)
            if kept is not None:
                await self._publisher.publish(kept, receive_ts)
        if sub.pending_snapshot is not None:
            await self._publish_snapshot(sub)
        sub.recovering = False

    async def _publish_snapshot(self, sub: SubState) -> None:
        snapshot, sub.pending_snapshot = sub.pending_snapshot, None
        assert snapshot is not None
        await self._publisher.publish(snapshot, time.time())
        if snapshot.exchange_sequence is not None:
            sub.cutoff_seq = snapshot.exchange_sequence
        else:
            sub.cutoff_us = snapshot.exchange_ts_us

    async def _await_newer_diff(self, sub: SubState) -> None:
        """Holds on until a diff newer than the fetched snapshot arrives (the stream has
        passed it: no older diff follows), at most ``RESYNC_WAIT_S`` (a quiet book)."""
        snapshot = sub.pending_snapshot
        assert snapshot is not None
        deadline = time.monotonic() + RESYNC_WAIT_S
        while time.monotonic() < deadline and not self.full(sub):
            if any(not _older_than(snapshot, event) for event, _ in reversed(sub.held)):
                return
            await asyncio.sleep(0.02)

    async def _publish_backfill(self, sub: SubState, trades: list[Trade]) -> int:
        """Publishes backfilled trades (oldest first) that were neither published nor
        received live; their count. A trade held live (it arrived while the backfill was
        fetched) is published from its live frame, with its exact texts, when the hold is
        released: its REST copy is not used. A REST trade newer than the first held live
        one (ids that are numbers) joins the hold at its place, so the topic stays in
        trade order."""
        key = self.trade_key(sub.channel, sub.market)
        live_ids = {e.trade_id for e, _ in sub.held if isinstance(e, Trade)}
        first_live = min((int(i) for i in live_ids if i.isdigit()), default=None)
        published = 0
        for trade in trades:
            if trade.trade_id in live_ids or self._recent.seen(key, trade.trade_id):
                continue
            if (
                first_live is not None
                and trade.trade_id.isdigit()
                and int(trade.trade_id) > first_live
            ):
                _hold_in_order(sub, trade)
                published += 1
                continue
            self._recent.add(key, trade.trade_id)
            await self._publisher.publish(trade, time.time())
            published += 1
        self._metrics.backfilled.labels(self.exchange).inc(published)
        return published

    async def _resync_from(
        self, sub: SubState, gap_start: int | None, fetch: Callable[[], Awaitable[BookDelta]]
    ) -> None:
        """Publishes a REST book snapshot (``resync=True``) among the held diffs: those
        older than it (by update id when it has one, else by time) first, in arrival
        order, then the snapshot, then the newer ones. Every diff received is published:
        a consumer skips a diff not newer than the last resync."""
        end = now_us()
        recovery, detail, published = Recovery.RESYNCED, "", 0
        try:
            sub.pending_snapshot = await fetch()
            published = 1
        except (RestError, ProtocolError) as exc:
            recovery, detail = Recovery.FAILED, f"snapshot failed: {exc}"
            log.error("%s: no REST snapshot (%s); diffs follow without a resync", sub.name, exc)
        if sub.pending_snapshot is not None:
            await self._await_newer_diff(sub)
        await self._release(sub)
        if gap_start is not None:
            await self._close_gap(sub, gap_start, recovery, published, detail, end)

    def _close_gap_later(
        self, sub: SubState, start: int, recovery: Recovery, recovered: int, detail: str
    ) -> None:
        self._spawn(self._close_gap(sub, start, recovery, recovered, detail))

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
        reason = sub.down_reason or "unknown"
        if sub.down_detail:
            detail = f"{sub.down_detail}; {detail}" if detail else sub.down_detail
            sub.down_detail = ""
        self._metrics.gaps.labels(self.exchange, sub.channel, reason).inc()
        await self._publisher.publish_status(
            Status(
                exchange=self.exchange,
                market=sub.market,
                channel=sub.channel,
                kind=StatusKind.SEQUENCE_BREAK if reason in BREAK_REASONS else StatusKind.GAP,
                reason=reason,
                start_us=start,
                end_us=end or now_us(),
                recovery=recovery,
                recovered_events=recovered,
                connection_id=self.connection_id,
                detail=detail,
                emitted_ts_us=now_us(),
            )
        )

    def _check_chain(self, sub: SubState, event: OrderEvent) -> None:
        if event.event_id is None:
            return
        previous = self._last_event_id.get(sub.name)
        self._last_event_id[sub.name] = (event.event_id, event.exchange_ts_us)
        if previous is None or event.pre_event_id is None or event.pre_event_id == previous[0]:
            return
        self._spawn(
            self._publisher.publish_status(
                Status(
                    exchange=self.exchange,
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


class SnapshotGaps(Gaps):
    """For exchanges that send a full book on every (re)subscription (Bybit, Bitfinex):
    a book's gap is closed by that snapshot, marked resync. Trades are backfilled with
    ``fetch_trades`` (a subclass's REST call: the trades since the gap began, oldest
    first, and whether they surely cover the whole gap)."""

    book_channels: frozenset[str] = frozenset()

    def live(self, sub: SubState) -> None:
        gap_start = sub.down_since_us
        if sub.channel in self.book_channels:
            sub.resync_next = True
            if gap_start is not None:
                self._close_gap_later(
                    sub,
                    gap_start,
                    Recovery.RESYNCED,
                    0,
                    "the book snapshot sent on resubscription is marked resync",
                )
        elif gap_start is not None:
            sub.recovering = True  # hold live trades until the backfill is published
            self._spawn(self._backfill(sub, gap_start))

    async def fetch_trades(self, sub: SubState, gap_start_us: int) -> tuple[list[Trade], str]:
        """Trades since ``gap_start_us`` (oldest first) and, if they may not cover the
        whole gap, why (empty: complete)."""
        raise NotImplementedError

    async def _backfill(self, sub: SubState, gap_start: int) -> None:
        end = now_us()
        try:
            trades, incomplete = await self.fetch_trades(sub, gap_start)
            recovery = Recovery.FAILED if incomplete else Recovery.BACKFILLED
            detail = incomplete
        except (RestError, ProtocolError) as exc:
            trades, recovery, detail = [], Recovery.FAILED, f"backfill failed: {exc}"
        published = await self._publish_backfill(sub, trades)
        await self._release(sub)
        await self._close_gap(sub, gap_start, recovery, published, detail, end)


def _older_than(snapshot: BookDelta, event: MarketEvent) -> bool:
    """A diff the snapshot already contains (by update id when both have one)."""
    if not isinstance(event, BookDelta) or event.resync:
        return False
    if snapshot.exchange_sequence is not None and event.exchange_sequence is not None:
        return event.exchange_sequence <= snapshot.exchange_sequence
    return event.exchange_ts_us <= snapshot.exchange_ts_us


def _hold_in_order(sub: SubState, trade: Trade) -> None:
    """Puts a backfilled trade among the held live ones, before the first with a larger
    id (the release publishes the hold in order)."""
    tid = int(trade.trade_id)
    for i, (event, _) in enumerate(sub.held):
        if isinstance(event, Trade) and event.trade_id.isdigit() and int(event.trade_id) > tid:
            sub.held.insert(i, (trade, time.time()))
            return
    sub.held.append((trade, time.time()))
