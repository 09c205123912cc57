"""Captures of every encapsulation, replayed through the whole agent with ``[flow] mac, vlan,
mpls_labels = 2`` and exported as NetFlow v9 and IPFIX: tshark's named fields and nfdump's
output show the exact MAC, VLAN and MPLS values and the exact packets and bytes per flow
(issue 15 acceptance).

Truth: ``tests.support.pcapgen`` builds each capture with known addresses, tags and labels
and counts its packets and IP bytes; the agent (in-process: pcap ingest, cache, exporter over
UDP) sends to a :class:`UdpSink`, whose datagrams tshark decodes, and to nfcapd.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from netflow_agent.schema import FlowOptions
from netflow_agent.testing import build_agent
from tests.export_netflow.collect import nfcapd, write_capture
from tests.export_netflow.collect import tshark_fields as tshark_columns
from tests.support.collectors import UdpSink, free_udp_port
from tests.support.pcapgen import LINKTYPE_LINUX_SLL, FlowSpec, PcapBuilder
from tests.support.schemas import active_schema

SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"  # pcapgen's addresses
NO_MAC = "00:00:00:00:00:00"
FLOW = "[flow]\nmac = true\nvlan = true\nmpls_labels = 2\n"

#: name -> (PcapBuilder arguments, (vlan, pcp, inner vlan, inner pcp), MPLS labels, dst MAC)
CAPTURES = {
    "ethernet": ({}, (0, 0, 0, 0), (), DST_MAC),
    "802.1q": ({"vlans": (100,), "vlan_pcps": (5,)}, (100, 5, 0, 0), (), DST_MAC),
    "qinq": ({"vlans": (10, 20), "vlan_pcps": (3, 6)}, (10, 3, 20, 6), (), DST_MAC),
    "mpls-1": ({"mpls": (16,), "mpls_tc": 2}, (0, 0, 0, 0), (16,), DST_MAC),
    "mpls-2": ({"mpls": (1000, 1048575), "mpls_tc": 5}, (0, 0, 0, 0), (1000, 1048575),
               DST_MAC),
    "sll": ({"linktype": LINKTYPE_LINUX_SLL}, (0, 0, 0, 0), (), NO_MAC),
}


def capture(link: dict) -> PcapBuilder:
    """UDP and TCP over IPv4 and IPv6 (distinct source ports: one record each)."""
    b = PcapBuilder(**link)
    b.add(FlowSpec("udp", "10.1.0.1", "10.1.0.2", 5001, 53, packets=4, payload=33))
    b.add(FlowSpec("tcp", "10.1.0.1", "10.1.0.3", 5002, 80, packets=5, payload=700))
    b.add(FlowSpec("udp", "fd00::2", "fd00::1", 5003, 53, packets=3, payload=120))
    b.add(FlowSpec("tcp", "fd00::2", "fd00::1", 5004, 443, packets=2, payload=1000))
    return b


def replay(tmp_path, builder: PcapBuilder, exporter: str):  # type: ignore[no-untyped-def]
    """Replay the capture; (datagrams the sink got, its port, nfdump rows)."""
    path = tmp_path / "c.pcap"
    builder.write(path)
    port = free_udp_port()
    with UdpSink() as sink, nfcapd(tmp_path / "nfcapd", port) as collector, \
            active_schema(FlowOptions()):  # the default schema again afterwards
        agent = build_agent(f'{FLOW}[[ingest.pcap]]\npath = "{path}"\n'
                            f'[[export.{exporter}]]\n'
                            f'destination = ["{sink.endpoint}", "127.0.0.1:{port}"]\n'
                            + ("protocol = 9\n" if exporter == "netflow" else ""),
                            tmp_path, [])
        agent.pipeline.run()
        agent.finish()
        flows = len(builder.truth.table())
        datagrams = sink.wait_for(
            lambda got: _records(got, sink.port, tmp_path) >= flows)
    rows = collector.flows("%sp|%ismc|%idmc|%svln|%mpls1|%mpls2|%pkt|%byt")
    return datagrams, sink.port, rows


def _records(datagrams: list[bytes], port: int, tmp_path: Path) -> int:
    return sum(len(r[0].split(",")) for r in _tshark(datagrams, port, tmp_path))


NAMES = ["cflow.srcport", "cflow.srcmac", "cflow.dstmac", "cflow.vlanid",
         "cflow.dot1q_priority", "cflow.dot1q_customer_vlan_id",
         "cflow.dot1q_customer_priority", "cflow.ethernet_type", "cflow.mpls_label",
         "cflow.mpls_exp", "cflow.mpls_bos", "cflow.packets", "cflow.octets"]


def _tshark(datagrams: list[bytes], port: int, tmp_path: Path) -> list[list[str]]:
    """tshark's columns per frame with flow records (template-only frames left out)."""
    pcap = write_capture(datagrams, tmp_path / "export.pcap", port)
    return [row for row in tshark_columns(pcap, NAMES, port) if row[0]]


def tshark_table(datagrams: list[bytes], port: int, tmp_path: Path) -> dict[int, tuple]:
    """Per source port: (src MAC, dst MAC, vlan, pcp, inner vlan, inner pcp, ethertype,
    [(label, TC, S), (label, TC, S)], packets, bytes), as tshark names them."""
    out = {}
    for row in _tshark(datagrams, port, tmp_path):
        cols = [c.split(",") if c else [] for c in row]
        for i, sport in enumerate(cols[0]):
            labels = [(int(cols[8][j]), int(cols[9][j]), int(cols[10][j]))
                      for j in (2 * i, 2 * i + 1)]
            out[int(sport)] = (cols[1][i], cols[2][i], *(int(cols[k][i]) for k in range(3, 8)),
                               labels, int(cols[11][i]), int(cols[12][i]))
    return out


@pytest.mark.parametrize("exporter", ["netflow", "ipfix"], ids=["v9", "ipfix"])
@pytest.mark.parametrize("name", CAPTURES)
def test_tshark_and_nfdump_show_the_exact_l2_fields(tmp_path, name, exporter):
    link, tags, labels, dst_mac = CAPTURES[name]
    builder = capture(link)
    datagrams, port, nfdump_rows = replay(tmp_path, builder, exporter)
    tc = link.get("mpls_tc", 0)
    stack = [(label, tc, int(n == len(labels) - 1)) for n, label in enumerate(labels)]
    stack += [(0, 0, 0)] * (2 - len(stack))
    want, want_nfdump = {}, {}
    for fid, (packets, octets) in builder.truth.table().items():
        etype = 0x86DD if fid.ip_version == 6 else 0x0800
        want[fid.sport] = (SRC_MAC, dst_mac, *tags, etype, stack, packets, octets)
        nf_labels = [f"{lb}-{t}-{s}" for lb, t, s in stack]
        want_nfdump[str(fid.sport)] = [SRC_MAC, dst_mac, str(tags[0]), *nf_labels,
                                       str(packets), str(octets)]
    assert tshark_table(datagrams, port, tmp_path) == want
    assert {r[0]: r[1:] for r in nfdump_rows} == want_nfdump
