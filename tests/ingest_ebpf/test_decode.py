"""Unprivileged tests of the eBPF ingest: record layout, decoding, counters, config checks."""

from __future__ import annotations

import importlib
import ipaddress

import numpy as np
import pytest

from netflow_agent.model import DIRECTION_EGRESS, DIRECTION_INGRESS, FlowBatch, make_key, split_key
from netflow_agent.plugins.ingest_ebpf import unavailable_reason
from netflow_agent.plugins.ingest_ebpf.config import Config
from netflow_agent.plugins.ingest_ebpf.decode import (
    COUNTER_NAMES,
    L2_MAC,
    L2_TUNNEL_ID,
    L2_VLAN,
    RECORD,
    RECORD_DTYPE,
    RECORD_EXT_DTYPE,
    CounterTracker,
    decode_records,
    kernel_fields,
)
from netflow_agent.schema import FlowOptions, FlowSchema
from tests.support import strict_environment

# offsets of RECORD's fields, in RECORD's order (the mirror of bpf/flow.h)
FIELD_OFFSETS = {
    "SADDR": 0, "DADDR": 16, "IFINDEX": 32, "SPORT": 36, "DPORT": 38, "IP_VERSION": 40,
    "PROTO": 41, "TOS": 42, "DIRECTION": 43, "PACKETS": 48, "BYTES": 56, "FIRST_NS": 64,
    "LAST_NS": 72, "TCP_FLAGS": 80,
}  # fmt: skip
# the C offsetof constants (OFF_*) -> the RECORD_EXT_DTYPE / RECORD_DTYPE column at that offset
C_TO_COLUMN = {
    "SRC_MAC": "src_mac", "DST_MAC": "dst_mac", "ETH_TYPE": "eth_type", "VLAN_ID": "vlan_id",
    "INNER_VLAN_ID": "inner_vlan_id", "VLAN_PRIO": "vlan_prio",
    "INNER_VLAN_PRIO": "inner_vlan_prio", "MPLS": "mpls", "TUNNEL_TYPE": "tunnel_type",
    "TUNNEL_ID": "tunnel_id", "PACKETS": "packets", "BYTES": "bytes", "FIRST_NS": "first_ns",
    "LAST_NS": "last_ns", "TCP_FLAGS": "tcp_flags",
}  # fmt: skip


def loader_module():
    """The extension, or skip (fail under root/CI, where it must have been built)."""
    try:
        return importlib.import_module("netflow_agent.plugins.ingest_ebpf._loader")
    except ImportError as exc:
        if strict_environment():
            pytest.fail(f"eBPF extension not built: {exc}", pytrace=False)
        pytest.skip(f"eBPF extension not built: {exc}")


def test_record_layout_matches_c():
    """The compact row (no optional fields) is today's 88 bytes; the whole flow_record holds
    the extension block at the offsets RECORD_EXT_DTYPE reads."""
    ext = loader_module()
    assert RECORD.size == ext.RECORD_BASE_SIZE == RECORD_DTYPE.itemsize == 88
    assert ext.KEY_BASE_SIZE == 44 and ext.METRICS_SIZE == 40
    for name, offset in FIELD_OFFSETS.items():
        if name in ("PACKETS", "BYTES", "FIRST_NS", "LAST_NS", "TCP_FLAGS"):
            assert RECORD_DTYPE.fields[C_TO_COLUMN[name]][1] == offset, name
            offset += ext.KEY_SIZE - 48  # the full record: no pad, the extension first
        assert getattr(ext, f"OFF_{name}") == offset, name
    assert ext.RECORD_SIZE == RECORD_EXT_DTYPE.itemsize == 152 and ext.KEY_SIZE == 112
    for c_name, column in C_TO_COLUMN.items():
        assert RECORD_EXT_DTYPE.fields[column][1] == getattr(ext, f"OFF_{c_name}"), c_name
    assert (ext.L2_MAC, ext.L2_VLAN, ext.L2_TUNNEL_ID) == (L2_MAC, L2_VLAN, L2_TUNNEL_ID)


def test_struct_offsets_are_the_ones_listed():
    """FIELD_OFFSETS really are RECORD's offsets (pack markers and find them)."""
    raw = RECORD.pack(b"\x01" * 16, b"\x02" * 16, 0x03030303, 0x0404, 0x0505, 6, 7, 8, 9,
                      10, 11, 12, 13, 14)
    assert raw[FIELD_OFFSETS["DADDR"]] == 2 and raw[FIELD_OFFSETS["IFINDEX"]] == 3
    assert raw[FIELD_OFFSETS["DPORT"]] == 5 and raw[FIELD_OFFSETS["DIRECTION"]] == 9
    assert raw[FIELD_OFFSETS["PACKETS"]] == 10 and raw[FIELD_OFFSETS["TCP_FLAGS"]] == 14


def test_counter_names_match_c_enum():
    ext = loader_module()
    assert ext.CNT_MAX == len(COUNTER_NAMES)
    for i, name in enumerate(COUNTER_NAMES):
        c_name = {"update_errors": "UPDATE_ERR",
                  "update_error_bytes": "UPDATE_ERR_BYTES"}.get(name, name.upper())
        assert getattr(ext, f"CNT_{c_name}") == i


def _record(src, dst, ifindex, sport, dport, proto, tos, direction, pk, by, first, last, fl):
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return RECORD.pack(s.packed.ljust(16, b"\0"), d.packed.ljust(16, b"\0"), ifindex, sport,
                       dport, s.version, proto, tos, direction, pk, by, first, last, fl)


def test_decode_ipv4_ingress_and_ipv6_egress():
    data = _record("10.0.0.1", "10.0.0.2", 7, 1234, 80, 6, 0x10, DIRECTION_INGRESS,
                   5, 300, 1_000, 2_000, 0x1B)
    data += _record("fd00::1", "fd00::2", 9, 0, 128 << 8, 58, 0, DIRECTION_EGRESS,
                    2, 208, 3_000, 4_000, 0)
    batch = FlowBatch("ebpf", decode_records(data, wall_offset_ns=10**18))
    assert len(batch) == 2
    (k4, k6_packed), (v4, v6) = batch.keys(), batch.flows
    assert k4 == make_key(4, 6, ipaddress.ip_address("10.0.0.1").packed,
                              ipaddress.ip_address("10.0.0.2").packed, 1234, 80, 0x10, 7,
                              DIRECTION_INGRESS)
    assert (v4["packets"], v4["octets"], v4["tcp_flags"], v4["out_if"]) == (5, 300, 0x1B, 0)
    assert (v4["start_ns"], v4["end_ns"]) == (10**18 + 1_000, 10**18 + 2_000)
    k6 = split_key(k6_packed)
    assert (k6.ip_version, k6.protocol, k6.dst_port, k6.in_if, k6.direction) == (
        6, 58, 128 << 8, 9, DIRECTION_EGRESS)  # keyed on the observation interface
    assert v6["out_if"] == 0
    assert ipaddress.ip_address(k6.src_addr) == ipaddress.ip_address("fd00::1")


def test_decode_rejects_partial_records():
    with pytest.raises(ValueError, match="multiple"):
        decode_records(b"\0" * (RECORD.size + 1), 0)
    assert len(decode_records(b"", 0)) == 0


def test_counter_tracker_deltas():
    t = CounterTracker()
    first = tuple(range(len(COUNTER_NAMES)))
    assert t.delta(first)["frag"] == COUNTER_NAMES.index("frag")
    second = tuple(v + 3 for v in first)
    assert set(t.delta(second).values.values()) == {3}
    with pytest.raises(ValueError):
        t.delta((1, 2))


def test_config_checks():
    assert Config(interfaces=["veth*", "eth0"]).check() == []
    issues = Config(interfaces=["eth0"], mode="xdp", direction="both").check()
    assert [i.path for i in issues] == ["direction"]
    bad = Config(interfaces=["a/b", "x" * 20]).check()
    assert [i.path for i in bad] == ["interfaces[0]", "interfaces[1]"]
    assert Config(interfaces=["e*"], mode="tc").resources()[0].kind == "tc-ebpf-filter"
    assert Config(interfaces=["e*"]).resources() == []


def test_unavailable_reason_is_clear():
    reason = unavailable_reason()
    try:
        importlib.import_module("netflow_agent.plugins.ingest_ebpf._loader")
    except ImportError:
        assert reason and "pip install ." in reason
        return
    import os

    if os.geteuid() == 0:
        assert reason is None
    else:
        assert reason and "root" in reason


def test_check_env_wants_cap_net_raw_for_promisc(monkeypatch):
    from types import SimpleNamespace

    import netflow_agent.plugins.ingest_ebpf as plugin
    from netflow_agent.schema import default_schema

    class _Cfg:
        schema = default_schema()

        def by_stage(self, stage):
            if stage != "ingest":
                return []
            return [SimpleNamespace(type_name="ebpf", path="ingest.ebpf[0]",
                                    config=Config(interfaces=["e*"], promisc=promisc))]

    def problems(check_env: bool) -> list:
        """The issues other than the kernel sizes' note (every instance gets one)."""
        issues = plugin.agent_check_config(_Cfg(), check_env)
        assert [i.severity for i in issues].count("note") == 1
        return [i for i in issues if i.severity != "note"]

    promisc = True
    monkeypatch.setattr(plugin, "effective_caps", lambda: ~(1 << plugin.CAP_NET_RAW))
    [issue] = problems(True)
    assert issue.path == "ingest.ebpf[0].promisc" and "CAP_NET_RAW" in issue.message
    assert problems(False) == []
    promisc = False
    assert problems(True) == []
    promisc = True
    monkeypatch.setattr(plugin, "effective_caps", lambda: 1 << plugin.CAP_NET_RAW)
    assert problems(True) == []


def test_rows_with_equal_keys_are_summed_by_the_cache():
    """The overflow ring's one-row-per-packet deltas are added up where they land."""
    from netflow_agent.stages.cache import CacheConfig, FlowCache

    data = b"".join(_record("10.0.0.1", "10.0.0.2", 7, 1, 2, 17, 0, DIRECTION_INGRESS,
                            1, by, first, last, fl)
                    for by, first, last, fl in ((100, 5, 5, 0x02), (200, 3, 9, 0x10)))
    data += _record("10.0.0.3", "10.0.0.2", 7, 1, 2, 17, 0, DIRECTION_INGRESS, 1, 40, 7, 7, 0)
    cache = FlowCache(CacheConfig())
    cache.agent_cache_flows(batch=FlowBatch("ebpf", decode_records(data, 0)), now_ns=10)
    out = cache.agent_cache_expire(now_ns=10, force=True)
    assert [(r.packets, r.octets, r.start_ns, r.end_ns, r.tcp_flags) for r in out] == [
        (2, 300, 3, 9, 0x12), (1, 40, 7, 7, 0)]
    assert cache.stats.traffic_packets == 3 and cache.active_flows == 0


def test_kernel_fields_follow_the_schema():
    """The loader's knobs: (0, 0) for the default schema (44-byte kernel key, compact rows),
    and only the fields the kernel can see (physdev is NFLOG's)."""
    assert kernel_fields(FlowSchema.build()) == (0, 0)
    assert kernel_fields(FlowSchema.build(FlowOptions(physdev="export"))) == (0, 0)
    assert kernel_fields(FlowSchema.build(FlowOptions(mac=True))) == (L2_MAC, 0)
    assert kernel_fields(FlowSchema.build(FlowOptions(vlan=True, mpls_labels=3))) == (L2_VLAN, 3)
    assert kernel_fields(FlowSchema.build(FlowOptions(mpls_labels=10, tunnel_id=True))) == (
        L2_TUNNEL_ID, 10)


def test_decode_fills_the_optional_key_columns():
    """A whole flow_record row: MACs, both tags, the first N label stack entries and the
    tunnel's layer2SegmentId land in their schema columns and in the packed key."""
    schema = FlowSchema.build(FlowOptions(mac=True, vlan=True, mpls_labels=2, tunnel_id=True))
    row = np.zeros(1, RECORD_EXT_DTYPE)
    row["saddr"] = ipaddress.ip_address("10.0.0.1").packed.ljust(16, b"\0")
    row["daddr"] = ipaddress.ip_address("10.0.0.2").packed.ljust(16, b"\0")
    row["version"], row["proto"], row["packets"], row["bytes"] = 4, 17, 3, 300
    row["src_mac"] = np.void(bytes.fromhex("020000000001"))
    row["dst_mac"] = np.void(bytes.fromhex("020000000002"))
    row["eth_type"], row["vlan_id"], row["vlan_prio"] = 0x0800, 100, 5
    row["inner_vlan_id"], row["inner_vlan_prio"] = 200, 3
    row["mpls"][0, :3] = [16 << 4 | 2 << 1, 17 << 4 | 1, 99]
    row["tunnel_type"], row["tunnel_id"] = 1, 42
    flows = decode_records(row.tobytes(), 0, schema)
    (rec,) = FlowBatch("ebpf", flows, schema=schema)
    assert (rec.src_mac.hex(), rec.dst_mac.hex()) == ("020000000001", "020000000002")
    assert (rec.ethernet_type, rec.vlan_id, rec.vlan_priority) == (0x0800, 100, 5)
    assert (rec.inner_vlan_id, rec.inner_vlan_priority) == (200, 3)
    assert int(flows["mpls_label_1"][0]) == 16 << 4 | 2 << 1
    assert int(flows["mpls_label_2"][0]) == 17 << 4 | 1
    assert int(flows["tunnel_id"][0]) == 1 << 56 | 42
    assert (rec.packets, rec.octets) == (3, 300)
    with pytest.raises(ValueError, match="not a multiple of 152"):
        decode_records(row.tobytes()[:-1], 0, schema)


@pytest.mark.parametrize("knobs", [{"l2_fields": 8}, {"mpls_labels": 11}, {"chunk_rows": 63}])
def test_loader_refuses_unknown_field_knobs(knobs):
    ext = loader_module()
    with pytest.raises(ValueError, match="l2_fields L2_\\* bits, mpls_labels 0..10"):
        ext.Loader(**knobs)
    assert ext.MIN_CHUNK_ROWS == 64  # [[ingest.ebpf]] drain_chunk's minimum
