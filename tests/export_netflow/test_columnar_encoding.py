"""The bulk (columnar) encoders write exactly what the per-record encoders wrote before them.

v5, v9 and IPFIX data records are now written from a FlowBatch's columns in bulk
(``agent/wire.py``). Each test here encodes random flows (IPv4/IPv6, TCP/UDP/ICMP, with and
without routing information, counters beyond 32 bits, times around the boot time) both
ways: with the encoders, and with a reference written here record by record with
``struct``, following the layouts and rules the per-record encoders had (ICMP type/code,
sysUpTime rounding, counter splitting, template choice). The bytes must be identical.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netflow_agent.api import FlowRecord, flow_columns, join_records
from netflow_agent.plugins.export_ipfix import ipfix
from netflow_agent.plugins.export_netflow import v5, v9
from netflow_agent.plugins.export_netflow.state import ExportState

T0 = 1_764_537_000_000_000_000
BOOT = T0 - 3_600_000_000_000
U32 = 0xFFFFFFFF
ICMP = (1, 58)


@st.composite
def flow_records(draw) -> FlowRecord:
    v6 = draw(st.booleans())
    alen = 16 if v6 else 4
    addr = st.binary(min_size=alen, max_size=alen)
    hop = draw(st.one_of(st.just(b""), addr.filter(any)))
    start = draw(st.integers(BOOT - 10**12, T0 + 10**12))
    return FlowRecord(
        ip_version=6 if v6 else 4, protocol=draw(st.sampled_from((1, 6, 17, 58))),
        src_addr=draw(addr), dst_addr=draw(addr), src_port=draw(st.integers(0, 0xFFFF)),
        dst_port=draw(st.integers(0, 0xFFFF)), tos=draw(st.integers(0, 255)),
        direction=draw(st.integers(0, 1)), in_if=draw(st.integers(0, U32)),
        out_if=draw(st.integers(0, U32)),
        packets=draw(st.one_of(st.integers(0, 10**6), st.integers(0, 1 << 40))),
        octets=draw(st.one_of(st.integers(0, 10**9), st.integers(0, 1 << 45))),
        start_ns=start, end_ns=start + draw(st.integers(0, 10**12)),
        tcp_flags=draw(st.integers(0, 255)), end_reason=draw(st.integers(0, 5)),
        next_hop=hop, src_mask=draw(st.sampled_from((0, 0, 24))),
        dst_mask=draw(st.sampled_from((0, 0, 16))))


def split(r: FlowRecord, limit: int) -> list[tuple[int, int]]:
    """The (packets, octets) parts of a record, as the per-record encoders split them."""
    parts = max(-(-r.packets // limit), -(-r.octets // limit), 1)
    pk, pk_rest = divmod(r.packets, parts)
    oc, oc_rest = divmod(r.octets, parts)
    return [(pk + (i < pk_rest), oc + (i < oc_rest)) for i in range(parts)]


def uptime(ns: int) -> int:
    """sysUpTime ms of ``ns``; 0 before boot (never after the header's)."""
    return max((ns - BOOT) // 1_000_000, 0) & U32


def routed(r: FlowRecord) -> bool:
    return bool(r.next_hop or r.src_mask or r.dst_mask)


def reference_v5(records: list[FlowRecord]) -> bytes:
    out = []
    for r in records:
        if r.ip_version != 4:
            continue
        for pk, oc in split(r, U32):
            out.append(v5.RECORD.pack(
                r.src_addr, r.dst_addr, r.next_hop or bytes(4), r.in_if & 0xFFFF,
                r.out_if & 0xFFFF, pk, oc, uptime(r.start_ns), uptime(r.end_ns), r.src_port,
                r.dst_port, r.tcp_flags, r.protocol, r.tos, 0, 0, r.src_mask, r.dst_mask))
    return b"".join(out)


def reference_v9(records: list[FlowRecord], counters64: bool) -> dict[int, bytes]:
    templates = v9.flow_templates(counters64, ())
    groups: dict[int, list[bytes]] = {tid: [] for tid in templates}
    for r in records:
        tid = (256 if r.ip_version == 4 else 257) + 2 * routed(r)
        parts = [(r.packets, r.octets)] if counters64 else split(r, U32)
        for pk, oc in parts:
            values = [r.src_addr, r.dst_addr, r.src_port, r.dst_port, r.protocol, r.tcp_flags,
                      r.tos, r.ip_version, r.in_if, r.out_if, r.direction, pk, oc,
                      uptime(r.start_ns), uptime(r.end_ns),
                      r.dst_port if r.protocol in ICMP else 0, r.end_reason]
            if routed(r):
                values += [r.next_hop or bytes(len(r.src_addr)), r.src_mask, r.dst_mask]
            groups[tid].append(templates[tid].record.pack(*values))
    return {tid: b"".join(bodies) for tid, bodies in groups.items() if bodies}


def ipfix_value(r: FlowRecord, ie: int) -> int | bytes:
    by_ie: dict[int, int | bytes] = {
        8: r.src_addr, 27: r.src_addr, 12: r.dst_addr, 28: r.dst_addr,
        15: r.next_hop or bytes(4), 62: r.next_hop or bytes(16), 9: r.src_mask,
        29: r.src_mask, 13: r.dst_mask, 30: r.dst_mask, 7: r.src_port, 11: r.dst_port,
        32: r.dst_port, 139: r.dst_port, 4: r.protocol, 5: r.tos, 6: r.tcp_flags,
        10: r.in_if, 14: r.out_if, 61: r.direction, 60: r.ip_version, 136: r.end_reason,
        1: r.octets, 2: r.packets, 152: r.start_ns // 1_000_000,
        153: r.end_ns // 1_000_000, 154: ipfix.ntp_microseconds(r.start_ns),
        155: ipfix.ntp_microseconds(r.end_ns)}
    return by_ie[ie]


def reference_ipfix(records: list[FlowRecord], layouts: dict) -> dict[int, bytes]:
    groups: dict[int, list[bytes]] = {}
    for r in records:
        tid = ipfix.flow_template_id(r.ip_version, r.protocol in ICMP, routed(r))
        fields = layouts[tid].template.fields
        fmt = "!" + "".join(f"{n}s" if ie in (8, 27, 12, 28, 15, 62)
                            else {1: "B", 2: "H", 4: "I", 8: "Q"}[n] for ie, n in fields)
        groups.setdefault(tid, []).append(
            struct.pack(fmt, *(ipfix_value(r, ie) for ie, _ in fields)))
    return {tid: b"".join(groups[tid]) for tid in sorted(groups)}


RECORDS = st.lists(flow_records(), min_size=1, max_size=60)


@settings(max_examples=60, deadline=None)
@given(RECORDS)
def test_v5_records_are_the_per_record_bytes(records):
    tally = v5.Tally()
    state = ExportState(boot_ns=BOOT)
    bodies = v5.flow_bodies(flow_columns(records), state, tally)
    assert join_records(bodies) == reference_v5(records)
    assert tally.skipped == sum(r.ip_version != 4 for r in records)
    assert len(bodies) == sum(len(split(r, U32)) for r in records if r.ip_version == 4)


@settings(max_examples=60, deadline=None)
@given(RECORDS, st.booleans())
def test_v9_records_are_the_per_record_bytes(records, counters64):
    tally = v5.Tally()
    templates = v9.flow_templates(counters64, ())
    groups = v9.flow_groups(records, templates, ExportState(boot_ns=BOOT), counters64, tally)
    assert {tpl.template_id: join_records(b) for tpl, b in groups} == \
        reference_v9(records, counters64)
    if not counters64:
        assert tally.split == sum(len(split(r, U32)) - 1 for r in records)


@settings(max_examples=60, deadline=None)
@given(RECORDS.map(lambda rs: [r for r in rs if r.start_ns >= 0]), st.booleans())
def test_ipfix_records_are_the_per_record_bytes(records, micro):
    layouts = ipfix.flow_layouts(micro, ())
    groups = ipfix.encode_flow_groups(records, lambda r, e: (r, e), layouts)
    assert {g.template.template_id: join_records(g.records) for g in groups} == \
        reference_ipfix(records, layouts)


def test_a_time_before_1970_is_an_encode_error_in_ipfix_ms():
    good = FlowRecord(4, 17, b"\1\2\3\4", b"\5\6\7\10", 1, 2, packets=1, octets=9,
                      start_ns=T0, end_ns=T0)
    bad = FlowRecord(4, 17, b"\1\2\3\4", b"\5\6\7\10", 1, 3, packets=1, octets=9,
                     start_ns=-5, end_ns=T0)
    errors = []
    groups = ipfix.encode_flow_groups([good, bad], lambda r, e: errors.append(r))
    assert [r.dst_port for r in errors] == [3]
    assert sum(len(g.records) for g in groups) == 1


@pytest.mark.parametrize("kind", ["v5", "v9", "ipfix"])
def test_exporters_never_make_a_flow_record_from_a_batch(kind, monkeypatch):
    """The hot path reads columns: a FlowBatch handed to an exporter is never turned into
    FlowRecord objects (which cost microseconds per flow), yet every flow is sent."""
    from netflow_agent.api import FlowBatch
    from netflow_agent.plugins.export_ipfix.component import IpfixExporter
    from netflow_agent.plugins.export_ipfix.config import Config as IpfixConfig
    from netflow_agent.plugins.export_netflow.component import NetflowExporter
    from netflow_agent.plugins.export_netflow.config import Config as NetflowConfig
    from netflow_agent.runtime import RunContext
    from tests.export_netflow.test_netflow_component import flows
    from tests.support.collectors import UdpSink

    batch = FlowBatch.from_records(flows(500) + flows(100, version=6))

    def no_records(self):
        raise AssertionError("an exporter made FlowRecords from a FlowBatch")

    monkeypatch.setattr(FlowBatch, "records", no_records)
    with UdpSink() as sink:
        if kind == "ipfix":
            exporter = IpfixExporter(IpfixConfig(destination=[sink.endpoint], rate_limit=0,
                                                 options_interval_s=0), "export.ipfix[0]")
        else:
            exporter = NetflowExporter(NetflowConfig(destination=[sink.endpoint],
                                                     protocol=int(kind[1]), rate_limit=0),
                                       "export.netflow[0]")
        exporter.agent_start(context=RunContext(start_ns=T0))
        exporter.agent_export_flows(records=batch)
        stats = exporter.agent_collect_stats()
        exporter.agent_stop()
    sent = stats["udp_records"] if kind == "ipfix" else stats["records_encoded"]
    assert sent == (500 if kind == "v5" else 600)
    assert stats["encode_errors"] == 0
