"""One connection's subscriptions and keeping them live.

Subscribing (public channels first, private ones with a token), confirmations and their
deadline, rejections retried after a long backoff, resubscribing one subscription whose
stream broke or went silent, and the silence warning. Every break is handed to the
connection's gap recovery (``Gaps``), which this object creates and owns: recovery asks
back for a resubscription through ``resync_wanted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from websockets.exceptions import ConnectionClosed

from connector.stream.gaps import SubState

if TYPE_CHECKING:
    from connector.exchanges.base import Adapter
    from connector.metrics import Metrics
    from connector.settings import Settings
    from connector.stream.gaps import Gaps, ResyncWanted
    from connector.stream.link import Link

log = logging.getLogger(__name__)


class Subscriptions:
    def __init__(
        self,
        tag: str,
        pairs: list[tuple[str, str]],
        adapter: Adapter,
        settings: Settings,
        metrics: Metrics,
        new_gaps: Callable[[ResyncWanted], Gaps],
        background: set[asyncio.Task[None]],
    ) -> None:
        self.tag = tag
        self.adapter = adapter
        self.exchange = adapter.name
        self._settings = settings
        self._metrics = metrics
        self._background = background
        name = adapter.sub_name
        self.by_name = {name(c, m): SubState(c, m, name(c, m)) for c, m in pairs}
        self.by_pair = {(s.channel, s.market): s for s in self.by_name.values()}
        self.gaps = new_gaps(self.resync_wanted)
        self.active: Link | None = None  # the connection publishing now
        self.unsubscribed = asyncio.Event()  # an unsubscription was confirmed
        self.draining: asyncio.Event | None = None  # set while draining at shutdown
        self._resyncing: set[str] = set()

    @property
    def cid(self) -> str:
        return self.active.cid if self.active is not None else ""

    def __len__(self) -> int:
        return len(self.by_name)

    def all(self) -> list[SubState]:
        return list(self.by_name.values())

    def live(self) -> list[SubState]:
        return [s for s in self.by_name.values() if s.confirmed]

    def take(self, subs: list[SubState]) -> None:
        for sub in subs:
            self.by_name[sub.name] = sub
            self.by_pair[(sub.channel, sub.market)] = sub

    def forget(self, subs: list[SubState]) -> None:
        for sub in subs:
            sub.confirmed = False
            self.by_name.pop(sub.name, None)
            self.by_pair.pop((sub.channel, sub.market), None)

    def unsubscription_confirmed(self, name: str) -> None:
        sub = self.by_name.get(name)
        if sub is not None:
            sub.confirmed = False
        self.unsubscribed.set()
        if self.draining is not None and not any(s.confirmed for s in self.by_name.values()):
            self.draining.set()

    # --- subscribing -------------------------------------------------------------------
    async def subscribe(self, link: Link, subs: list[SubState], now: float) -> None:
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
            await link.send(frames)
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
                self.cid,
                len(failed),
                error,
                retry,
            )

    def confirmed(self, link: Link, sub: SubState) -> None:
        sub.confirmed = True
        sub.last_event = time.monotonic()
        log.info("[%s %s] subscribed %s", self.tag, link.cid, sub.name)
        self.gaps.live(sub)

    def reject(self, sub: SubState, now: float, why: str) -> None:
        sub.retry_at = now + self._settings.resubscribe_backoff_s
        log.error(
            "[%s %s] subscription %s not accepted (%s); retrying in %.0fs",
            self.tag,
            self.cid,
            sub.name,
            why,
            self._settings.resubscribe_backoff_s,
        )

    # --- a broken stream ---------------------------------------------------------------
    def resync_wanted(self, sub: SubState, reason: str, detail: str) -> None:
        """A subscription's stream broke: resubscribed (the exchange sends a fresh
        snapshot, or recovery fetches one); the break is a gap recovered as usual."""
        if sub.name in self._resyncing or self.active is None:
            return
        link = self.active
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
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _resubscribe(self, link: Link, sub: SubState) -> None:
        try:
            with contextlib.suppress(ConnectionClosed):
                await link.send(link.decoder.unsubscribe([sub.name]))
                await self.subscribe(link, [sub], time.monotonic())
        finally:
            self._resyncing.discard(sub.name)

    # --- once a second: confirmations, silence, staleness --------------------------------
    async def check(self, link: Link, now: float) -> int:
        """Confirmations, silence and staleness, per subscription. Returns the number of
        stale subscriptions if every subscription with a threshold is stale even after a
        resubscribe (the connection is then suspect), else 0."""
        s = self._settings
        watched = still_stale = 0
        due: list[SubState] = []
        for sub in self.by_name.values():
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
                        self.cid,
                        sub.name,
                        silent,
                        self.adapter.silence_hint(sub),
                    )
            elif sub.retry_at:
                if now >= sub.retry_at:
                    log.info("[%s] retrying subscription %s", self.tag, sub.name)
                    due.append(sub)
            elif now - sub.subscribed_at > s.subscribe_timeout_s:
                self.reject(sub, now, f"no confirmation within {s.subscribe_timeout_s:.0f}s")
        if due:
            await self.subscribe(link, due, now)  # one token for all private ones
        return still_stale if watched and still_stale == watched else 0

    async def _resubscribe_stale(
        self, link: Link, sub: SubState, now: float, silent: float, threshold: float
    ) -> None:
        """A silent subscription on a live connection: resubscribe it alone. The silence is
        a gap (from its last event) recovered like any other once it is live again."""
        log.warning(
            "[%s %s] %s silent for %.0fs (stale after %.0fs): resubscribing",
            self.tag,
            self.cid,
            sub.name,
            silent,
            threshold,
        )
        self._metrics.resubscribes.labels(self.exchange, sub.channel).inc()
        last_event_us = int((time.time() - silent) * 1_000_000)
        self.gaps.lost([sub], "stale", last_event_us)
        await link.send(link.decoder.unsubscribe([sub.name]))
        await self.subscribe(link, [sub], now)
        sub.stale_resubscribed = True  # subscribe() resets the subscription's state
