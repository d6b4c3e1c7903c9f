"""The exchange's control messages on one connection, acted on.

Heartbeat replies (liveness and the handover barrier), subscription and unsubscription
confirmations, the exchange asking for a reconnect, errors, stream breaks (``Resync``)
and maintenance. A successor that is not publishing yet only collects what its
handover needs; its breaks are acted on once it takes over.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from connector.events import (
    ExchangeError,
    HeartbeatReply,
    Maintenance,
    ReconnectRequested,
    Resync,
    SubscriptionSucceeded,
    UnsubscriptionSucceeded,
)

if TYPE_CHECKING:
    from connector.metrics import Metrics
    from connector.stream.link import Link
    from connector.stream.subscriptions import Subscriptions

log = logging.getLogger(__name__)


class Control:
    def __init__(self, subscriptions: Subscriptions, metrics: Metrics) -> None:
        self._subs = subscriptions
        self._metrics = metrics
        self.tag = subscriptions.tag

    def handle(self, msg: object, link: Link) -> None:
        if isinstance(msg, HeartbeatReply):
            link.hb_pending_since = 0.0
            link.hb_replies += 1
            if link.barrier and link.hb_replies >= link.barrier:
                link.stop_reading = True
            return
        if link.buffering:
            self._successor(msg, link)
        elif isinstance(msg, SubscriptionSucceeded):
            sub = self._subs.by_name.get(msg.channel)
            if sub is None:
                log.warning(
                    "[%s] confirmation for a channel we did not ask for: %s",
                    self.tag,
                    msg.channel,
                )
                return
            link.confirmed.add(sub.name)
            if not sub.confirmed:
                self._subs.confirmed(link, sub)
        elif isinstance(msg, UnsubscriptionSucceeded):
            self._subs.unsubscription_confirmed(msg.channel)
        elif isinstance(msg, ReconnectRequested):
            if not link.handover_reason:
                log.warning(
                    "[%s %s] the exchange asked us to reconnect: handing over make-before-break",
                    self.tag,
                    link.cid,
                )
                link.want_handover("request_reconnect")
        elif isinstance(msg, ExchangeError):
            self._exchange_error(msg, link)
        elif isinstance(msg, Resync):
            sub = self._subs.by_name.get(msg.channel)
            if sub is not None and sub.confirmed:
                self._subs.resync_wanted(sub, msg.reason, msg.detail)
        elif isinstance(msg, Maintenance):
            self._maintenance(msg, link)

    def _successor(self, msg: object, link: Link) -> None:
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

    def _maintenance(self, msg: Maintenance, link: Link) -> None:
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
            link.want_handover("maintenance_ended")

    def _exchange_error(self, msg: ExchangeError, link: Link) -> None:
        self._metrics.exchange_errors.labels(self._subs.exchange).inc()
        log.error(
            "[%s %s] exchange error on subscription %r: code=%s message=%s",
            self.tag,
            link.cid,
            msg.channel,
            msg.code,
            msg.message,
        )
        sub = self._subs.by_name.get(msg.channel)
        if sub is not None and not sub.confirmed and not link.buffering:
            self._subs.reject(sub, time.monotonic(), f"error {msg.message}")
