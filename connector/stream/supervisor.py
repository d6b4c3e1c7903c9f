"""Supervisors: each exchange's subscriptions spread over connections, and run.

Everything exchange-specific comes from its adapter (``connector.exchanges.base``): the
wire protocol, limits and recovery. One ``Connection`` (``connector.stream.connection``)
per group of at most the exchange's per-connection limit of subscriptions; ``Fleet`` is
the supervisors of every configured exchange as one (scale-out hands subscriptions to
it and takes them back).

A subscription not confirmed in time is reported and retried after a long backoff (never
in a tight loop); a confirmed subscription that stays silent is warned about. A bad
frame is counted and logged and never stops the reader. Each state change is one log line.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from connector.stream.connection import Connection
from connector.stream.gaps import SubState
from connector.stream.link import backoff_delay
from connector.stream.recent import RecentTrades

if TYPE_CHECKING:
    from connector.exchanges.base import Adapter
    from connector.kafka.checkpoints import Checkpoint
    from connector.kafka.publisher import Publisher
    from connector.metrics import Metrics
    from connector.settings import Settings

__all__ = ["Connection", "Fleet", "Supervisor", "backoff_delay"]


class Supervisor:
    """Spreads subscriptions over connections and runs them. Static (the configured
    subscriptions) or, in scale-out mode, the ones the group assigns (``acquire`` /
    ``release``)."""

    def __init__(
        self,
        adapter: Adapter,
        subs: list[tuple[str, str]],
        settings: Settings,
        publisher: Publisher,
        metrics: Metrics,
        checkpoints: dict[str, Checkpoint] | None = None,
    ) -> None:
        size = adapter.max_subs_per_connection
        self.adapter = adapter
        self.exchange = adapter.name
        self._settings = settings
        self._publisher = publisher
        self._metrics = metrics
        self._recent = RecentTrades()  # one market's trades may move between connections
        self.connections = [
            self._connection(i, subs[i * size : (i + 1) * size])
            for i in range(max(1, (len(subs) + size - 1) // size))
        ]
        for conn in self.connections:
            for sub in conn.subs.values():
                cp = (checkpoints or {}).get(sub.name)
                if cp is not None:
                    conn.gaps.restarted(sub, cp.trade_id or None, cp.exchange_ts_us)
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._changes = asyncio.Lock()

    def _connection(self, index: int, subs: list[tuple[str, str]]) -> Connection:
        return Connection(
            index,
            subs,
            self.adapter,
            self._settings,
            self._publisher,
            self._metrics,
            self._recent,
        )

    def subscriptions(self) -> list[SubState]:
        return [sub for conn in self.connections for sub in conn.subs.values()]

    def owned(self) -> set[tuple[str, str]]:
        return {(sub.channel, sub.market) for sub in self.subscriptions()}

    async def acquire(
        self, pairs: list[tuple[str, str]], positions: dict[tuple[str, str], Checkpoint]
    ) -> None:
        """Starts subscriptions handed to this replica. Each is a gap since the last event
        published for it (``positions``, read back from Kafka): recovered as usual."""
        size = self.adapter.max_subs_per_connection
        async with self._changes:
            new = [p for p in pairs if p not in self.owned()]
            for conn in self.connections:
                room = size - len(conn.subs)
                take, new = new[:room], new[room:]
                if take:
                    await conn.add(self._states(conn, take, positions))
            while new:
                conn = self._connection(len(self.connections), [])
                take, new = new[:size], new[size:]
                await conn.add(self._states(conn, take, positions))
                self.connections.append(conn)
                if self._stop is not None:
                    self._tasks.append(
                        asyncio.create_task(conn.run(self._stop), name=f"connection-{conn.index}")
                    )

    def _states(
        self,
        conn: Connection,
        pairs: list[tuple[str, str]],
        positions: dict[tuple[str, str], Checkpoint],
    ) -> list[SubState]:
        out = []
        for c, m in pairs:
            sub = SubState(c, m, self.adapter.sub_name(c, m))
            pos = positions.get((c, m))
            if pos is not None:
                conn.gaps.restarted(sub, pos.trade_id or None, pos.exchange_ts_us, "rebalance")
            out.append(sub)
        return out

    async def release(self, pairs: list[tuple[str, str]]) -> None:
        """Stops subscriptions taken away: unsubscribed and drained (what was received is
        published), so their next owner starts from what Kafka has."""
        async with self._changes:
            wanted = set(pairs)
            await asyncio.gather(
                *(
                    conn.remove(
                        [s.name for s in conn.subs.values() if (s.channel, s.market) in wanted],
                        self._settings.unsubscribe_timeout_s,
                    )
                    for conn in self.connections
                )
            )

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self._tasks = [
            asyncio.create_task(c.run(stop), name=f"connection-{c.index}") for c in self.connections
        ]
        try:
            while True:
                tasks = list(self._tasks)
                await asyncio.gather(*tasks)
                if len(self._tasks) == len(tasks):
                    break  # (connections added meanwhile are awaited in the next round)
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.adapter.aclose()


Key = tuple[str, str, str]  # (exchange, channel, market)


class Fleet:
    """The supervisors of every configured exchange, as one: subscriptions are
    (exchange, channel, market) (scale-out assigns them across replicas)."""

    def __init__(self, supervisors: list[Supervisor]) -> None:
        self.supervisors = {s.exchange: s for s in supervisors}

    @property
    def connections(self) -> list[Connection]:
        return [c for s in self.supervisors.values() for c in s.connections]

    def subscriptions(self) -> list[SubState]:
        return [sub for s in self.supervisors.values() for sub in s.subscriptions()]

    def owned(self) -> set[Key]:
        return {(e, c, m) for e, s in self.supervisors.items() for c, m in s.owned()}

    def _split(self, keys: list[Key]) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for e, c, m in keys:
            out.setdefault(e, []).append((c, m))
        return out

    async def acquire(self, keys: list[Key], positions: dict[Key, Checkpoint]) -> None:
        for exchange, pairs in self._split(keys).items():
            mine = {(c, m): cp for (e, c, m), cp in positions.items() if e == exchange}
            await self.supervisors[exchange].acquire(pairs, mine)

    async def release(self, keys: list[Key]) -> None:
        await asyncio.gather(
            *(self.supervisors[e].release(pairs) for e, pairs in self._split(keys).items())
        )

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(s.run(stop), name=f"exchange-{e}")
            for e, s in self.supervisors.items()
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
