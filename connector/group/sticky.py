"""A sticky, balanced assignment of the assignment topic's partitions (pure).

Kafka's eager rebalance takes every partition from every member before handing them out
again; with a plain range or round-robin assignor most subscriptions would change
replica on every join or leave, each one a gap. Here each member reports the partitions
it holds (and its replica id) in its join metadata; the leader keeps every member's
partitions up to its fair share and spreads only the rest. Each assignment also names,
per moved partition, the replica that held it if that replica is still in the group:
the new owner waits for its release (no two live owners), while partitions of a replica
that is gone (killed, left) are taken at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Member:
    replica: str
    held: frozenset[int] = frozenset()


@dataclass
class Assignment:
    partitions: list[int] = field(default_factory=list)
    previous: dict[int, str] = field(default_factory=dict)  # moved partition → live holder


def assign(partitions: list[int], members: Mapping[str, Member]) -> dict[str, Assignment]:
    """``members``: member id → what it holds. Every partition goes to exactly one member;
    sizes differ by at most one; a member keeps what it held up to its share."""
    ids = sorted(members)
    if not ids:
        return {}
    existing = set(partitions)
    claimed: dict[int, str] = {}
    for mid in ids:  # a partition claimed twice (a stale member) stays with the first
        for p in sorted(members[mid].held & existing):
            claimed.setdefault(p, mid)
    base, extra = divmod(len(partitions), len(ids))
    # Members holding the most get the larger shares: fewer moves.
    by_held = sorted(ids, key=lambda m: (-sum(1 for o in claimed.values() if o == m), m))
    share = {m: base + (1 if i < extra else 0) for i, m in enumerate(by_held)}
    out = {m: Assignment() for m in ids}
    free: list[int] = []
    for p in sorted(existing):
        owner = claimed.get(p)
        if owner is not None and len(out[owner].partitions) < share[owner]:
            out[owner].partitions.append(p)
        else:
            free.append(p)
    holder = {p: members[m].replica for p, m in claimed.items()}
    for m in ids:
        while len(out[m].partitions) < share[m] and free:
            p = free.pop(0)
            out[m].partitions.append(p)
            if p in holder and holder[p] != members[m].replica:
                out[m].previous[p] = holder[p]
    for a in out.values():
        a.partitions.sort()
    return out
