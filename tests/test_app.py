"""``connector run``'s process-level behaviour that needs no broker."""

from __future__ import annotations

import gc

from connector.app import _startup_heap_frozen


def _in_oldest_generation(obj: object) -> bool:
    return any(o is obj for o in gc.get_objects(generation=2))


def test_startup_objects_are_out_of_the_gcs_reach_while_streaming_and_back_after() -> None:
    built_at_startup = [{"route": "bitstamp.order_book.btcusd"}]  # tracked by the GC
    assert gc.is_tracked(built_at_startup)
    with _startup_heap_frozen():
        assert gc.get_freeze_count() > 0
        # A full collection no longer scans it: it is in the permanent generation.
        gc.collect()
        assert not _in_oldest_generation(built_at_startup)
        # What the stream allocates is still collected, cycles included.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0
    assert _in_oldest_generation(built_at_startup)
