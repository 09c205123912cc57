"""agent/stages/flowtable.py: batches merged into slots exactly as one row at a time would."""

from __future__ import annotations

import tracemalloc
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netflow_agent.stages import flowtable
from netflow_agent.stages.flowtable import FREE_NS, FlowTable

KS = 4
_ROW = st.tuples(st.integers(0, 5), st.integers(1, 1500), st.integers(0, 63),
                 st.integers(0, 10**6), st.sampled_from([0, 0, 3, 7]))


def _key(k: int) -> bytes:
    return bytes([k]) * KS


def _sequential(rows: list[tuple[int, int, int, int, int]]) -> dict[bytes, list[int]]:
    """The per-packet loop the cache ran before: [packets, octets, first, last, flags, out_if];
    first the earliest time and last the latest, whatever the rows' order."""
    flows: dict[bytes, list[int]] = {}
    for k, length, flags, ts, out_if in rows:
        f = flows.setdefault(_key(k), [0, 0, ts, ts, 0, 0])
        f[0] += 1
        f[1] += length
        f[2] = min(f[2], ts)
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


def test_take_into_a_key_buffer_gives_the_same_flows() -> None:
    """With a caller's key buffer (the cache reuses one), take writes the keys there and
    copies and frees the counters as without."""
    table = FlowTable(KS)
    slots, new = table.lookup(_key(1) + _key(2) + _key(3))
    table.add_packets(slots, new, np.array([100, 200, 300]), np.array([0, 2, 0]),
                      np.array([5, 6, 7]), np.array([0, 4, 0]))
    keys = np.zeros(2, f"V{KS}")
    taken = table.take(np.array([2, 1]), keys)
    assert taken.keys is keys and keys.tobytes() == _key(3) + _key(2)
    assert taken.octets.tolist() == [300, 200] and taken.flags.tolist() == [0, 2]
    assert taken.out_if.tolist() == [0, 4]
    assert len(table) == 1 and table.octets[1:3].tolist() == [0, 0]
    assert table.first[1:3].tolist() == [FREE_NS, FREE_NS]


def _filled(n: int, holes: list[int]) -> FlowTable:
    """A table of ``n`` flows (key k, k packets of 10 k bytes at time k) with ``holes`` freed."""
    table = FlowTable(KS)
    keys = np.arange(n, dtype=">u4")
    slots, new = table.lookup(keys.tobytes())
    ks = np.arange(n)
    table.add_deltas(slots, new, ks, 10 * ks, ks, ks + 1, ks % 64, ks % 3)
    table.masks[:n] = ks % 512
    table.take(np.array(holes, np.int64))
    return table


def _parts(table: FlowTable, limit: int, drain: bool) -> list[tuple]:
    """Every part of emptying ``table`` ``limit`` flows at a time: by drain, or as the cache
    did before, the lowest occupied slots taken and freed."""
    out = []
    while len(table):
        slots = table.drain_slots(limit) if drain else table.occupied(limit)
        keys = np.zeros(len(slots), f"V{KS}")
        t = (table.take_drained if drain else table.take)(slots, keys)
        out.append((slots.tolist(), keys.tobytes(), *(np.array(c).tolist() for c in (
            t.packets, t.octets, t.first, t.last, t.flags, t.out_if, t.masks))))
    return out


def test_a_drain_gives_the_parts_take_gives_and_frees_at_once() -> None:
    """A drain (the forced scan) hands out the same parts, slots, keys and counters as
    taking and freeing the lowest flows part after part; the table is empty at once, and
    the slots are freed as a whole when it is used again (numbering restarts at 0)."""
    holes = [0, 5, 6, 7, 700, 1500, 1501, 2999]
    drained, taken = _filled(3000, holes), _filled(3000, holes)
    assert _parts(drained, 512, True) == _parts(taken, 512, False)
    assert len(drained) == 0 and drained.drained == 2992  # copied out, not yet freed
    slots, new = drained.lookup(np.arange(2, dtype=">u4").tobytes())  # settles first
    assert slots.tolist() == [0, 1] and new.all() and drained.drained == 0
    assert (drained.first[2:3000] == FREE_NS).all() and not drained.packets[2:3000].any()
    assert not drained.masks.any() and len(drained) == 2


def test_a_drain_left_halfway_frees_what_it_took_before_anything_else() -> None:
    """A drain's parts not followed by the rest (a caller that stops): the next use of the
    table frees exactly the flows taken, keeps the others, and hands out the lowest slots."""
    table = _filled(1000, [3])
    part = table.drain_slots(300)
    table.take_drained(part, np.zeros(300, f"V{KS}"))
    assert part.tolist() == [0, 1, 2, *range(4, 301)] and len(table) == 699
    assert table.occupied().tolist() == list(range(301, 1000))  # settled
    assert table.packets[:301].sum() == 0 and table.packets[500] == 500
    slots, _new = table.lookup(np.array([5000, 5001], ">u4").tobytes())
    assert slots.tolist() == [0, 1]
    found, _ = table.lookup(np.array([500, 2], ">u4").tobytes(), insert=False)
    assert found.tolist() == [500, -1]


def test_take_drained_takes_only_the_part_handed_out() -> None:
    table = _filled(10, [])
    part = table.drain_slots(4)
    with pytest.raises(ValueError, match="not the part drain_slots handed out"):
        table.take_drained(part[1:], np.zeros(3, f"V{KS}"))
    assert len(table) == 10 and table.drain_slots(4).tolist() == [0, 1, 2, 3]


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


def _fill(table: FlowTable, rounds: int, per_round: int) -> dict[bytes, list[int]]:
    """Batches that update every flow so far and add ``per_round`` new ones (the table grows
    several times); returns the expected contents."""
    rows: list[tuple[int, int, int, int, int]] = []
    for r in range(rounds):
        batch = [(k, 60 + k % 7, 0, 1000 * r + k % 5, 0) for k in range((r + 1) * per_round)]
        rows += batch
        keys = b"".join(k.to_bytes(KS, "big") for k, *_ in batch)
        k, length, flags, ts, out_if = (np.array(c) for c in zip(*batch, strict=True))
        slots, new = table.lookup(keys)
        table.add_packets(slots, new, length, flags, ts, out_if)
    want: dict[bytes, list[int]] = {}
    for k, length, _flags, ts, _out in rows:
        f = want.setdefault(k.to_bytes(KS, "big"), [0, 0, ts, ts, 0, 0])
        f[0], f[1], f[3] = f[0] + 1, f[1] + length, max(f[3], ts)
    return want


def test_growth_in_place_keeps_every_flow_exact() -> None:
    table = FlowTable(KS)
    columns = [table.packets, table.first]
    ids = [id(c) for c in columns]
    del columns  # nothing else holds them: grown in place, the same arrays
    want = _fill(table, rounds=6, per_round=700)
    assert table.rows >= 4200 > 1024 and len(table) == 4200
    assert [id(table.packets), id(table.first)] == ids
    assert _contents(table) == {k.rjust(KS, b"\0"): v for k, v in want.items()}
    assert (table.first[len(table):] == FREE_NS).all()  # new room is free


def test_growth_copies_a_column_someone_holds() -> None:
    table = FlowTable(KS)
    want = _fill(table, rounds=2, per_round=400)
    held = table.octets  # e.g. flowtop's Columns: must stay valid and unchanged
    before = held.copy()
    table.reserve(table.rows + 1)
    assert table.octets is not held and (held == before).all()
    assert table.packets.shape == table.octets.shape == (table.rows,)
    assert _contents(table) == want


def test_growth_does_not_keep_two_copies_alive() -> None:
    """Growing costs the grown size only: no column is copied while its old self is alive
    (tracemalloc sees NumPy's data)."""
    tracemalloc.start()
    try:
        table = FlowTable(KS, 200_000)
        table.reserve(table.rows + 1)
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # grown by at most a sixteenth: the zero-filled slack is resident
    assert 0 < table.rows - 200_000 <= 200_000 // 16
    assert peak - now < 64 * 1024  # a copy would peak 1.6 MB higher (the old packets column)


@settings(max_examples=100, deadline=None)
@given(st.lists(_ROW, min_size=1, max_size=60), st.integers(1, 8))
def test_merge_in_steps_matches_one_step(rows: list[tuple], step: int) -> None:
    """Big batches are merged in steps of _MERGE_ROWS rows: the same result as one step."""
    k, length, flags, ts, out_if = (np.array(c) for c in zip(*rows, strict=True))
    keys = b"".join(_key(int(x)) for x in k)
    results = []
    for rows_per_step in (step, 1 << 20):
        with mock.patch.object(flowtable, "_MERGE_ROWS", rows_per_step):
            packets, deltas = FlowTable(KS), FlowTable(KS)
            packets.add_packets(*packets.lookup(keys), length, flags, ts, out_if)
            deltas.add_deltas(*deltas.lookup(keys), np.ones(len(k)), length, ts, ts + 5, flags,
                              out_if)
            results.append((_contents(packets), _contents(deltas)))
    assert results[0] == results[1]
    assert results[0][0] == _sequential(rows)
