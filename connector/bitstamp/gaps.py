"""Bitstamp's recovery after a gap (the shared mechanics are in ``connector.gaps``).

``live(sub)``: a subscription is confirmed; recovery starts by channel:
    live_trades        backfill from REST /transactions/ (after a gap), oldest first,
                       deduplicated by trade id, held live trades published after it;
    diff_order_book    a REST snapshot, always (also at start: diffs alone build no book),
                       published as BookDelta(resync=True); older diffs discarded;
    order_book,
    detail_order_book  the next message (a full book) is marked resync;
    live_orders,
    funding_rate       nothing to fetch (reported; funding_rate is self-healing);
every gap ends in one Status event (kind GAP) with its recovery.

Live-order event chains (``event_id``/``pre_event_id``) are checked here too: a break is a
Status event of kind SEQUENCE_BREAK.
"""

from __future__ import annotations

import logging

from connector.bitstamp.protocol import EXCHANGE
from connector.bitstamp.recovery import (
    backfill_span,
    snapshot_from_rest,
    trades_from_rest,
)
from connector.bitstamp.rest import BitstampRest
from connector.errors import ProtocolError, RestError
from connector.events import BookDelta, Recovery
from connector.gaps import Gaps, SubState, now_us
from connector.metrics import Metrics
from connector.pipeline import Publisher
from connector.recent import RecentTrades

log = logging.getLogger(__name__)

__all__ = ["BitstampGaps", "SubState"]


class BitstampGaps(Gaps):
    exchange = EXCHANGE

    def __init__(
        self,
        publisher: Publisher,
        rest: BitstampRest,
        recent: RecentTrades,
        metrics: Metrics,
    ) -> None:
        super().__init__(publisher, recent, metrics)
        self._rest = rest

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
                self._close_gap_later(
                    sub, gap_start, Recovery.RESYNCED, 0, "the next full book is marked resync"
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
            self._close_gap_later(sub, gap_start, Recovery.NONE, 0, detail)

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
        published = await self._publish_backfill(sub, trades)
        await self._release(sub)
        await self._close_gap(sub, gap_start, recovery, published, detail, end)

    async def _resync_diffs(self, sub: SubState, gap_start: int | None) -> None:
        async def fetch() -> BookDelta:
            payload = await self._rest.order_book(sub.market)
            return snapshot_from_rest(
                payload, sub.market, connection_id=self.connection_id, receive_ts_us=now_us()
            )

        await self._resync_from(sub, gap_start, fetch)
