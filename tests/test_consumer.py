"""BookBuilder: the consumer contract for book topics, on records (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.consumer import BookBuilder


def delta(
    ts: int,
    bids: list[tuple[str, str]] | None = None,
    asks: list[tuple[str, str]] | None = None,
    *,
    resync: bool = False,
    seq: int | None = None,
) -> dict[str, Any]:
    return {
        "exchange_ts_us": ts,
        "exchange_sequence": seq,
        "resync": resync,
        "bids": [{"price": p, "amount": a, "order_id": None} for p, a in bids or []],
        "asks": [{"price": p, "amount": a, "order_id": None} for p, a in asks or []],
    }


def test_a_resync_replaces_the_book_and_diffs_it_contains_are_skipped() -> None:
    b = BookBuilder()
    assert not b.apply(delta(5, [("10.0", "1")]))  # before any full book: unknown
    assert b.apply(delta(10, [("10.0", "2"), ("9.5", "1")], [("11.0", "3")], resync=True))
    assert not b.apply(delta(10, [("10.0", "7")]))  # not newer than the resync: in it
    assert not b.apply(delta(8, [("9.5", "0")]))
    assert b.apply(delta(11, [("9.5", "0.00000000"), ("10.5", "4")], [("11.0", "0")]))
    assert b.top() == ([("10.5", "4"), ("10.0", "2")], [])
    assert (b.applied, b.skipped) == (2, 3)
    assert b.apply(delta(12, [("1", "1")], resync=True))  # a later resync starts over
    assert b.top() == ([("1", "1")], [])


def test_update_ids_decide_where_both_records_have_one() -> None:
    b = BookBuilder()
    b.apply(delta(100, [("5", "1")], resync=True, seq=40))
    assert not b.apply(delta(999, [("5", "9")], seq=40))  # later time, contained id
    assert b.apply(delta(1, [("5", "2")], seq=41))  # earlier time, newer id
    assert b.bids == {"5": "2"}


def test_snapshots_replace_and_detail_orders_are_summed_exactly() -> None:
    b = BookBuilder()
    snap = {
        "exchange_ts_us": 1,
        "resync": False,
        "bids": [
            {"price": "100.10", "amount": "0.10000000", "order_id": "1"},
            {"price": "100.10", "amount": "0.20000000", "order_id": "2"},
        ],
        "asks": [{"price": "100.20", "amount": "1.5", "order_id": "3"}],
    }
    assert b.apply(snap, "connector.BookSnapshot")
    assert b.top(1) == ([("100.10", "0.30000000")], [("100.20", "1.5")])
    with pytest.raises(ValueError, match="not a book record"):
        b.apply(snap, "connector.Trade")


@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.integers(1, 20),
            st.sampled_from(["0", "0.00000000", "1", "2.5", "0.001"]),
        ),
        min_size=1,
        max_size=60,
    ),
    st.data(),
)
def test_replaying_the_topic_ends_at_the_exchanges_book(
    changes: list[tuple[bool, int, str]], data: st.DataObject
) -> None:
    """The exchange's book after every change; the topic: the diffs a REST snapshot taken
    at a random point contains, then the snapshot, then the newer diffs, a few of the
    contained ones arriving late (after the snapshot). The rebuilt book is the exchange's."""
    book: tuple[dict[str, str], dict[str, str]] = ({}, {})
    diffs = []
    at = data.draw(st.integers(0, len(changes)))
    snapshot: dict[str, Any] = delta(0, resync=True)
    for i, (bid, price, amount) in enumerate(changes, start=1):
        if i - 1 == at:
            snapshot = delta(i - 1, sorted(book[0].items()), sorted(book[1].items()), resync=True)
        side = book[0] if bid else book[1]
        if float(amount) == 0:
            side.pop(str(price), None)
        else:
            side[str(price)] = amount
        diffs.append(
            delta(i, [(str(price), amount)] if bid else [], [] if bid else [(str(price), amount)])
        )
    if at == len(changes):
        snapshot = delta(at, sorted(book[0].items()), sorted(book[1].items()), resync=True)
    late = data.draw(st.integers(0, min(3, at)))
    topic = [*diffs[: at - late], snapshot, *diffs[at - late : at], *diffs[at:]]
    b = BookBuilder()
    for record in topic:
        b.apply(record)
    assert (b.bids, b.asks) == book
