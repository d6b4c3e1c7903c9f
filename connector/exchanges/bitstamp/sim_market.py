"""The simulated Bitstamp's markets: one generator per market, shared by its channels,
making each channel's next frame with Bitstamp's field names (and the account events of
the private channels). Deterministic for a seed."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from connector.exchanges.bitstamp.protocol import channel_name

_PERP_ID_BASE = 2**53 + 1_000_000  # perp trade ids exceed 2^53 on the real exchange
_BASE_PRICES = {
    "btc": Decimal("37000"),
    "eth": Decimal("2000"),
    "xrp": Decimal("0.6"),
    "sol": Decimal("60"),
}


def _q(value: Decimal, places: int) -> str:
    return f"{value:.{places}f}"


@dataclass
class MarketGen:
    """Synthetic state of one market, shared by its channels."""

    market: str
    rng: random.Random
    mid: Decimal
    trade_id: int
    order_id: int
    event_id: int = 0
    open_orders: deque[tuple[int, int, str, str]] = field(default_factory=lambda: deque(maxlen=200))
    trades: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=5000))
    anchor: Decimal = Decimal(0)  # where the diff book's price slots are
    books: dict[tuple[int, bool], list[list[str]]] = field(default_factory=dict)
    book_events: int = 0
    # The book diff_order_book changes and the REST order book shows: price → amount per
    # side, on fixed price slots around where it started (so at most ``n`` levels a side).
    diff_book: tuple[dict[str, str], dict[str, str]] | None = None

    @property
    def perp(self) -> bool:
        return self.market.endswith("-perp")

    def step(self) -> None:
        drift = Decimal(self.rng.randint(-20, 20)) / Decimal(10000)
        self.mid = max(Decimal("0.0001"), self.mid * (1 + drift / 10))

    def price(self, offset_ticks: int = 0, *, anchor: bool = False) -> str:
        base = self.anchor if anchor else self.mid
        places = 2 if base > 10 else 5
        tick = Decimal(1).scaleb(-places)
        return _q(base + tick * offset_ticks, places)

    def amount(self) -> str:
        return _q(Decimal(self.rng.randint(1, 5_000_000)) / Decimal(10**6), 8)

    def book(self, side: int, n: int, with_ids: bool, keep: bool) -> list[list[str]]:
        """A top-n book side that evolves: a few levels change per event, and the whole
        side is rebuilt around the moving mid now and then (cheap enough for benchmarks).
        ``keep``: a fresh copy the caller may keep (recorded frames); else the live levels,
        to serialize at once (copying 200 levels was the simulator's largest cost)."""
        key = (side, with_ids)
        levels = self.books.get(key)
        if levels is None or len(levels) != n or self.book_events % 200 == 0:
            levels = self.books[key] = self.levels(side, n, with_ids)
        else:
            for _ in range(3):
                lvl = levels[self.rng.randrange(n)]
                lvl[1] = self.amount()
                if with_ids:
                    self.order_id += 1
                    lvl[2] = str(self.order_id)
        self.book_events += 1
        return [list(lvl) for lvl in levels] if keep else levels

    def diff_levels(self, n: int) -> tuple[list[list[str]], list[list[str]]]:
        """One diff_order_book change of the market's book (applied to it): 1-5 levels a
        side set to a new amount, or deleted (amount ``0.00000000``, as Bitstamp spells
        it) now and then."""
        book = self.rest_book_state(n)
        out: tuple[list[list[str]], list[list[str]]] = ([], [])
        for side in (0, 1):
            for _ in range(self.rng.randint(1, 5)):
                price = self.price((-1 if side == 0 else 1) * self.rng.randint(1, n), anchor=True)
                if price in book[side] and self.rng.random() < 0.15:
                    amount = "0.00000000"
                    del book[side][price]
                else:
                    amount = book[side][price] = self.amount()
                out[side].append([price, amount])
        return out

    def rest_book_state(self, n: int) -> tuple[dict[str, str], dict[str, str]]:
        if self.diff_book is None:
            self.anchor = self.mid
            self.diff_book = (
                {self.price(-i, anchor=True): self.amount() for i in range(1, n + 1)},
                {self.price(i, anchor=True): self.amount() for i in range(1, n + 1)},
            )
        return self.diff_book

    def rest_book(self, n: int) -> tuple[list[list[str]], list[list[str]]]:
        """The order book as REST shows it now: every level of the diff book, best first."""
        bids, asks = self.rest_book_state(n)
        return (
            [[p, a] for p, a in sorted(bids.items(), key=lambda kv: Decimal(kv[0]), reverse=True)],
            [[p, a] for p, a in sorted(asks.items(), key=lambda kv: Decimal(kv[0]))],
        )

    def levels(self, side: int, n: int, with_ids: bool) -> list[list[str]]:
        out = []
        for i in range(1, n + 1):
            lvl = [self.price(-i if side == 0 else i), self.amount()]
            if with_ids:
                self.order_id += 1
                lvl.append(str(self.order_id))
            out.append(lvl)
        return out

    def frame(
        self, channel: str, now_us: int, *, book_depth: int, record: bool, user_id: int
    ) -> dict[str, Any]:
        """This market's next frame on ``channel``. Serialize it before the next call:
        unless ``record`` is on, a book frame holds the generator's live levels."""
        g = self
        market = self.market
        g.step()
        name = f"{channel}_{market}"
        if channel == "live_trades":
            g.trade_id += 1
            price, amount, side = g.price(), g.amount(), g.rng.randint(0, 1)
            data: dict[str, Any] = {
                "id": g.trade_id,
                "timestamp": str(now_us // 1_000_000),
                "amount": float(amount),
                "amount_str": amount,
                "price": float(price),
                "price_str": price,
                "type": side,
                "microtimestamp": str(now_us),
                "buy_order_id": g.order_id + 1,
                "sell_order_id": g.order_id + 2,
                "id_str": str(g.trade_id),
            }
            g.order_id += 2
            g.trades.append(
                {
                    "date": str(now_us // 1_000_000),
                    "tid": str(g.trade_id),
                    "price": price,
                    "amount": amount,
                    "type": str(side),
                }
            )
            return {"data": data, "channel": name, "event": "trade"}
        if channel == "live_orders":
            roll = g.rng.random()
            if g.open_orders and roll < 0.3:
                oid, side, price, amount = g.open_orders.popleft()
                event = "order_deleted"
            elif g.open_orders and roll < 0.5:
                oid, side, price, _ = g.open_orders[0]
                amount = g.amount()
                event = "order_changed"
            else:
                g.order_id += 1
                oid, side = g.order_id, g.rng.randint(0, 1)
                price, amount = g.price(g.rng.randint(1, 50) * (1 if side else -1)), g.amount()
                g.open_orders.append((oid, side, price, amount))
                event = "order_created"
            g.event_id += 1
            data = {
                "id": oid,
                "id_str": str(oid),
                "order_type": side,
                "datetime": str(now_us // 10**6),
                "microtimestamp": str(now_us),
                "amount": float(amount),
                "amount_str": amount,
                "amount_traded": "0",
                "amount_at_create": amount,
                "price": float(price),
                "price_str": price,
                "order_subtype": 0,
                "is_liquidation": False,
                "event_id": str(g.event_id),
                "pre_event_id": str(g.event_id - 1),
                "order_source": "orderbook",
            }
            return {"data": data, "channel": name, "event": event}
        if channel in ("order_book", "detail_order_book"):
            ids = channel == "detail_order_book"
            data = {
                "timestamp": str(now_us // 10**6),
                "microtimestamp": str(now_us),
                "bids": g.book(0, book_depth, ids, record),
                "asks": g.book(1, book_depth, ids, record),
            }
            return {"data": data, "channel": name, "event": "data"}
        if channel == "diff_order_book":
            bids, asks = g.diff_levels(book_depth)
            data = {
                "timestamp": str(now_us // 10**6),
                "microtimestamp": str(now_us),
                "bids": bids,
                "asks": asks,
            }
            return {"data": data, "channel": name, "event": "data"}
        if channel == "funding_rate":
            rate = _q(Decimal(g.rng.randint(-500, 500)) / Decimal(10**7), 7)
            data = {
                "funding_rate": rate,
                "mark_price": g.price(),
                "index_price": g.price(1),
                "market": market,
                "timestamp": str(now_us // 1000),  # milliseconds
                "next_funding_time": str((now_us // 3_600_000_000 + 1) * 3_600_000),
            }
            return {"data": data, "channel": name, "event": "funding_rate"}
        if channel.startswith("private_"):
            return self._private_frame(channel, now_us, user_id)
        raise ValueError(channel)

    def _private_frame(self, channel: str, now_us: int, user_id: int) -> dict[str, Any]:
        """An account event for the API key's user, Bitstamp's field names."""
        g = self
        name = channel_name(channel, self.market, user_id)
        price, amount = g.price(), g.amount()
        g.order_id += 1
        if channel == "private_my_orders":
            event = ("order_created", "order_changed", "order_deleted")[g.order_id % 3]
            data: dict[str, Any] = {
                "id": g.order_id,
                "id_str": str(g.order_id),
                "client_order_id": f"c{g.order_id}",
                "amount": float(amount),
                "amount_str": amount,
                "price": float(price),
                "price_str": price,
                "order_type": g.order_id % 2,
                "order_subtype": 0,
                "datetime": str(now_us // 1_000_000),
                "microtimestamp": str(now_us),
                "amount_traded": "0",
                "amount_at_create": amount,
                "trade_account_id": 0,
            }
        elif channel == "private_my_trades":
            event = "trade"
            data = {
                "id": g.order_id,
                "id_str": str(g.order_id),
                "order_id": g.order_id - 1,
                "client_order_id": "",
                "amount": amount,
                "price": price,
                "fee": "0.00010000",
                "side": ("buy", "sell")[g.order_id % 2],
                "microtimestamp": str(now_us),
                "trade_account_id": 0,
            }
        elif channel == "private_live_trades":
            event = "self_trade"
            data = {
                "buy_order_id": g.order_id,
                "sell_order_id": g.order_id + 1,
                "amount": float(amount),
                "amount_str": amount,
                "price": float(price),
                "price_str": price,
                "type": g.order_id % 2,
                "timestamp": str(now_us // 1_000_000),
                "microtimestamp": str(now_us),
            }
        elif channel == "private_my_settlements":
            event = "settlement"
            data = {"id": g.order_id, "ts": now_us // 1_000_000, "price": price, "ccy": "USD"}
            data["as"] = amount
        else:
            event = "im_breach_warning"
            data = {
                "position_id": str(g.order_id),
                "trade_account_id": 0,
                "microtimestamp": str(now_us),
                "alert_type": event,
                "margin_mode": "CROSS",
                "initial_margin_ratio": "0.1",
                "maintenance_margin_ratio": "0.05",
            }
        return {"data": data, "channel": name, "event": event}


def new_market(seed: int, market: str) -> MarketGen:
    """A market's generator: deterministic for a seed."""
    rng = random.Random(f"{seed}:{market}")
    base = _BASE_PRICES.get(market[:3], Decimal("10"))
    perp = market.endswith("-perp")
    return MarketGen(
        market,
        rng,
        base,
        _PERP_ID_BASE if perp else 300_000_000,
        1_800_000_000_000_000_000 if perp else 1_700_000_000_000_000,
    )
