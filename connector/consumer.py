"""For Kafka consumers of the connector's topics: an order book rebuilt by the contract.

``BookBuilder`` is pure (records in, a book out; no Kafka, no clock) and follows the
consumer contract's rule (README, docs/consumers.md), the same in any language:

- ``connector.BookDelta`` (diff_order_book, depth, orderbook, book): a record with
  ``resync=true`` replaces the whole book; a record with ``resync=false`` whose
  ``exchange_sequence`` (where both have one, else ``exchange_ts_us``) is not newer than
  the last resync's is already contained in it and is skipped; any other sets each of
  its levels (price → amount) and deletes a level whose amount is zero (``"0"``,
  ``"0.00000000"``). Until the first resync the book is not known (``ready`` is False):
  a replay from an arbitrary offset converges at the next resync.
- ``connector.BookSnapshot`` (order_book, detail_order_book): every record is the whole
  visible book; it replaces what was there (detail_order_book's orders at one price are
  summed, exactly).

Prices and amounts stay the exchange's exact text; ordering uses their decimal value.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = ["BOOK_SCHEMAS", "BookBuilder"]

BOOK_SCHEMAS = frozenset({"connector.BookDelta", "connector.BookSnapshot"})


class BookBuilder:
    """One market's book from its topic's records, in offset order."""

    __slots__ = ("applied", "asks", "bids", "ready", "resync_seq", "resync_ts_us", "skipped")

    def __init__(self) -> None:
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.ready = False  # a full book has been seen
        self.resync_ts_us: int | None = None
        self.resync_seq: int | None = None
        self.applied = 0  # records that changed the book
        self.skipped = 0  # diffs before the first full book, or contained in the last

    def apply(self, record: Mapping[str, Any], schema: str = "connector.BookDelta") -> bool:
        """Applies one decoded record; True if it changed the book."""
        if schema not in BOOK_SCHEMAS:
            raise ValueError(f"{schema} is not a book record ({', '.join(sorted(BOOK_SCHEMAS))})")
        if schema == "connector.BookSnapshot" or record["resync"]:
            self.bids.clear()
            self.asks.clear()
            self._set_levels(record)
            self.ready = True
            self.resync_ts_us = record["exchange_ts_us"]
            self.resync_seq = record.get("exchange_sequence")
            self.applied += 1
            return True
        if not self.ready or self._contained(record):
            self.skipped += 1
            return False
        self._set_levels(record)
        self.applied += 1
        return True

    def _contained(self, record: Mapping[str, Any]) -> bool:
        seq = record.get("exchange_sequence")
        if seq is not None and self.resync_seq is not None:
            return bool(seq <= self.resync_seq)
        assert self.resync_ts_us is not None
        return bool(record["exchange_ts_us"] <= self.resync_ts_us)

    def _set_levels(self, record: Mapping[str, Any]) -> None:
        for side, levels in ((self.bids, record["bids"]), (self.asks, record["asks"])):
            for level in levels:
                price, amount = level["price"], level["amount"]
                if level.get("order_id") is not None and price in side:
                    # detail_order_book: one level per order; the book shows their sum
                    side[price] = str(Decimal(side[price]) + Decimal(amount))
                elif Decimal(amount) == 0:
                    side.pop(price, None)
                else:
                    side[price] = amount

    def top(self, depth: int = 10) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The best ``depth`` levels a side: bids highest first, asks lowest first."""
        bids = sorted(self.bids.items(), key=lambda kv: Decimal(kv[0]), reverse=True)
        asks = sorted(self.asks.items(), key=lambda kv: Decimal(kv[0]))
        return bids[:depth], asks[:depth]
