"""The C merge of record arrays (FlowTable.merge_records, FlowCache.agent_cache_flows) gives
exactly the table and statistics of the NumPy merge (packed keys, lookup, add_deltas)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest

from netflow_agent._flowindex import FlowIndex, merge_records
from netflow_agent.model import FlowBatch
from netflow_agent.schema import FlowOptions, FlowSchema, default_schema
from netflow_agent.stages.cache import CacheConfig, FlowCache
from netflow_agent.stages.flowtable import FlowTable, record_layout

EXTENDED = FlowSchema.build(FlowOptions(mac=True, vlan=True, mpls_labels=2, tunnel_id=True))
#: the widest built-in key: 19 multi-byte key fields for finish_rows to swap
WIDEST = FlowSchema.build(FlowOptions(mac=True, vlan=True, mpls_labels=10, physdev="export",
                                      tunnel_id=True))
SCHEMAS = [pytest.param(default_schema(), id="base"), pytest.param(EXTENDED, id="extended"),
           pytest.param(WIDEST, id="widest")]
COLUMNS = ("packets", "octets", "first", "last", "flags", "out_if", "masks")


def _batches(schema: FlowSchema, seed: int, count: int = 6) -> list[np.ndarray]:
    """Record arrays over a small pool of random keys (keys repeat within and across
    batches), with random counters, times, flags and out_if (half of them 0)."""
    rng = np.random.default_rng(seed)
    dtype = schema.record_dtype
    pool = np.frombuffer(rng.bytes(3000 * dtype.itemsize), dtype)
    out = []
    for _ in range(count):
        n = int(rng.integers(1, 5000))
        flows = pool[rng.integers(0, len(pool), n)].copy()
        flows["packets"] = rng.integers(0, 2**64 - 1, n, np.uint64, endpoint=True)
        flows["octets"] = rng.integers(0, 2**64 - 1, n, np.uint64, endpoint=True)
        flows["start_ns"] = rng.integers(-(2**62), 2**62, n)
        flows["end_ns"] = flows["start_ns"] + rng.integers(0, 10**9, n)
        flows["tcp_flags"] = rng.integers(0, 256, n)
        flows["out_if"] = rng.integers(0, 3, n) * rng.integers(1, 2**32, n)
        out.append(flows)
    return out


def _same_tables(a: FlowTable, b: FlowTable) -> None:
    assert a.index.slot_count == b.index.slot_count and len(a) == len(b)
    occupied = a.occupied()
    np.testing.assert_array_equal(occupied, b.occupied())
    assert a.keys(occupied) == b.keys(occupied)
    for name in COLUMNS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("seed", range(4))
def test_merge_records_equals_lookup_and_add_deltas(schema, seed):
    layout = record_layout(schema.record_dtype, schema.key_dtype)
    assert layout is not None
    fast, slow = FlowTable(schema.key_size), FlowTable(schema.key_size)  # both grow
    limit = 2500 if seed % 2 else 0  # maxflows: later new keys refused
    for n, flows in enumerate(_batches(schema, seed)):
        slots, new, merged = fast.merge_records(flows, layout, limit)
        want_slots, want_new = slow.lookup(schema.keys_of(flows), limit=limit)
        np.testing.assert_array_equal(slots, want_slots)
        np.testing.assert_array_equal(new, want_new)
        kept = want_slots >= 0
        # the totals of the rows added: what NumPy sums (modulo 2**64) over the kept rows
        assert merged == (int(kept.sum()), int(flows["packets"][kept].sum()),
                          int(flows["octets"][kept].sum()),
                          int(np.bitwise_or.reduce(flows["tcp_flags"][kept])))
        slow.add_deltas(want_slots[kept], want_new[kept], flows["packets"][kept],
                        flows["octets"][kept], flows["start_ns"][kept], flows["end_ns"][kept],
                        flows["tcp_flags"][kept], flows["out_if"][kept])
        _same_tables(fast, slow)
        if n == 2:  # free some slots: new keys reuse them, lowest first
            taken = fast.occupied()[::3]
            fast.take(taken)
            slow.take(taken)
    assert fast.rows > 1024  # the columns grew under the C merge


def test_layout_packs_the_schemas_keys():
    """Adjacent copied fields are one op; the packed keys are keys_of's, byte for byte."""
    schema = default_schema()
    layout = record_layout(schema.record_dtype, schema.key_dtype)
    assert layout is not None
    ops = np.frombuffer(layout.ops, np.uint32).reshape(-1, 4).tolist()
    assert ops == [[0, 0, 4, 0], [4, 4, 4, 1], [8, 8, 2, 1], [10, 10, 2, 1], [12, 12, 32, 0]]
    for s in (schema, EXTENDED):
        flows = _batches(s, 9, 1)[0]
        index = FlowIndex(s.key_size)
        lay = record_layout(s.record_dtype, s.key_dtype)
        slots, _ = index.lookup_records(flows, lay.stride, lay.ops)
        got = index.keys(np.frombuffer(slots, np.int64))
        assert got == s.keys_of(flows).tobytes()


def test_layout_refuses_what_c_cannot_read():
    schema = default_schema()
    narrowed = np.dtype([(n, "<u4" if n == "out_if" else t) if n != "packets" else (n, "<u4")
                         for n, t in schema.record_dtype.descr])
    assert record_layout(narrowed, schema.key_dtype) is None  # packets not uint64
    no_port = np.dtype([d for d in schema.record_dtype.descr if d[0] != "src_port"])
    assert record_layout(no_port, schema.key_dtype) is None


def test_merge_records_checks_slots_against_columns():
    """A slot beyond the columns is refused before anything is written."""
    schema = default_schema()
    layout = record_layout(schema.record_dtype, schema.key_dtype)
    table = FlowTable(schema.key_size)
    flows = _batches(schema, 1, 1)[0][:10]
    slots = np.zeros(10, np.int64)
    slots[3] = table.rows
    with pytest.raises(ValueError, match="outside the columns"):
        merge_records(flows, layout.stride, layout.fields, slots, np.zeros(10, bool),
                      table.packets, table.octets, table.first, table.last, table.flags,
                      table.out_if)
    assert not table.packets.any()


def _run_cache(batches: list[np.ndarray], fast: bool, maxflows: int) -> FlowCache:
    """A cache fed ``batches``, by the C merge (``fast``, checked) or the NumPy merge."""
    cache = FlowCache(CacheConfig(maxflows=maxflows))
    c_merge = mock.patch.object(FlowTable, "merge_records", autospec=True,
                                side_effect=FlowTable.merge_records)
    numpy_only = mock.patch.object(FlowCache, "_record_layout", return_value=None)
    with c_merge as merged, (mock.MagicMock() if fast else numpy_only):
        for n, flows in enumerate(batches):
            cache.agent_cache_flows(batch=FlowBatch("test", flows), now_ns=n)
    assert merged.call_count == (len(batches) if fast else 0)
    return cache


@pytest.mark.parametrize("ends", [True, False], ids=["fin-rst", "no-fin-rst"])
@pytest.mark.parametrize("maxflows", [0, 2000])
def test_cache_merges_alike_on_both_paths(maxflows, ends):
    """Same table, statistics (new, found, maxflows drops, traffic) and FIN/RST marks; a
    flood without FIN or RST (the C merge's flags total says so) marks no flow as ending."""
    batches = _batches(default_schema(), 5)
    for flows in batches:  # counters that sum without wrapping, as statistics expect
        flows["packets"] %= 1000
        flows["octets"] %= 10**6
        if not ends:
            flows["tcp_flags"] &= 0xFF ^ 0x05  # SYN, ACK, PSH...: no FIN (1), no RST (4)
    fast, slow = _run_cache(batches, True, maxflows), _run_cache(batches, False, maxflows)
    _same_tables(fast.table, slow.table)
    assert fast.counters() == slow.counters()
    assert fast.ending == slow.ending and bool(fast.ending) == ends
    assert fast.stats.new > 0 and fast.stats.found > 0
    assert (fast.stats.maxflows > 0) == bool(maxflows)


def test_merge_records_refuses_an_offset_past_any_row_and_a_float_column():
    """Arguments a caller could get wrong are refused before anything is written (an offset
    near 2**63 once wrapped past the bounds check; a float column took integer bits)."""
    schema = default_schema()
    layout = record_layout(schema.record_dtype, schema.key_dtype)
    table = FlowTable(schema.key_size)
    flows = np.zeros(4, schema.record_dtype)
    slots, new = np.zeros(4, np.int64), np.ones(4, np.uint8)
    columns = [table.packets, table.octets, table.first, table.last, table.flags, table.out_if]
    with pytest.raises(ValueError, match="outside"):
        merge_records(flows, layout.stride, (2**63 - 1, *layout.fields[1:]), slots, new,
                      *columns)
    with pytest.raises(ValueError, match="integer items"):
        merge_records(flows, layout.stride, layout.fields, slots, new,
                      np.zeros(len(table.packets), np.float64), *columns[1:])
    assert not table.packets.any()


def test_cache_takes_each_batchs_own_layout():
    """The cache remembers the layout of the last record dtype it merged: a batch of another
    dtype (here one C cannot read, its packets narrowed to uint32) takes the NumPy merge, the
    next batch of the first dtype the C merge again, and the table is the NumPy merge's."""
    schema = default_schema()
    narrowed = np.dtype([(n, "<u4" if n == "packets" else t)
                         for n, t in schema.record_dtype.descr])
    batches = _batches(schema, 11, 3)
    for flows in batches:
        flows["packets"] %= 1000
        flows["octets"] %= 10**6
    batches[1] = batches[1].astype(narrowed)
    fast = FlowCache(CacheConfig(maxflows=0))
    with mock.patch.object(FlowTable, "merge_records", autospec=True,
                           side_effect=FlowTable.merge_records) as merged:
        for n, flows in enumerate(batches):
            fast.agent_cache_flows(batch=FlowBatch("test", flows), now_ns=n)
    assert [c.args[1].dtype for c in merged.call_args_list] == [schema.record_dtype] * 2
    slow = _run_cache(batches, False, 0)
    _same_tables(fast.table, slow.table)
    assert fast.counters() == slow.counters()


FIN, RST, ACK = 0x01, 0x04, 0x10
T_NS = 1000 * 10**9  # every flow's first and last time: idle for far less than 15 s below


def _distinct(schema: FlowSchema, seed: int, n: int, flags: int) -> np.ndarray:
    """``n`` TCP/IPv6 records of distinct random addresses and ports (ingress, interface 1),
    1 packet each, at :data:`T_NS`, with ``flags``."""
    rng = np.random.default_rng(seed)
    flows = np.zeros(n, schema.record_dtype)
    flows["ip_version"], flows["protocol"], flows["in_if"] = 6, 6, 1
    flows["src_port"], flows["dst_port"] = rng.integers(1, 65536, (2, n))
    flows["src_addr"] = np.frombuffer(rng.bytes(16 * n), "V16")
    flows["dst_addr"] = np.frombuffer(rng.bytes(16 * n), "V16")
    flows["packets"], flows["octets"] = 1, 100
    flows["start_ns"] = flows["end_ns"] = T_NS
    flows["tcp_flags"], flows["out_if"] = flags, 0
    return flows


def _ended_early(cache: FlowCache, schema: FlowSchema) -> set[bytes]:
    """Keys of the flows a scan 1 s after :data:`T_NS` exports (no timeout is due: only
    flows that saw FIN or RST leave)."""
    out = cache.agent_cache_expire(T_NS + 10**9, force=False)
    return {bytes(k) for k in schema.keys_of(out.flows)}


def _keys(schema: FlowSchema, *batches: np.ndarray) -> set[bytes]:
    return {bytes(k) for flows in batches for k in schema.keys_of(flows)}


@pytest.mark.parametrize("fast", [True, False], ids=["c-merge", "numpy-merge"])
def test_only_flows_that_saw_fin_or_rst_end_early_across_batches(fast):
    """Batches with and without FIN or RST, some keys in both kinds: a flow leaves at the next
    scan when any of its rows had FIN or RST (RST alone too), the others stay cached."""
    schema = default_schema()
    plain, fin = _distinct(schema, 1, 300, ACK), _distinct(schema, 2, 200, FIN | ACK)
    rst, later = _distinct(schema, 3, 100, RST), _distinct(schema, 4, 50, ACK)
    again = plain[:40].copy()  # flows first seen without FIN, then with it
    again["tcp_flags"] = FIN
    cache = _run_cache([plain, fin, later, rst, again, later], fast, 0)
    assert _ended_early(cache, schema) == _keys(schema, fin, rst, again)
    assert len(cache.table) == 300 - 40 + 50


def test_an_rst_only_batch_marks_its_flows_ending():
    """RST (0x04) without FIN is an end of flow for the C merge's flags total too."""
    schema = default_schema()
    rst = _distinct(schema, 5, 64, RST)
    cache = _run_cache([_distinct(schema, 6, 64, ACK), rst], True, 0)
    assert _ended_early(cache, schema) == _keys(schema, rst)


@pytest.mark.parametrize("fast", [True, False], ids=["c-merge", "numpy-merge"])
def test_fin_or_rst_only_in_rows_refused_for_maxflows_marks_nothing(fast):
    """The table is full (maxflows): new flows with FIN or RST are refused and counted; they
    mark no cached flow, and the C path spends no pass on marks for them (its gate is the
    flags total of the rows it merged, not of the batch)."""
    schema = default_schema()
    kept = _distinct(schema, 7, 100, ACK)
    refused = _distinct(schema, 8, 80, FIN | RST)
    refused["tcp_flags"][::2] = RST
    with mock.patch.object(FlowCache, "_mark_ending", autospec=True,
                           side_effect=FlowCache._mark_ending) as marks:
        cache = _run_cache([kept, refused, kept], fast, 100)
    assert cache.stats.maxflows == 80
    assert not cache.ending and _ended_early(cache, schema) == set()
    assert len(cache.table) == 100
    if fast:
        assert marks.call_count == 0


@pytest.mark.parametrize("schema", SCHEMAS)
def test_take_records_writes_what_take_copies_out_and_frees_the_slots(schema):
    """A scan's take straight into record rows (one C pass, no array per column) gives each
    row the key bytes and the counters take() gives, frees the same slots, returns the
    masks; a repeated slot fills both of its rows."""
    from netflow_agent.stages.flowtable import FREE_NS, value_fields

    tables = [FlowTable(schema.key_size), FlowTable(schema.key_size)]
    for table in tables:
        for flows in _batches(schema, 11, 3):
            slots, new, _ = table.merge_records(
                flows, record_layout(flows.dtype, schema.key_dtype))
            table.masks[slots[new]] = np.arange(int(new.sum()), dtype=np.uint16)
    plain, direct = tables
    slots = np.concatenate([plain.occupied()[::3], plain.occupied()[3:4]])  # [1] again
    want = plain.take(slots[:-1])
    out = schema.empty(len(slots))
    masks = direct.take_records(slots, out, value_fields(schema.record_dtype))
    keys = np.frombuffer(want.keys, np.uint8).reshape(len(slots) - 1, schema.key_size)
    rows = out.view(np.uint8).reshape(len(out), -1)[:, :schema.key_size]
    assert (rows[:-1] == keys).all()
    for field, column in (("packets", "packets"), ("octets", "octets"), ("start_ns", "first"),
                          ("end_ns", "last"), ("tcp_flags", "flags"), ("out_if", "out_if")):
        assert (out[field][:-1] == getattr(want, column)).all(), field
        assert out[field][-1] == out[field][np.flatnonzero(slots == slots[-1])[0]], field
    assert (masks[:-1] == want.masks).all()
    assert len(direct) == len(plain)
    for name in COLUMNS:
        assert (getattr(direct, name) == getattr(plain, name)).all(), name
    assert (direct.first[slots] == FREE_NS).all() and not direct.packets[slots].any()


def test_take_records_refuses_a_slot_outside_the_columns_and_changes_nothing():
    from netflow_agent._flowindex import take_records
    from netflow_agent.stages.flowtable import value_fields

    schema = default_schema()
    table = FlowTable(schema.key_size)
    flows = _batches(schema, 5, 1)[0]
    table.merge_records(flows, record_layout(flows.dtype, schema.key_dtype))
    before = table.packets.copy()
    out = schema.empty(2)
    bad = np.array([0, table.rows], np.int64)
    with pytest.raises(ValueError, match="outside the columns"):
        take_records(out, out.itemsize, value_fields(schema.record_dtype), bad,
                     table.packets, table.octets, table.first, table.last, table.flags,
                     table.out_if)
    assert (table.packets == before).all()


def _table_with_flows(schema, n: int = 5) -> FlowTable:
    table = FlowTable(schema.key_size)
    flows = _batches(schema, n, 1)[0]
    table.merge_records(flows, record_layout(flows.dtype, schema.key_dtype))
    return table


def test_take_records_refuses_slots_that_share_bytes_with_the_rows_or_a_column():
    """The slots are checked once, then read while rows and columns are written (without the
    GIL for large takes): slots inside a buffer being written would be rewritten after
    their check into any slot number. Refused, as FlowIndex.take refuses them."""
    from netflow_agent._flowindex import take_records
    from netflow_agent.stages.flowtable import value_fields

    schema = default_schema()
    table = _table_with_flows(schema)
    fields = value_fields(schema.record_dtype)
    out = schema.empty(4)
    in_rows = out.view(np.uint8)[:16].view(np.int64)
    in_rows[:] = (0, 1)
    before = table.packets.copy()
    with pytest.raises(ValueError, match="records: overlaps slots"):
        take_records(out, out.itemsize, fields, in_rows, table.packets, table.octets,
                     table.first, table.last, table.flags, table.out_if)
    table.octets[:2] = (0, 1)  # slot numbers inside a column
    with pytest.raises(ValueError, match="octets: overlaps slots"):
        take_records(schema.empty(2), out.itemsize, fields, table.octets[:2].view(np.int64),
                     table.packets, table.octets, table.first, table.last, table.flags,
                     table.out_if)
    assert (table.packets == before).all() and table.octets[1] == 1


def test_take_records_and_merge_records_need_int64_slots():
    from netflow_agent._flowindex import take_records
    from netflow_agent.stages.flowtable import value_fields

    schema = default_schema()
    table = _table_with_flows(schema)
    out = schema.empty(2)
    with pytest.raises(ValueError, match="int64 slot numbers"):
        take_records(out, out.itemsize, value_fields(schema.record_dtype),
                     np.array([0.0, 1.0]), table.packets, table.octets, table.first,
                     table.last, table.flags, table.out_if)
    layout = record_layout(schema.record_dtype, schema.key_dtype)
    with pytest.raises(ValueError, match="int64 slot numbers"):
        merge_records(out, layout.stride, layout.fields, np.zeros(2), np.zeros(2, bool),
                      table.packets, table.octets, table.first, table.last, table.flags,
                      table.out_if)


def test_merge_records_refuses_slots_inside_a_column():
    """A merge writes the columns while it reads the slots: slots in a column are refused."""
    schema = default_schema()
    layout = record_layout(schema.record_dtype, schema.key_dtype)
    table = FlowTable(schema.key_size)
    flows = _batches(schema, 1, 1)[0][:2]
    slots = table.last[:2].view(np.int64)
    slots[:] = (0, 1)
    with pytest.raises(ValueError, match="last: overlaps slots"):
        merge_records(flows, layout.stride, layout.fields, slots, np.ones(2, bool),
                      table.packets, table.octets, table.first, table.last, table.flags,
                      table.out_if)
    assert not table.packets.any()


def test_a_refused_take_records_keeps_the_flows_keys_and_counters():
    """FlowTable.take_records frees a slot's key (the index) and its counters (the C take)
    together or not at all: arguments the C take refuses are refused before the index's."""
    from netflow_agent.stages.flowtable import value_fields

    schema = default_schema()
    table = _table_with_flows(schema)
    slots = table.occupied()[:2]
    fields = value_fields(schema.record_dtype)
    before = (len(table), table.packets.copy())
    out = schema.empty(2)
    with pytest.raises(ValueError, match="fields"):
        table.take_records(slots, out, (out.itemsize, *fields[1:]))
    with pytest.raises(ValueError, match="out"):
        table.take_records(slots, schema.empty(1), fields)
    assert len(table) == before[0] and (table.packets == before[1]).all()
    table.take_records(slots, out, fields)  # the flows are all still there
    assert len(table) == before[0] - 2 and list(out["packets"]) == list(before[1][slots])


def _twin_tables(schema: FlowSchema) -> list[FlowTable]:
    """Two tables holding the same flows and masks, with holes (slots freed and not reused)."""
    tables = [FlowTable(schema.key_size), FlowTable(schema.key_size)]
    for table in tables:
        for flows in _batches(schema, 21, 3):
            slots, new, _ = table.merge_records(
                flows, record_layout(flows.dtype, schema.key_dtype))
            table.masks[slots[new]] = np.arange(int(new.sum()), dtype=np.uint16) * 7
        table.take(table.occupied()[5:400:4])
    return tables


@pytest.mark.parametrize("schema", SCHEMAS)
def test_a_drain_taken_into_rows_gives_each_part_as_take_records_and_frees_at_settle(schema):
    """The stop's forced scan: each part of a drain, copied straight into record rows
    (take_drained_records), holds the rows and masks take_records gives for the same
    lowest flows; the table is empty at once and its slots are freed when it is next used."""
    from netflow_agent.stages.flowtable import FREE_NS, value_fields

    fields = value_fields(schema.record_dtype)
    drained, taken = _twin_tables(schema)
    flows = len(drained)
    while len(taken):
        part = drained.drain_slots(700)
        slots = taken.occupied(700)
        assert part.tolist() == slots.tolist()
        got, want = schema.empty(len(part)), schema.empty(len(slots))
        got_masks = drained.take_drained_records(part, got, fields).copy()
        assert (got_masks == taken.take_records(slots, want, fields)).all()
        assert got.tobytes() == want.tobytes()
    assert len(drained) == 0 and drained.drained == flows
    drained.lookup(b"\x01" * schema.key_size)  # settles: every drained slot freed at once
    assert len(drained) == 1 and drained.occupied().tolist() == [0]
    assert (drained.first[1:] == FREE_NS).all() and not drained.packets[1:].any()
    assert not drained.masks.any()


def test_take_drained_records_takes_only_the_part_handed_out_and_checks_the_rows():
    from netflow_agent.stages.flowtable import value_fields

    schema = default_schema()
    fields = value_fields(schema.record_dtype)
    table = _twin_tables(schema)[0]
    flows, part = len(table), table.drain_slots(4)
    with pytest.raises(ValueError, match="not the part drain_slots handed out"):
        table.take_drained_records(part[1:], schema.empty(3), fields)
    with pytest.raises(ValueError, match="writable C-contiguous rows"):
        table.take_drained_records(part, schema.empty(3), fields)
    assert len(table) == flows and table.drained == 0
    out = schema.empty(4)
    table.take_drained_records(part, out, fields)
    assert len(table) == flows - 4 and out["packets"].tolist() == table.packets[part].tolist()


@pytest.mark.parametrize("schema", SCHEMAS)
def test_finish_rows_swaps_the_key_fields_and_writes_masks_and_reasons_as_numpy(schema):
    """finish_rows in one C pass = the NumPy steps of the take: each big-endian key field
    byteswapped in place, src/dst mask from the masks column, the end reason; every other
    byte of a row as it was."""
    from netflow_agent._flowindex import finish_rows
    from netflow_agent.stages.cache import _finish_layout, _key_swaps

    rng = np.random.default_rng(4)
    n = 3000
    rows = np.frombuffer(rng.bytes(n * schema.record_dtype.itemsize), schema.record_dtype).copy()
    masks = rng.integers(0, 2**16, n, dtype=np.uint16)
    reasons = rng.integers(0, 256, n, dtype=np.uint8)
    swaps = _key_swaps(schema.key_dtype, schema.record_dtype)
    assert swaps  # the ports and in_if at least
    want = rows.copy()
    for name in swaps:
        want[name].byteswap(inplace=True)
    want["src_mask"], want["dst_mask"], want["end_reason"] = masks >> 8, masks & 0xFF, reasons
    layout = _finish_layout(schema.record_dtype, swaps)
    assert layout is not None
    finish_rows(rows, rows.itemsize, layout[0], masks, layout[1], reasons, layout[2])
    assert rows.tobytes() == want.tobytes()


@pytest.mark.parametrize(("change", "message"), [
    ({"swaps": ((1, 3),)}, "width 3 is not 2, 4 or 8"),
    ({"swaps": ((99, 2),)}, "swaps: 2 bytes at 99 are outside a 100-byte row"),
    ({"mask_fields": (0, 100)}, "mask_fields: 1 bytes at 100"),
    ({"reason_field": -1}, "reason_field: 1 bytes at -1"),
    ({"reasons": np.zeros(3, np.uint8)}, "need as many reasons as masks"),
    ({"rows": 3}, "as many rows"),
    ({"masks": np.zeros(4, np.uint32)}, "masks: need native-order integer items of 2 bytes"),
    ({"masks": np.zeros(4, np.uint16).astype(">u2" if np.little_endian else "<u2")},
     "masks: need native-order integer items"),
    ({"overlap": True}, "records: overlaps masks or reasons"),
])
def test_finish_rows_refuses_what_lies_outside_the_rows_and_changes_nothing(change, message):
    from netflow_agent._flowindex import finish_rows

    schema = default_schema()
    rows = schema.empty(8)
    rows["src_port"] = 0x1234
    before = rows.tobytes()
    args = {"swaps": ((8, 2),), "masks": np.ones(4, np.uint16), "mask_fields": (97, 98),
            "reasons": np.ones(4, np.uint8), "reason_field": 96, **change}
    target = rows[:change["rows"]] if "rows" in change else rows
    if change.get("overlap"):
        args["masks"] = rows.view(np.uint8)[-8:].view(np.uint16)
    with pytest.raises(ValueError, match=message):
        finish_rows(target, rows.itemsize, args["swaps"], args["masks"], args["mask_fields"],
                    args["reasons"], args["reason_field"])
    assert rows.tobytes() == before


@pytest.mark.parametrize("force", [True, False], ids=["stop", "timed"])
def test_the_widest_key_is_exported_by_both_takes(force):
    """A key with more multi-byte fields than finish_rows' table (19 in the widest built-in
    schema; 16 was the limit) still leaves the cache as records: the take, timed or forced,
    exports every flow it frees (before: ValueError after the slots were freed, the flows
    gone and counted nowhere)."""
    from netflow_agent import schema as schema_mod

    before = schema_mod.active()
    schema_mod.set_active(WIDEST)
    try:
        cache = FlowCache(CacheConfig(inactive_timeout=1))
        rows = WIDEST.empty(3)
        rows["ip_version"], rows["protocol"], rows["src_port"] = 4, 17, [1, 2, 3]
        rows["packets"], rows["octets"] = 1, 100
        rows["start_ns"] = rows["end_ns"] = 10**18
        rows["mpls_label_10"], rows["tunnel_id"] = 0x12345, 2**40 + 7
        cache.agent_cache_flows(batch=FlowBatch("t", rows), now_ns=10**18)
        got = cache.agent_cache_expire(now_ns=10**18 + 5 * 10**9, force=force).flows
        assert sorted(got["src_port"].tolist()) == [1, 2, 3]
        assert got["mpls_label_10"].tolist() == [0x12345] * 3
        assert got["tunnel_id"].tolist() == [2**40 + 7] * 3
        assert cache.stats.exported_flows == 3 and cache.counters()["active_flows"] == 0
    finally:
        schema_mod.set_active(before)
