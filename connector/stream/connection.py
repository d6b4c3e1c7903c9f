"""One connection to an exchange, run until asked to stop.

    connect → subscribe (batched and paced within the exchange's limits) → read, decode,
              publish                                                 (reader, control)
            ↘ heartbeat every N s; no reply within the deadline → dead, reconnect
                                                                            (liveness)
            ↘ a stream break (sequence gap, checksum mismatch) → that subscription is
              resubscribed and its gap recovered                (subscriptions, gaps)
            ↘ the exchange asks for a reconnect, or the connection's age limit →
              make-before-break                                             (handover)
            ↘ connection lost / handshake failed → reconnect after capped, jittered
              backoff                                                       (this file)

``Connection`` owns the session (a chain of sockets handed over make-before-break) and
the reconnect loop; each other job is one object it composes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from functools import partial
from typing import TYPE_CHECKING, cast

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import CloseCode
from websockets.protocol import State

from connector.errors import ConfigError
from connector.stream.arrival import StampedConnection
from connector.stream.control import Control
from connector.stream.handover import Handover
from connector.stream.link import Link, Reconnect, backoff_delay
from connector.stream.liveness import Liveness
from connector.stream.reader import Reader
from connector.stream.subscriptions import Subscriptions

if TYPE_CHECKING:
    from connector.exchanges.base import Adapter
    from connector.kafka.publisher import Publisher
    from connector.metrics import Metrics
    from connector.settings import Settings
    from connector.stream.gaps import Gaps, SubState
    from connector.stream.recent import RecentTrades

log = logging.getLogger(__name__)


class Connection:
    def __init__(
        self,
        index: int,
        subs: list[tuple[str, str]],
        adapter: Adapter,
        settings: Settings,
        publisher: Publisher,
        metrics: Metrics,
        recent: RecentTrades,
    ) -> None:
        self.index = index
        self.tag = f"{adapter.name} {index}"  # log lines: which exchange, which connection
        self.adapter = adapter
        self.exchange = adapter.name
        self._settings = settings
        self._metrics = metrics
        self._background: set[asyncio.Task[None]] = set()
        self.subscriptions = Subscriptions(
            self.tag,
            subs,
            adapter,
            settings,
            metrics,
            partial(adapter.new_gaps, publisher, recent, metrics),
            self._background,
        )
        self.reader = Reader(
            self.subscriptions,
            Control(self.subscriptions, metrics),
            settings,
            publisher,
            metrics,
        )
        self.liveness = Liveness(self.subscriptions, adapter, settings, publisher)
        self.handover = Handover(self, self.subscriptions, self.reader, settings, metrics)
        self._active: Link | None = None
        self.connection_id = ""
        self.connected = False

    @property
    def gaps(self) -> Gaps:
        return self.subscriptions.gaps

    @property
    def subs(self) -> dict[str, SubState]:
        return self.subscriptions.by_name

    # --- subscriptions that come and go (scale-out: ownership moves between replicas) ----
    async def add(self, subs: list[SubState]) -> None:
        """Takes on subscriptions; subscribes them now if connected (else the next
        session does)."""
        self.subscriptions.take(subs)
        link = self._active
        if link is not None and self.connected and link.ws.state is State.OPEN:
            # If the connection drops meanwhile, the next session subscribes them.
            with contextlib.suppress(ConnectionClosed):
                await self.subscriptions.subscribe(link, subs, time.monotonic())

    async def remove(self, names: list[str], deadline_s: float) -> None:
        """Gives up subscriptions: unsubscribes, keeps reading until the exchange confirms
        (what it already sent is still published), publishes what was held, forgets."""
        subs = [self.subs[n] for n in names if n in self.subs]
        live = [s for s in subs if s.confirmed]
        link = self._active
        unsubscribed = self.subscriptions.unsubscribed
        if live and link is not None and self.connected:
            try:
                await link.send(link.decoder.unsubscribe([s.name for s in live]))
                async with asyncio.timeout(deadline_s):
                    while any(s.confirmed for s in live):
                        unsubscribed.clear()
                        await unsubscribed.wait()
            except (TimeoutError, ConnectionClosed):
                log.warning(
                    "[%s %s] %d unsubscription(s) not confirmed; giving them up anyway",
                    self.tag,
                    self.connection_id,
                    sum(1 for s in live if s.confirmed),
                )
        await self.gaps.drain(subs)
        self.subscriptions.forget(subs)

    # --- the reconnect loop ------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        s = self._settings
        attempt = 0
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await self._session(stop)
                except Reconnect as exc:
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
                        await self.reader.too_big(exc, self.connection_id)
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
                self.gaps.lost(self.subscriptions.all(), reason, int(last_frame * 1_000_000))
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
            await asyncio.gather(*self._background, return_exceptions=True)

    # --- one session: a chain of sockets handed over make-before-break -----------------
    async def connect(self) -> Link:
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
        return Link(
            cast(StampedConnection, ws),
            self.adapter.new_protocol(cid),
            cid,
            time.monotonic(),
            control_rate=self.adapter.control_frames_per_second,
        )

    def adopt(self, link: Link) -> None:
        """``link`` is the connection that publishes from now on."""
        self._active = link
        self.subscriptions.active = link
        self.connection_id = link.cid
        self.gaps.connection_id = link.cid
        self.connected = True

    async def close(self, link: Link) -> None:
        with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
            await asyncio.wait_for(link.ws.close(), 6)

    def close_later(self, link: Link) -> None:
        task = asyncio.create_task(self.close(link))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _session(self, stop: asyncio.Event) -> None:
        self.connection_id = ""
        link = await self.connect()
        self.adopt(link)
        log.info(
            "[%s %s] connected to %s",
            self.tag,
            self.connection_id,
            self.adapter.ws_url,
        )
        try:
            # Reading starts first: confirmations and events are taken as they come, even
            # while private channels wait for their token.
            link.reader = asyncio.create_task(self.reader.read(link), name=f"read-{self.index}")
            log.info(
                "[%s %s] subscribing to %d channel(s)",
                self.tag,
                self.connection_id,
                len(self.subscriptions),
            )
            await self.subscriptions.subscribe(link, self.subscriptions.all(), time.monotonic())
            while True:
                successor = await self._serve(link, stop)
                if successor is None:
                    return  # stop requested
                link = await self.handover.switch(link, successor)
        finally:
            if link.reader is not None:
                link.reader.cancel()
                await asyncio.gather(link.reader, return_exceptions=True)
            # What was received is published even when recovery did not finish.
            await self.gaps.drain(self.subscriptions.all())
            await self.close(link)

    async def _serve(self, link: Link, stop: asyncio.Event) -> Link | None:
        """Runs ``link`` until it fails (raises), stop is requested (None), or a
        successor is subscribed and confirmed (returned, buffering)."""
        assert link.reader is not None
        watch = asyncio.create_task(self.liveness.watch(link), name=f"watch-{self.index}")
        stopper = asyncio.create_task(stop.wait(), name=f"stop-{self.index}")
        wanted: asyncio.Task[bool] = asyncio.create_task(
            link.handover_wanted.wait(), name=f"want-{self.index}"
        )
        handover: asyncio.Task[Link | None] | None = None
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
                            raise Reconnect(
                                "request_reconnect", f"before the handover completed ({exc})"
                            )
                        if exc is not None:
                            raise exc
                        raise Reconnect("closed", "the exchange closed the connection")
                if wanted in done:
                    link.handover_wanted.clear()
                    handover = asyncio.create_task(
                        self.handover.prepare(link, self.index), name=f"handover-{self.index}"
                    )
                    wanted = asyncio.create_task(link.handover_wanted.wait())
                elif handover is not None and handover in done:
                    successor = handover.result()
                    handover = None
                    if successor is not None:
                        return successor
                    self.handover.failed(link)
        finally:
            for aux in (watch, stopper, wanted):
                aux.cancel()
            if handover is not None:
                handover.cancel()  # its own cleanup closes the successor
            await asyncio.gather(
                *(t for t in (watch, stopper, wanted, handover) if t is not None),
                return_exceptions=True,
            )

    async def _unsubscribe_and_drain(self, link: Link) -> None:
        """Unsubscribes everything and keeps the reader going until the exchange confirms
        (or the deadline passes): what it already sent is still published."""
        deadline = self._settings.unsubscribe_timeout_s
        live = self.subscriptions.live()
        if not live or deadline <= 0:
            return
        drained = self.subscriptions.draining = asyncio.Event()
        try:
            await link.send(link.decoder.unsubscribe([s.name for s in live]))
            await asyncio.wait_for(drained.wait(), deadline)
            log.info(
                "[%s %s] %d unsubscription(s) confirmed; drained",
                self.tag,
                link.cid,
                len(live),
            )
        except TimeoutError:
            log.warning(
                "[%s %s] %d unsubscription(s) unconfirmed after %.0fs; closing",
                self.tag,
                link.cid,
                len(self.subscriptions.live()),
                deadline,
            )
        except ConnectionClosed:
            log.warning("[%s %s] connection closed while draining", self.tag, link.cid)
        finally:
            self.subscriptions.draining = None
