"""The overlap of a make-before-break switch is published once (pure logic, hypothesis).

The old connection reads a stream up to its barrier; the successor receives the same
stream from the moment its subscription took effect (at or before the barrier). Whatever
the overlap, old + filtered successor is the stream, each event once, in order.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from connector.events import BookSnapshot, MarketEvent, Side, Trade
from connector.stream.overlap import Tail
from tests.frames import header


def trade(i: int, ts: int) -> Trade:
    return Trade(
        **header("live_trades", ts, i), trade_id=str(i), price="1", amount="1", side=Side.BUY
    )


def book(ts: int) -> BookSnapshot:
    return BookSnapshot(**header("order_book", ts), bids=(), asks=())


def switch(stream: list[MarketEvent], barrier: int, start: int) -> list[MarketEvent]:
    """Old reads stream[:barrier] (recording from the handover on, index ``start`` or
    earlier); the successor gets stream[start:]."""
    tail = Tail()
    published = []
    for i, ev in enumerate(stream[:barrier]):
        if i >= min(start, barrier) - 3:  # the handover began a little before
            tail.saw(ev.channel, ev)
        published.append(ev)
    filters = tail.filters()
    for ev in stream[start:]:
        f = filters.get(ev.channel)
        if f is None or f.keep(ev):
            published.append(ev)
    return published


@given(
    n=st.integers(1, 60),
    data=st.data(),
    same_ts=st.booleans(),
)
def test_old_plus_filtered_successor_is_the_stream_once(
    n: int, data: st.DataObject, same_ts: bool
) -> None:
    # Trades may share a timestamp (same_ts): identity, not time, tells them apart.
    stream: list[MarketEvent] = [trade(i, 1000 + (i // 3 if same_ts else i)) for i in range(n)]
    barrier = data.draw(st.integers(0, n))
    start = data.draw(st.integers(0, barrier))  # the successor's stream began by then
    assert switch(stream, barrier, start) == stream


@given(n=st.integers(2, 40), data=st.data())
def test_books_by_time(n: int, data: st.DataObject) -> None:
    stream: list[MarketEvent] = [book(1000 + 10 * i) for i in range(n)]
    barrier = data.draw(st.integers(1, n))
    start = data.draw(st.integers(0, barrier))
    assert switch(stream, barrier, start) == stream


def test_a_successor_only_event_inside_the_overlap_is_kept_and_filtering_goes_on() -> None:
    stream: list[MarketEvent] = [book(1000 + 10 * i) for i in range(10)]
    tail = Tail()
    for ev in stream[:6]:
        tail.saw("ob", ev)
    (dedup,) = tail.filters().values()
    extra = book(1035)  # e.g. a snapshot only the new subscription got
    successor = [stream[3], extra, stream[4], stream[5], *stream[6:]]
    kept = [ev for ev in successor if dedup.keep(ev)]
    assert kept == [extra, *stream[6:]]
    assert dedup.dropped == 3 and dedup.done


def test_without_an_overlap_nothing_is_filtered() -> None:
    assert Tail().filters() == {}
