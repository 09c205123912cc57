"""The bulk column moves of the export path: grouping rows per template, packing keys and
taking flows out of the cache, each checked against the obvious per-field way."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest

from netflow_agent import _wirepack, wire
from netflow_agent.model import FlowBatch
from netflow_agent.plugins.export_ipfix import ipfix
from netflow_agent.plugins.export_netflow import v9
from netflow_agent.schema import FlowOptions, active
from netflow_agent.stages.cache import CacheConfig, FlowCache
from netflow_agent.wire import frame_packets, group_rows, pack_template, rows_of
from tests.support.schemas import active_schema

L2 = FlowOptions(mac=True, vlan=True, mpls_labels=2)  # key fields after the 44-byte base


def test_group_rows_is_one_stable_mask_per_class():
    classes = np.array([3, 0, 3, 1, 0, 3, 3], np.int64)
    groups = group_rows(classes)
    assert list(groups) == [0, 1, 3]
    for c, rows in groups.items():
        assert rows is not None and rows.tolist() == np.flatnonzero(classes == c).tolist()


def test_group_rows_of_one_class_copies_nothing():
    flows = np.arange(5)
    groups = group_rows(np.full(5, 7, np.uint8))
    assert groups == {7: None} and rows_of(flows, groups[7]) is flows
    assert group_rows(np.zeros(0, np.uint8)) == {}


def random_flows(schema, n: int, seed: int = 7) -> np.ndarray:
    """Key fields of random bytes (every field differs per row), plausible counters."""
    rng = np.random.default_rng(seed)
    flows = schema.empty(n)
    raw = rng.integers(0, 256, n * schema.key_size, dtype=np.uint8).tobytes()
    keys = np.frombuffer(raw, schema.key_dtype)
    for f in schema.key_fields:  # the per-field reference way
        flows[f.name] = keys[f.name]
    flows["ip_version"] = np.where(rng.random(n) < 0.5, 4, 6)
    flows["direction"] = 0
    flows["packets"], flows["octets"] = 1 + np.arange(n), 100 * (1 + np.arange(n))
    flows["start_ns"], flows["end_ns"] = 10**18, 10**18 + 5
    return flows


def test_keys_of_packs_every_key_field_big_endian():
    with active_schema(L2) as schema:
        flows = random_flows(schema, 500)
        keys = np.frombuffer(schema.keys_of(flows).tobytes(), schema.key_dtype)
        for f in schema.key_fields:
            assert np.array_equal(keys[f.name], flows[f.name]), f.name


def test_expired_flows_carry_their_keys_and_counters():
    with active_schema(L2) as schema:
        flows = random_flows(schema, 500)
        cache = FlowCache(CacheConfig(maxflows=0))
        cache.agent_cache_flows(batch=FlowBatch("t", flows), now_ns=10**18)
        out = cache.agent_cache_expire(now_ns=10**18, force=True).flows
        out = out[np.argsort(out["packets"])]  # slot order -> input order
        for f in (*schema.key_fields, *schema.value_fields):
            assert np.array_equal(out[f.name], flows[f.name]), f.name


def _templates() -> list[tuple[tuple[tuple[int, int], ...], tuple]]:
    """(fields, extra) of every v9 and IPFIX flow template of the active schema."""
    out = []
    for wide in (False, True):
        for tpl in v9.flow_templates(wide).values():
            out.append((tpl.fields[:len(tpl.fields) - len(tpl.extra)], tpl.extra))
    for micro in (False, True):
        for layout in ipfix.flow_layouts(micro).values():
            tpl = layout.template
            out.append((tpl.fields[:len(tpl.fields) - len(tpl.extra)], tpl.extra))
    return out


@pytest.mark.parametrize("options", [FlowOptions(), L2])
def test_packed_rows_are_the_cast_of_their_copy(options):
    """pack_template of a template's rows, written in C where the rows lie, gives the bytes
    of NumPy's structured cast of those rows' copy (counters over 32 bits cut as the cast
    cuts them, addresses as their first bytes), for every v9 and IPFIX flow template."""
    with active_schema(options) as schema:
        flows = random_flows(schema, 300)
        rng = np.random.default_rng(3)
        flows["packets"] = rng.integers(0, 2**63, 300, dtype=np.uint64)
        flows["octets"] = rng.integers(0, 2**63, 300, dtype=np.uint64)
        flows["next_hop"] = rng.integers(0, 256, (300, 16), np.uint8).view("V16").ravel()
        flows["src_mask"], flows["end_reason"] = np.arange(300) % 33, np.arange(300) % 5
        rows = rng.permutation(300)[:170]
        for fields, extra in _templates():
            special = {ie: (lambda n: 7) for ie, _ in fields  # what no column holds
                       if ie not in wire._COLUMN_OF_IE or ie in (22, 21)}
            plain = tuple(f for f in fields if f[0] not in special)
            assert wire._pack_ops(flows.dtype, plain,
                                  wire.template_dtype(fields, extra)) is not None, fields
            packed = pack_template(flows, fields, extra, special, rows).data
            with mock.patch.object(wire, "_pack_ops", return_value=None):
                cast = pack_template(flows.take(rows), fields, extra, special).data
            assert packed == cast, fields
            assert pack_template(flows, fields, extra, special).data == \
                pack_template(flows, fields, extra, special, np.arange(300)).data


def test_fields_as_lists_of_lists_pack_as_tuples():
    """A plugin's template given as [IE, length] lists (API 3.2 took them) packs the same."""
    with active_schema(FlowOptions()) as schema:
        flows = random_flows(schema, 20)
        fields = ((8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 8), (2, 4))
        assert pack_template(flows, [list(f) for f in fields]).data == \
            pack_template(flows, fields).data


def test_narrow_unsigned_column_packs_in_c_as_the_cast_extends_it():
    """IPFIX's tcpControlBits (IE 6, 2 bytes) from the 1-byte tcp_flags column: written in
    C (zeros, then the byte), the bytes NumPy's cast gives; a signed column narrower than
    its field keeps the cast (it extends the sign)."""
    with active_schema(FlowOptions()) as schema:
        flows = random_flows(schema, 64)
        flows["tcp_flags"] = np.arange(64) * 4 + 3  # up to 255: the high byte is the zero
        fields = ((8, 4), (6, 2), (4, 1))
        ops = wire._pack_ops(flows.dtype, fields, wire.template_dtype(fields))
        assert ops is not None
        packed = pack_template(flows, fields).data
        with mock.patch.object(wire, "_pack_ops", return_value=None):
            assert packed == pack_template(flows, fields).data
        assert packed[4:6] == (3).to_bytes(2, "big")
        signed = np.zeros(3, [("tcp_flags", "i1")])
        assert wire._field_copies(signed.dtype, ((6, 2),), wire.template_dtype(((6, 2),))) \
            is None


def _uptime_ms(ns, boot_ns) -> np.ndarray:
    """v5/v9's sysUpTime ms of each ``ns`` in Python integers (no int64 arithmetic to wrap):
    the whole ms of ``ns`` minus those of ``boot_ns``, each rounded down
    (:meth:`~plugins.export_netflow.state.ExportState.uptime_ms`); 0 before ``boot_ns``."""
    return np.array([max(int(v) // 10**6 - boot_ns // 10**6, 0) % 2**32 for v in ns],
                    np.uint32)


def _old_pack_flows(flows, tpl, boot_ns, rows):
    """v9's pack_flows as it was before its times and ICMP type were computed in C: each
    column gathered at the rows and converted, the times in Python integers (the reference
    bytes)."""
    def column(name):
        return flows[name] if rows is None else flows[name][rows]

    protocol = column("protocol")
    special = {
        22: lambda n: _uptime_ms(column("start_ns"), boot_ns),
        21: lambda n: _uptime_ms(column("end_ns"), boot_ns),
        32: lambda n: np.where((protocol == 1) | (protocol == 58), column("dst_port"), 0),
    }
    base = tpl.fields[:len(tpl.fields) - len(tpl.extra)]
    return pack_template(flows, base, tpl.extra, special, rows)


@pytest.mark.parametrize("options", [FlowOptions(), L2])
def test_v9_times_and_icmp_type_computed_in_c_are_numpys_bytes(options):
    """v9's FIRST/LAST_SWITCHED (ms since boot, rounded down, modulo 2**32: times before
    boot, at 0, ~2**62 ns and int64's ends, where ns - boot leaves int64, included) and
    ICMP_TYPE (the port for ICMP and ICMPv6 only), computed in the C pass, are the bytes
    Python integers and NumPy's gathers give, for every
    flow template, with and without rows, with the L2 fields (then from the rows' copy) and
    with the C pass refused (NumPy computes them)."""
    with active_schema(options) as schema:
        n = 400
        flows = random_flows(schema, n)
        rng = np.random.default_rng(11)
        boot = 1_700_000_000_123_456_789
        flows["start_ns"] = boot + rng.integers(-10**13, 10**13, n)
        flows["end_ns"] = rng.integers(-2**62, 2**62, n)
        flows["start_ns"][:4] = [0, boot, boot - 1, boot + 999_999]
        int64 = np.iinfo(np.int64)
        flows["start_ns"][4:6] = flows["end_ns"][6:8] = [int64.min, int64.max]
        flows["end_ns"][4:6] = [int64.min + 999_999, int64.max - 999_999]
        flows["protocol"] = rng.choice([1, 6, 17, 58, 0, 255], n)
        flows["dst_port"] = rng.integers(0, 2**16, n)
        rows = rng.permutation(n)[:230]
        for tpl in v9.flow_templates(False).values():
            base = tpl.fields[:len(tpl.fields) - len(tpl.extra)]
            assert wire._pack_ops(flows.dtype, tuple(f for f in base if f[0] not in (22, 21, 32)),
                                  wire.template_dtype(base, tpl.extra),
                                  tuple(v9._DERIVED.items())) is not None
            for r in (np.concatenate([rows, np.arange(8)]), None):
                new = v9.pack_flows(flows, tpl, boot, r).data
                old = _old_pack_flows(flows, tpl, boot, r).data
                assert new == old, (tpl.template_id, r is None)
                with mock.patch.object(wire, "_pack_ops", return_value=None):
                    assert v9.pack_flows(flows, tpl, boot, r).data == new


@pytest.mark.parametrize("dtype", ["<u4", "<u8", "<i4", ">i8"])
def test_derived_fields_of_other_column_types_take_numpy(dtype):
    """An UptimeMs of a column that is not native int64, or an IcmpTypeCode whose port is
    not a native uint16, gets no C op: NumPy computes it, the ms rounded down from the
    column's integer values (0 before the base), as the C op would from the same int64s."""
    flows = np.zeros(3, [("start_ns", dtype), ("dst_port", "<u4"), ("protocol", "u1")])
    out = wire.template_dtype(((22, 4), (32, 2)))
    assert wire._derived_ops(flows.dtype, ((22, wire.UptimeMs("start_ns")),), out) is None
    assert wire._derived_ops(flows.dtype, ((32, wire.IcmpTypeCode()),), out) is None
    flows["start_ns"], flows["dst_port"], flows["protocol"] = [5_000_000, 0, 7], 0x0302, 1
    derived = {22: wire.UptimeMs("start_ns"), 32: wire.IcmpTypeCode()}
    for base in (1_000_000, 1_700_000_000_000_000_000, -(2**63)):
        packed = pack_template(flows, ((22, 4), (32, 2)), derived=derived, base_ns=base).data
        times = [max((v - base) // 10**6, 0) % 2**32 for v in (5_000_000, 0, 7)]
        assert packed == b"".join(v.to_bytes(4, "big") + b"\x03\x02" for v in times), base
        as_int64 = flows.astype([("start_ns", "<i8"), ("dst_port", "<u4"), ("protocol", "u1")])
        assert pack_template(as_int64, ((22, 4),), derived=derived, base_ns=base).data \
            == b"".join(v.to_bytes(4, "big") for v in times)
    assert pack_template(flows, ((22, 4),), derived=derived, base_ns=1_000_000).data[4:8] \
        == bytes(4)  # 1 ms before the base: 0, not 2**32 - 1


def test_uptime_ms_of_a_column_that_is_not_integers_is_refused():
    flows = np.zeros(2, [("start_ns", "<f8")])
    with pytest.raises(TypeError, match="'start_ns' holds float64, not integer ns"):
        pack_template(flows, ((22, 4),), derived={22: wire.UptimeMs("start_ns")})


def test_derived_fields_the_template_lacks_are_ignored():
    """One derived mapping serves every template (v9's): an IE the template does not have
    is ignored, as ``special``'s are, and the others still take the C pass."""
    flows = np.zeros(2, [("start_ns", "<i8"), ("dst_port", "<u2"), ("protocol", "u1")])
    flows["dst_port"], flows["protocol"] = 0x0800, [1, 6]
    derived = {22: wire.UptimeMs("start_ns"), 21: wire.UptimeMs("end_ns"),
               32: wire.IcmpTypeCode()}
    with mock.patch.object(wire._wirepack, "pack_rows", wraps=wire._wirepack.pack_rows) as c:
        packed = pack_template(flows, ((32, 2),), derived=derived, base_ns=10**6).data
    assert packed == b"\x08\x00\x00\x00" and c.call_count == 1
    assert pack_template(flows, ((22, 4),), derived=derived, base_ns=0).data == bytes(8)


@pytest.mark.parametrize("rows", [[0, -1], [True, False], [0, 20], [0.0]])
def test_bad_row_numbers_are_refused_by_either_path(rows):
    """Negative, bool, float or out-of-range rows: one ValueError, whether C (a template
    without extra fields) or NumPy (with them, or its ops refused) writes the records."""
    with active_schema(L2) as schema:
        flows = random_flows(schema, 20)
        extra = schema.key_fields[-1:]  # an L2 field after the base
        for ext in ((), extra):
            with pytest.raises(ValueError, match="rows: "):
                pack_template(flows, ((8, 4),), ext, rows=np.array(rows))
            with mock.patch.object(wire, "_pack_ops", return_value=None), \
                    pytest.raises(ValueError, match="rows: "):
                pack_template(flows, ((8, 4),), ext, rows=np.array(rows))
        assert len(pack_template(flows, ((8, 4),), rows=np.zeros(0, np.int64))) == 0


def test_pack_rows_refuses_what_lies_outside_and_writes_nothing():
    records = np.arange(40, dtype=np.uint8)  # 4 rows of 10 bytes
    ops = np.array([(0, 0, 2, 1), (8, 2, 2, 0)], np.uint32)
    out = np.zeros(8, np.uint8)
    _wirepack.pack_rows(records, 10, ops, out, 4, np.array([3, 0], np.int64))
    assert out.tolist() == [31, 30, 38, 39, 1, 0, 8, 9]
    out[:] = 0
    with pytest.raises(ValueError, match="row 4 .* not one of the 4 records"):
        _wirepack.pack_rows(records, 10, ops, out, 4, np.array([0, 4], np.int64))
    with pytest.raises(ValueError, match="ops: need"):
        _wirepack.pack_rows(records, 10, np.array([(9, 0, 2, 0)], np.uint32), out, 4)
    with pytest.raises(ValueError, match="out: 8 bytes for 4 records"):
        _wirepack.pack_rows(records, 10, ops, out, 4)
    with pytest.raises(ValueError, match="rows: need int64"):
        _wirepack.pack_rows(records, 10, ops, out, 4, np.array([0, 1], np.int32))
    with pytest.raises(ValueError, match="ops: need"):  # kind 3 writes 4 bytes, no kind 5
        _wirepack.pack_rows(records, 10, np.array([(0, 0, 2, 3)], np.uint32), out, 4)
    with pytest.raises(ValueError, match="ops: need"):
        _wirepack.pack_rows(records, 10, np.array([(0, 0, 2, 5)], np.uint32), out, 4)
    with pytest.raises(ValueError, match="ops: need"):  # kind 3 reads 8 bytes: past the row
        _wirepack.pack_rows(records, 10, np.array([(4, 0, 4, 3)], np.uint32), out, 4)
    with pytest.raises(ValueError, match="ops: need"):  # kind 4's protocol byte past the row
        _wirepack.pack_rows(records, 10, np.array([(0, 0, 2, 4 | 10 << 8)], np.uint32), out, 4)
    with pytest.raises(ValueError, match="out: 8 bytes for 0 records"):  # rows given: none
        _wirepack.pack_rows(records, 10, ops, out, 4, np.zeros(0, np.int64))
    assert not out.any()
    out[:] = 0xFF  # kind 2 writes zeros (src unused, even past the row), then the copies
    zero = np.array([(99, 0, 3, 2), (5, 3, 1, 0)], np.uint32)
    _wirepack.pack_rows(records, 10, zero, out, 4, np.array([1, 2], np.int64))
    assert out.tolist() == [0, 0, 0, 15, 0, 0, 0, 25]


def test_framed_packets_are_the_join_of_their_parts():
    """frame_packets gives per packet what b"".join(head with its sequence number, middle,
    the packet's records, tail) gives, the sequence number wrapping at 2**32."""
    block = memoryview(bytes(range(256)) * 4)
    head = bytes(range(100, 120))
    packets = frame_packets(block, 6, 30, 5, head, 12, 2**32 - 2, b"MID", b"\0\0", seq_step=3)
    for j, got in enumerate(packets):
        seq = ((2**32 - 2 + 3 * j) % 2**32).to_bytes(4, "big")
        assert got == head[:12] + seq + head[16:] + b"MID" + block[6 + 30 * j:36 + 30 * j] \
            + b"\0\0"
    assert frame_packets(block, 0, 30, 0, head, 0, 0, b"", b"") == []
    with pytest.raises(ValueError, match="lie outside"):
        frame_packets(block, 1000, 30, 2, head, 12, 0, b"", b"")
    with pytest.raises(ValueError, match="seq_at: 17 is not inside"):
        frame_packets(block, 0, 30, 2, head, 17, 0, b"", b"")


def classify_fixture(n: int, seed: int) -> np.ndarray:
    """Rows whose class parts and times vary: IP versions 4/6/other, next hops, masks, ICMP,
    zero and negative times, counters up to 2**64 - 1."""
    rng = np.random.default_rng(seed)
    flows = random_flows(active(), n, seed)
    flows["ip_version"] = rng.choice([4, 6, 0, 5], n)
    flows["protocol"] = rng.choice([1, 58, 6, 17], n)
    hop = rng.integers(0, 3, n)
    flows["next_hop"] = [bytes(15) + b"\1" if h == 1 else bytes(16) for h in hop]
    flows["src_mask"] = np.where(hop == 2, 24, 0)
    flows["dst_mask"] = np.where(rng.random(n) < 0.1, 16, 0)
    flows["start_ns"] = np.where(rng.random(n) < 0.1, 0, rng.integers(-10**15, 10**18, n))
    flows["end_ns"] = rng.integers(-10**15, 10**18, n)
    flows["packets"] = rng.integers(0, 2**63, n, dtype=np.uint64) * 2
    flows["octets"] = rng.integers(0, 2**32, n, dtype=np.uint64)
    flows["packets"][:1] = 2**64 - 1
    return flows


@pytest.mark.parametrize("weights", [dict(v6=1, routed=2), dict(v6=1, icmp=2, routed=4,
                                                                v6_exact=True), dict(v6=1)])
@pytest.mark.parametrize("n", [0, 1, 257])
def test_classify_rows_in_c_is_numpy_s_classes_times_and_counters(weights, n):
    """One C pass (_wirepack.classify) gives what the NumPy reference does: each class's
    rows in row order (None for a class holding every row), the latest/earliest/lowest
    times and the largest counter."""
    flows = classify_fixture(n, seed=n)
    with mock.patch.object(wire._wirepack, "classify", wraps=wire._wirepack.classify) as c:
        got = wire.classify_rows(flows, **weights)
    want = wire._classify_numpy(flows, weights.get("v6", 0), weights.get("routed", 0),
                                weights.get("icmp", 0), weights.get("v6_exact", False))
    assert c.call_count == 1
    assert (got.latest, got.earliest, got.lowest, got.largest) == (
        want.latest, want.earliest, want.lowest, want.largest)
    assert list(got.rows) == list(want.rows)
    for cls, rows in want.rows.items():
        mine = got.rows[cls]
        assert (mine is None) == (rows is None)
        if rows is not None:
            assert mine.tolist() == rows.tolist()
    if n:  # a strided view takes NumPy's path, with the same answer
        view = wire.classify_rows(flows[::1 if n == 1 else 2], **weights)
        ref = wire._classify_numpy(flows[::1 if n == 1 else 2], weights.get("v6", 0),
                                   weights.get("routed", 0), weights.get("icmp", 0),
                                   weights.get("v6_exact", False))
        assert (view.latest, view.largest) == (ref.latest, ref.largest)


def test_one_class_of_every_row_is_none():
    flows = classify_fixture(50, seed=3)
    flows["ip_version"], flows["src_mask"], flows["dst_mask"] = 4, 0, 0
    flows["next_hop"] = bytes(16)
    assert wire.classify_rows(flows, v6=1, routed=2).rows == {0: None}


def test_padding_epoch_ms_and_constants_are_the_same_in_c_and_numpy():
    """Padding fields (IE 0) are zeros, EpochMs the floored ms of the epoch, Constant its
    value, whether the C pass writes them or NumPy (ops refused)."""
    flows = classify_fixture(40, seed=5)
    flows["start_ns"] = np.abs(flows["start_ns"]) - 1_500_000  # some just below 0 too
    fields = ((8, 4), (0, 3), (152, 8), (302, 1), (0, 1), (7, 2), (1000, 2))
    derived = {152: wire.EpochMs("start_ns"), 302: wire.Constant(9), 1000: wire.Constant(700)}
    with mock.patch.dict(wire._COLUMN_OF_IE, {1000: "dst_port"}):
        rows = np.arange(39, -1, -3)
        fast = pack_template(flows, fields, rows=rows, derived=derived).data
        with mock.patch.object(wire, "_pack_ops", return_value=None):
            slow = pack_template(flows, fields, rows=rows, derived=derived).data
    assert fast == slow
    rec = np.frombuffer(fast, [("a", "V4"), ("p", "V3"), ("ms", ">i8"), ("sel", "u1"),
                               ("q", "V1"), ("port", ">u2"), ("c", ">u2")])
    assert rec["ms"].tolist() == (flows["start_ns"][rows] // 10**6).tolist()
    assert set(rec["sel"].tolist()) == {9} and set(rec["c"].tolist()) == {700}
    assert set(rec["p"].tolist()) == {bytes(3)} and set(rec["q"].tolist()) == {bytes(1)}


@pytest.mark.parametrize("weights", [dict(v6=2**63 - 1, routed=1), dict(v6=-1, routed=2),
                                     dict(icmp=8), dict(v6=4, routed=2, icmp=2),
                                     dict(v6=2**62, routed=2**62, icmp=2**62)])
def test_weights_outside_the_eight_classes_are_refused_by_either_path(weights):
    """Huge or negative weights raise ValueError on the C and the NumPy path alike (huge
    ones overflowed C's sum: a class past its 8 counters, memory written out of bounds)."""
    flows = classify_fixture(100, seed=7)
    with pytest.raises(ValueError, match="weights"):
        wire.classify_rows(flows, **weights)
    with pytest.raises(ValueError, match="weights"):
        wire.classify_rows(flows[::2], **weights)  # not contiguous: NumPy's path
    with pytest.raises(ValueError, match="weights"):  # the C function checks them itself
        _wirepack.classify(flows, flows.itemsize, **wire._classify_offsets(flows.dtype),
                           v6_exact=False, v6_weight=weights.get("v6", 0),
                           routed_weight=weights.get("routed", 0),
                           icmp_weight=weights.get("icmp", 0))


def test_records_too_large_for_a_bytes_object_are_an_overflow_error():
    """pack_rows(out=None) of more bytes than a bytes object holds raises OverflowError
    (the size's product wrapped: a small buffer written as a huge one); a column offset
    near the size's limit is refused, not wrapped past the row's end."""
    rows = np.zeros(4, np.int64)
    ops = np.array([(0, 0, 8, 0)], np.uint32)
    with pytest.raises(OverflowError, match="do not fit"):
        _wirepack.pack_rows(bytes(16), 16, ops, None, 2**62, rows)
    with pytest.raises(OverflowError, match="do not fit"):
        _wirepack.pack_rows(bytes(16 * 3), 16, ops, None, 2**62)
    flows = classify_fixture(4, seed=1)
    offsets = wire._classify_offsets(flows.dtype) | {"start": 2**63 - 4}
    with pytest.raises(ValueError, match="outside"):
        _wirepack.classify(flows, flows.itemsize, **offsets, v6_exact=False, v6_weight=1,
                           routed_weight=0, icmp_weight=0)
