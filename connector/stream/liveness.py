"""Whether a connection is alive, once a second.

Heartbeats (the adapter's application-level ping; no reply within the deadline: the
connection is dead), the connection's age (rotated make-before-break before the server
drops it), and the subscriptions' confirmations and silence. Kafka backpressure and an
announced maintenance pause the heartbeat deadline: they are no evidence of a dead
connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from connector.stream.link import Reconnect

if TYPE_CHECKING:
    from connector.exchanges.base import Adapter
    from connector.kafka.publisher import Publisher
    from connector.settings import Settings
    from connector.stream.link import Link
    from connector.stream.subscriptions import Subscriptions

log = logging.getLogger(__name__)


class Liveness:
    def __init__(
        self,
        subscriptions: Subscriptions,
        adapter: Adapter,
        settings: Settings,
        publisher: Publisher,
    ) -> None:
        self._subs = subscriptions
        self._settings = settings
        self._publisher = publisher
        self.tag = subscriptions.tag
        max_age = settings.connection_max_age_s
        if adapter.server_max_age_s:  # rotate well before the server drops it
            limit = adapter.server_max_age_s * 0.95
            max_age = min(max_age, limit) if max_age else limit
        self.max_age = max_age

    async def watch(self, link: Link) -> None:
        """Heartbeats, subscription confirmations, silence and the connection's age, once
        a second. Raises ``Reconnect`` when the connection is dead or suspect."""
        s = self._settings
        next_hb = time.monotonic() + s.heartbeat_interval_s
        max_age = self.max_age
        while True:
            await asyncio.sleep(min(1.0, s.heartbeat_interval_s))
            if self._subs.draining is not None:
                continue  # shutting down: unsubscriptions are expected, not failures
            now = time.monotonic()
            if self._publisher.saturated or link.paused:
                # The reader is paused by Kafka backpressure, so replies sit unread; or
                # the exchange announced maintenance: no evidence of a dead connection.
                link.hb_pending_since = 0.0
            elif link.hb_pending_since and now - link.hb_pending_since > s.heartbeat_timeout_s:
                raise Reconnect(
                    "heartbeat_timeout",
                    f"no heartbeat reply within {s.heartbeat_timeout_s:.0f}s (half-open?)",
                )
            if now >= next_hb and not link.paused:  # a ping in maintenance may go unanswered
                next_hb = now + s.heartbeat_interval_s
                if not link.hb_pending_since:
                    link.hb_pending_since = now
                link.hb_sent += 1
                await link.send([link.decoder.ping()])
            if not link.handover_reason and max_age and now - link.opened > max_age:
                log.info(
                    "[%s %s] connection is %.0fs old (limit %.0fs): rotating it make-before-break",
                    self.tag,
                    link.cid,
                    now - link.opened,
                    max_age,
                )
                link.want_handover("max_age")
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
            stale = await self._subs.check(link, now)
            if stale:
                raise Reconnect(
                    "stale", f"all {stale} subscriptions stay silent after resubscribing"
                )
