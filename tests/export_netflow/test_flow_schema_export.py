"""v9 and IPFIX templates follow the flow schema: MAC, VLAN and MPLS columns of a FlowBatch
arrive at tshark and nfcapd/nfdump with their exact values (issue 13 item 2, issue 15).

The batch is built directly from the schema's columns (no ingest); every template variant
(IPv4/IPv6, plain/routed, ICMP) is used, and each flow has its own source MAC so the decoded
records can be matched back to the rows.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator

import numpy as np
import pytest

from netflow_agent.api import FlowBatch, FlowField, FlowSchema
from netflow_agent.plugins.export_ipfix import ipfix
from netflow_agent.plugins.export_netflow import v9
from netflow_agent.plugins.export_netflow.state import ExportState
from netflow_agent.schema import FlowOptions
from tests.export_netflow.collect import nfcapd, tshark_fields, write_capture
from tests.support.collectors import free_udp_port
from tests.support.schemas import active_schema

T0 = 1_764_537_000_000_000_000
L2 = FlowOptions(mac=True, vlan=True, mpls_labels=2)


def lse(label: int, tc: int, bottom: bool) -> int:
    """An MPLS label stack entry as the schema's column holds it (no TTL)."""
    return label << 4 | tc << 1 | int(bottom)


# src MAC (row id), dst MAC, vlan, pcp, inner vlan, inner pcp, ethertype, labels, addresses
ROWS = [
    ("02:00:00:00:00:01", "02:00:00:00:00:aa", 100, 5, 200, 3, 0x8847,
     (lse(1001, 2, False), lse(2002, 1, True)), "10.0.0.1", "10.0.0.2", 17, ""),
    ("02:00:00:00:00:02", "02:00:00:00:00:bb", 4094, 7, 0, 0, 0x86DD,
     (lse(1048575, 7, True), 0), "fd00::1", "fd00::2", 6, ""),
    ("02:00:00:00:00:03", "02:00:00:00:00:cc", 1, 0, 2, 1, 0x0800,
     (lse(16, 0, False), lse(17, 0, True)), "10.0.1.1", "10.0.2.1", 1, "10.0.0.254"),
    ("02:00:00:00:00:04", "02:00:00:00:00:dd", 10, 1, 20, 2, 0x86DD,
     (lse(3, 0, True), 0), "fd00::3", "fd00::4", 58, "fd00::fe"),
]


def _padded(text: str) -> bytes:
    return ipaddress.ip_address(text).packed.ljust(16, b"\0")


def l2_batch(schema: FlowSchema) -> FlowBatch:
    """One flow per row of :data:`ROWS`, written column by column."""
    f = schema.empty(len(ROWS))
    for i, (smac, dmac, vid, pcp, ivid, ipcp, etype, labels, src, dst, proto, hop) in \
            enumerate(ROWS):
        version = ipaddress.ip_address(src).version
        f[i]["ip_version"], f[i]["protocol"] = version, proto
        f[i]["src_addr"], f[i]["dst_addr"] = _padded(src), _padded(dst)
        f[i]["src_port"] = 0 if proto in (1, 58) else 40000 + i
        f[i]["dst_port"] = 0x0800 if proto in (1, 58) else 443
        f[i]["packets"], f[i]["octets"] = 10 + i, 1000 + i
        f[i]["start_ns"], f[i]["end_ns"] = T0, T0 + 1_000_000_000
        f[i]["in_if"], f[i]["out_if"] = 1, 2
        if hop:
            f[i]["next_hop"], f[i]["src_mask"], f[i]["dst_mask"] = _padded(hop), 24, 24
        f[i]["src_mac"] = bytes.fromhex(smac.replace(":", ""))
        f[i]["dst_mac"] = bytes.fromhex(dmac.replace(":", ""))
        f[i]["vlan_id"], f[i]["vlan_priority"] = vid, pcp
        f[i]["inner_vlan_id"], f[i]["inner_vlan_priority"] = ivid, ipcp
        f[i]["ethernet_type"] = etype
        f[i]["mpls_label_1"], f[i]["mpls_label_2"] = labels
    return FlowBatch("test", f)


@pytest.fixture
def l2_schema() -> Iterator[FlowSchema]:
    with active_schema(L2) as schema:
        yield schema


def encode_v9(batch: FlowBatch) -> list[bytes]:
    state = ExportState(boot_ns=T0 - 60_000_000_000, source_id=7)
    return v9.encode_flows(batch, state, v9.flow_templates(False), v9.RefreshPolicy(),
                           T0 + 2_000_000_000)


def encode_ipfix(batch: FlowBatch) -> list[bytes]:
    groups = ipfix.encode_flow_groups(batch, lambda r, e: pytest.fail(f"{r}: {e}"),
                                      ipfix.flow_layouts())
    return [m.data for m in ipfix.encode_messages(
        ipfix.Session(7), groups, export_time=T0 // 10**9 + 2, max_length=1400, now_ns=0)]


ENCODERS = {"v9": encode_v9, "ipfix": encode_ipfix}
L2_ELEMENTS = [(56, 6), (80, 6), (256, 2), (58, 2), (244, 1), (245, 2), (246, 1), (70, 3),
               (71, 3)]


def test_every_flow_template_ends_with_the_schema_fields(l2_schema):
    for tpl in v9.flow_templates(False).values():
        assert list(tpl.fields[-len(L2_ELEMENTS):]) == L2_ELEMENTS
        assert tpl.size == tpl.record.size + 26
    for layout in ipfix.flow_layouts().values():
        assert list(layout.template.fields[-len(L2_ELEMENTS):]) == L2_ELEMENTS


def test_default_schema_templates_are_unchanged():
    plain = {tid: t.fields for tid, t in v9.flow_templates(False, ()).items()}
    assert {tid: t.fields for tid, t in v9.flow_templates(False).items()} == plain
    assert ipfix.flow_layouts() is ipfix.FLOW_LAYOUTS


@pytest.mark.parametrize("protocol", ["v9", "ipfix"])
def test_tshark_reads_the_exact_l2_values(l2_schema, protocol, tmp_path):
    datagrams = ENCODERS[protocol](l2_batch(l2_schema))
    port = free_udp_port()
    pcap = write_capture(datagrams, tmp_path / "export.pcap", port)
    names = ["cflow.srcmac", "cflow.dstmac", "cflow.vlanid", "cflow.dot1q_priority",
             "cflow.dot1q_customer_vlan_id", "cflow.dot1q_customer_priority",
             "cflow.ethernet_type", "cflow.mpls_label", "cflow.mpls_exp", "cflow.mpls_bos"]
    seen = {}
    for frame in tshark_fields(pcap, names, port):
        cols = [c.split(",") if c else [] for c in frame]
        for i, smac in enumerate(cols[0]):
            labels = [(int(cols[7][j]), int(cols[8][j]), int(cols[9][j]))
                      for j in (2 * i, 2 * i + 1)]
            seen[smac] = (cols[1][i], *(int(cols[k][i]) for k in range(2, 7)), labels)
    want = {}
    for smac, dmac, vid, pcp, ivid, ipcp, etype, labels, *_ in ROWS:
        want[smac] = (dmac, vid, pcp, ivid, ipcp, etype,
                      [(e >> 4, e >> 1 & 7, e & 1) for e in labels])
    assert seen == want


@pytest.mark.parametrize("protocol", ["v9", "ipfix"])
def test_nfdump_reads_the_exact_l2_values(l2_schema, protocol, tmp_path):
    datagrams = ENCODERS[protocol](l2_batch(l2_schema))
    port = free_udp_port()
    with nfcapd(tmp_path / "flows", port) as collector, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for data in datagrams:
            sock.sendto(data, ("127.0.0.1", port))
    rows = collector.flows("%ismc|%idmc|%svln|%mpls1|%mpls2|%sa|%pkt|%byt")
    seen = {r[0]: r[1:] for r in rows}
    want = {}
    for i, (smac, dmac, vid, _, _, _, _, labels, src, *_) in enumerate(ROWS):
        mpls = [f"{e >> 4}-{e >> 1 & 7}-{e & 1}" for e in labels]
        want[smac] = [dmac, str(vid), *mpls, src, str(10 + i), str(1000 + i)]
    assert seen == want


def test_split_counters_keep_the_l2_fields(l2_schema):
    """v9 with 32-bit counters splits a flow over 2**32 octets: every part has its MAC."""
    batch = l2_batch(l2_schema)
    flows = batch.flows[:1].copy()
    flows["octets"] = 3 * 2**32
    (datagram,) = encode_v9(FlowBatch("big", flows))
    tpl = v9.flow_templates(False)[v9.TEMPLATE_FLOW4]
    pos, body = v9.HEADER.size, b""
    while pos < len(datagram):  # the data FlowSet of the template
        set_id, length = v9.FLOWSET_HEADER.unpack_from(datagram, pos)
        body = datagram[pos + 4:pos + length] if set_id == tpl.template_id else body
        pos += length
    rows = np.frombuffer(body[:4 * tpl.size], np.dtype(f"V{tpl.size}"))
    macs = {bytes(r)[tpl.record.size:tpl.record.size + 6] for r in rows}
    assert len(rows) == 4 and macs == {bytes.fromhex("020000000001")}


def test_enterprise_fields_ipfix_only():
    """A plugin field with a private enterprise number: IPFIX sends it with the Enterprise
    bit and the number (RFC 7011 section 3.2); v9 has no such bit and leaves it out."""
    pen = FlowField("tenant", ie=5, width=4, enterprise=32473)
    with active_schema(FlowOptions(fields=("tenant",)), [pen]):
        encoded = ipfix.flow_layouts()[256].template.encode()
        assert encoded.endswith(struct.pack("!HHI", 0x8005, 4, 32473))
        assert all(t.fields == v9.flow_templates(False, ())[tid].fields
                   for tid, t in v9.flow_templates(False).items())


def test_dry_run_warns_about_fields_a_netflow_instance_leaves_out(tmp_path):
    from tests.support.agentproc import run_agent

    path = tmp_path / "agent.toml"
    path.write_text("""
[flow]
mac = true

[[ingest.ebpf]]
interfaces = ["lo"]

[[export.netflow]]
protocol = 5
destination = ["127.0.0.1:2055"]

[[export.netflow]]
protocol = 9
destination = ["127.0.0.1:2056"]
""")
    result = run_agent("--dry-run", "-c", str(path))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert ("export.netflow[0].protocol: warning: NetFlow v5 records have a fixed layout: "
            "flow field(s) src_mac, dst_mac, ethernet_type are not exported") in out
    assert "export.netflow[1]" not in out
