"""Make-before-break: publishing the overlap of two connections once (pure, no I/O).

When the exchange asks for a reconnect (or a connection reaches its age limit) a
successor connection subscribes while the old one keeps reading. Both then receive the
same events for a while, in the same order (the exchange sends each channel as one
stream). The connection code ends the old reader at a *barrier*: the reply to a heartbeat
sent after the successor's subscriptions were confirmed, so the old connection has read
everything the exchange sent it before the successor's streams began. From then on:

- ``Tail`` records the identity of every event the old connection received since the
  handover began, per subscription;
- ``Dedup`` (one per subscription, from the tail) drops the successor's events the old
  connection already delivered. It stops filtering at the first event newer than the
  old connection's last one, or at that last one itself: after it, everything is new.

Identity: a trade by its id; an order event by (time, order id, event type, event id);
anything else (books, funding) by its timestamp.
"""

from __future__ import annotations

from collections.abc import Hashable

from connector.events import MarketEvent, OrderEvent, Trade


def identity(event: MarketEvent) -> Hashable:
    if isinstance(event, Trade):
        return ("trade", event.trade_id)
    if isinstance(event, OrderEvent):
        return ("order", event.exchange_ts_us, event.order_id, event.event_type, event.event_id)
    return (event.channel, event.exchange_ts_us)


class Dedup:
    """Filters one subscription's successor stream against the old connection's tail."""

    __slots__ = ("_keys", "_last_key", "_last_ts", "done", "dropped")

    def __init__(self, keys: dict[Hashable, int]) -> None:
        # key → exchange time, in the order the old connection received them
        self._keys = keys
        self._last_key, self._last_ts = next(reversed(keys.items()))
        self.done = False
        self.dropped = 0

    def keep(self, event: MarketEvent) -> bool:
        if self.done:
            return True
        key = identity(event)
        if key in self._keys:
            self.dropped += 1
            if key == self._last_key:
                self.done = True  # the old connection's last event: all after it is new
            return False
        if event.exchange_ts_us > self._last_ts:
            self.done = True
        return True


class Tail:
    """What the old connection received during a handover, per subscription (bounded:
    ``limit`` events in all; beyond it the handover is abandoned, not the data)."""

    __slots__ = ("_by_sub", "count", "limit")

    def __init__(self, limit: int = 500_000) -> None:
        self._by_sub: dict[str, dict[Hashable, int]] = {}
        self.count = 0
        self.limit = limit

    def saw(self, sub: str, event: MarketEvent) -> None:
        keys = self._by_sub.get(sub)
        if keys is None:
            keys = self._by_sub[sub] = {}
        keys[identity(event)] = event.exchange_ts_us
        self.count += 1

    @property
    def overflowing(self) -> bool:
        return self.count > self.limit

    def filters(self) -> dict[str, Dedup]:
        return {sub: Dedup(keys) for sub, keys in self._by_sub.items() if keys}
