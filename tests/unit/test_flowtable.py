"""agent/stages/flowtable.py: batches merged into slots exactly as one row at a time would."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from netflow_agent.stages.flowtable import FREE_NS, FlowTable

KS = 4
_ROW = st.tuples(st.integers(0, 5), st.integers(1, 1500), st.integers(0, 63),
                 st.integers(0, 10**6), st.sampled_from([0, 0, 3, 7]))


def _key(k: int) -> bytes:
    return bytes([k]) * KS


def _sequential(rows: list[tuple[int, int, int, int, int]]) -> dict[bytes, list[int]]:
    """The per-packet loop the cache ran before: [packets, octets, first, last, flags, out_if]."""
    flows: dict[bytes, list[int]] = {}
    for k, length, flags, ts, out_if in rows:
        f = flows.setdefault(_key(k), [0, 0, ts, ts, 0, 0])
        f[0] += 1
        f[1] += length
        f[3] = max(f[3], ts)
        f[4] |= flags
        if out_if:
            f[5] = out_if
    return flows


def _contents(table: FlowTable) -> dict[bytes, list[int]]:
    slots = table.occupied()
    keys = table.keys(slots)
    return {keys[n * KS:(n + 1) * KS]: [int(c[s]) for c in (
        table.packets, table.octets, table.first, table.last, table.flags, table.out_if)]
        for n, s in enumerate(slots.tolist())}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_ROW, max_size=30), max_size=5))
def test_packet_batches_match_the_per_packet_loop(batches: list[list[tuple]]) -> None:
    table = FlowTable(KS)
    for rows in batches:
        if not rows:
            continue
        k, length, flags, ts, out_if = (np.array(c) for c in zip(*rows, strict=True))
        slots, new = table.lookup(b"".join(_key(int(x)) for x in k))
        table.add_packets(slots, new, length, flags, ts, out_if)
    assert _contents(table) == _sequential([r for b in batches for r in b])


def test_deltas_keep_earliest_start_latest_end() -> None:
    table = FlowTable(KS)
    slots, new = table.lookup(_key(1) * 3)
    table.add_deltas(slots, new, np.array([1, 2, 3]), np.array([10, 20, 30]),
                     np.array([50, 40, 60]), np.array([55, 70, 65]), np.array([2, 0, 1]),
                     np.array([0, 9, 0]))
    assert _contents(table) == {_key(1): [6, 60, 40, 70, 3, 9]}


def test_take_copies_out_and_frees() -> None:
    table = FlowTable(KS)
    slots, new = table.lookup(_key(1) + _key(2))
    table.add_packets(slots, new, np.array([100, 200]), np.array([0, 0]), np.array([5, 6]),
                      np.array([0, 0]))
    taken = table.take(slots[::-1].copy())
    assert taken.keys == _key(2) + _key(1)
    assert taken.octets.tolist() == [200, 100] and taken.first.tolist() == [6, 5]
    assert len(table) == 0
    assert (table.first == FREE_NS).all() and not table.octets.any()


def test_columns_grow_with_the_slots() -> None:
    table = FlowTable(KS)
    n = 5000
    keys = np.arange(n, dtype=">u4").tobytes()
    slots, new = table.lookup(keys)
    assert new.all() and table.rows >= n
    table.add_packets(slots, new, np.full(n, 64), np.zeros(n), np.arange(n), np.zeros(n))
    assert int(table.octets.sum()) == 64 * n
    index, total = table.memory_bytes()
    assert 0 < index < total
