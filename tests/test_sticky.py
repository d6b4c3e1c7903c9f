"""The sticky assignment: complete, balanced, and moving as little as possible
(hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from connector.group.sticky import Member, assign


@given(
    n=st.integers(1, 80),
    owner_of=st.lists(st.integers(-1, 5), min_size=80, max_size=80),  # -1: nobody
    members=st.integers(1, 6),
)
def test_complete_balanced_and_sticky(n: int, owner_of: list[int], members: int) -> None:
    held = {f"m{i}": frozenset(p for p in range(n) if owner_of[p] == i) for i in range(members)}
    group = {m: Member(m.upper(), h) for m, h in held.items()}
    out = assign(list(range(n)), group)
    got = [p for a in out.values() for p in a.partitions]
    assert sorted(got) == list(range(n))  # each partition exactly once
    sizes = [len(a.partitions) for a in out.values()]
    assert max(sizes) - min(sizes) <= 1  # balanced
    for m, a in out.items():
        kept = held[m] & set(a.partitions)
        assert len(kept) == min(len(a.partitions), len(held[m]))  # sticky up to its share
        for p, prev in a.previous.items():  # a moved partition names its live holder
            assert (
                p in a.partitions and p not in held[m] and group[f"m{owner_of[p]}"].replica == prev
            )


def test_a_joining_member_takes_only_its_share_and_waits_for_the_holder() -> None:
    before = assign(list(range(6)), {"a": Member("A"), "b": Member("B")})
    held = {m: frozenset(a.partitions) for m, a in before.items()}
    after = assign(
        list(range(6)),
        {"a": Member("A", held["a"]), "b": Member("B", held["b"]), "c": Member("C")},
    )
    assert len(after["c"].partitions) == 2
    moved = set(after["c"].partitions)
    assert set(after["a"].partitions) | set(after["b"].partitions) | moved == set(range(6))
    assert set(after["a"].partitions) <= held["a"] and set(after["b"].partitions) <= held["b"]
    assert set(after["c"].previous) == moved  # both were held by live members


def test_partitions_of_a_member_that_is_gone_are_taken_at_once() -> None:
    out = assign(list(range(4)), {"a": Member("A", frozenset({0, 1}))})  # B died holding 2, 3
    assert out["a"].partitions == [0, 1, 2, 3] and out["a"].previous == {}
