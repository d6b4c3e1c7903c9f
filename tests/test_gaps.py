"""Gaps: holding during recovery keeps the exchange's order, even when the hold fills up.

The publisher here is a recording stand-in: this tests the ordering logic of Gaps, not
Kafka (the broker paths are covered by the integration tests)."""

from __future__ import annotations

from typing import Any

import pytest

from connector.events import OrderEvent, OrderEventType, Side
from connector.exchanges.bitstamp.recovery import BitstampGaps as Gaps
from connector.metrics import Metrics
from connector.stream import gaps as gaps_module
from connector.stream.gaps import SubState
from connector.stream.recent import RecentTrades
from tests.frames import header


class Recorder:
    def __init__(self) -> None:
        self.published: list[Any] = []

    async def publish(self, event: Any, receive_ts: float) -> None:
        self.published.append(event)

    async def publish_status(self, status: Any) -> None:
        self.published.append(status)


def order(i: int) -> OrderEvent:
    return OrderEvent(
        **header("live_orders", i, i),
        event_type=OrderEventType.CREATED,
        order_id=str(i),
        side=Side.BUY,
        price="1",
        amount="1",
    )


async def test_a_full_hold_is_published_in_order_before_newer_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gaps_module, "HOLD_LIMIT", 5)
    recorder = Recorder()
    gaps = Gaps(recorder, None, RecentTrades(), Metrics())  # type: ignore[arg-type]
    sub = SubState("live_orders", "btcusd", "live_orders_btcusd", recovering=True)
    # The read path, as the connection runs it, while a recovery never finishes.
    for i in range(1, 13):
        if gaps.full(sub):
            await gaps.overflow(sub)
        kept = gaps.admit(sub, order(i), 0.0)
        if kept is not None:
            await recorder.publish(kept, 0.0)
    assert [e.sequence for e in recorder.published] == list(range(1, 13))
    assert not sub.recovering and not sub.held
