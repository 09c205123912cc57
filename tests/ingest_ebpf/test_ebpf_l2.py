"""Privileged end-to-end tests of the eBPF program's ``[flow]`` layer-2 key fields (issue 15
items 1-3) and tunnel id (issue 16 item 4): the real ``agent`` with ``[[ingest.ebpf]]`` on a
veth, its flows written by ``[[export.log]]`` (``FlowRecord.to_dict``: the cache's view) and
exported as NetFlow v9 to nfcapd (read by nfdump) and IPFIX (read by tshark).

This kernel has no 8021q module and no MPLS routing (/work/shared/KERNEL.md), so the sender
writes hand-made Ethernet frames with a raw ``AF_PACKET`` socket (:func:`send_frames`):
802.1Q, QinQ (802.1ad + 802.1Q) and MPLS-labelled frames with known MACs, tag priorities and
label stack entries. On tc the receiving veth's stack moves the outer tag into
``skb->vlan_tci`` before the program runs (the offloaded-tag path); XDP sees it in the frame.
The VXLAN test uses a real VXLAN link (VNI 42) and checks layer2SegmentId ``1 << 56 | 42``.
"""

from __future__ import annotations

import ipaddress
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from netflow_agent.schema import FlowOptions
from tests.e2e.test_pcap_encapsulations import flows_of
from tests.export_netflow.collect import nfcapd, tshark_fields, write_capture
from tests.ingest_ebpf.observe import ebpf_ingest
from tests.ingest_ebpf.test_ebpf_agent import stop_agent
from tests.ingest_ebpf.test_ebpf_encap import TUNNELS
from tests.support.agentproc import Agent
from tests.support.collectors import UdpSink, free_udp_port
from tests.support.netns import RoutedTopology, VethPair, send_frames, send_udp, vxlan_overlay
from tests.support.pcapgen import PcapBuilder, ipv4_packet, ipv6_packet
from tests.support.schemas import active_schema

pytestmark = pytest.mark.bpf

INGEST = "ingest.ebpf[0]"
MAC_A, MAC_B, MAC_C = "02:00:00:00:0a:01", "02:00:00:00:0b:01", "02:00:00:00:0c:01"
PAYLOAD = 100
TPID_8021Q, TPID_8021AD, ETH_P_MPLS = 0x8100, 0x88A8, 0x8847


@dataclass(frozen=True)
class Case:
    """One flow of crafted frames: its link layer and what the exported record must say."""

    sport: int
    v6: bool = False
    tags: tuple[tuple[int, int, int], ...] = ()  # (tpid, id, priority), outermost first
    mpls: tuple[tuple[int, int], ...] = ()  # (label, traffic class), outermost first
    src_mac: str = MAC_A
    packets: int = 2

    def frame(self) -> bytes:
        udp = struct.pack("!HHHH", self.sport, 7000, 8 + PAYLOAD, 0) + bytes(PAYLOAD)
        if self.v6:
            ip = ipv6_packet(_addr("fd61::1"), _addr("fd61::2"), 17, udp)
        else:
            ip = ipv4_packet(_addr("10.61.0.1"), _addr("10.61.0.2"), 17, udp)
        head = bytes.fromhex(MAC_B.replace(":", "")) + bytes.fromhex(self.src_mac.replace(":", ""))
        for tpid, vid, prio in self.tags:
            head += struct.pack("!HH", tpid, prio << 13 | vid)
        if self.mpls:
            head += struct.pack("!H", ETH_P_MPLS)
            for i, (label, tc) in enumerate(self.mpls):
                bottom = int(i == len(self.mpls) - 1)
                head += struct.pack("!I", label << 12 | tc << 9 | bottom << 8 | 64)
        else:
            head += struct.pack("!H", 0x86DD if self.v6 else 0x0800)
        return head + ip

    def entries(self, n: int = 3) -> list[int]:
        """The first ``n`` label stack entries (mplsLabelStackSection), zero-filled."""
        stack = [label << 4 | tc << 1 | int(i == len(self.mpls) - 1)
                 for i, (label, tc) in enumerate(self.mpls)][:n]
        return stack + [0] * (n - len(stack))

    def octets(self) -> int:
        return self.packets * ((40 if self.v6 else 20) + 8 + PAYLOAD)

    def nfdump_row(self) -> list[str]:
        """``%ismc|%idmc|%svln|%mpls1|%mpls2|%mpls3|%pkt|%byt`` as nfdump prints them."""
        vlan = self.tags[0][1] if self.tags else 0
        mpls = [f"{e >> 4}-{e >> 1 & 7}-{e & 1}" for e in self.entries()]
        return [self.src_mac, MAC_B, str(vlan), *mpls, str(self.packets), str(self.octets())]

    def tshark_row(self) -> tuple:
        tags = [(vid, prio) for _tpid, vid, prio in self.tags] + [(0, 0)] * 2
        return (self.src_mac, MAC_B, *tags[0], *tags[1], 0x86DD if self.v6 else 0x0800,
                [(e >> 4, e >> 1 & 7, e & 1) for e in self.entries()])

    def expected(self, mpls_labels: int) -> dict[str, object]:
        """The record's optional fields (to_dict leaves zeros out), packets and bytes."""
        want: dict[str, object] = {
            "src_mac": self.src_mac, "dst_mac": MAC_B,
            "ethernet_type": 0x86DD if self.v6 else 0x0800,
            "packets": self.packets, "octets": self.octets(),
        }
        for prefix, (_tpid, vid, prio) in zip(("vlan", "inner_vlan"), self.tags, strict=False):
            want[f"{prefix}_id"], want[f"{prefix}_priority"] = vid, prio
        stack = self.entries(mpls_labels)
        while stack and not stack[-1]:
            stack.pop()
        if stack:
            want["mpls_labels"] = stack
        return {k: v for k, v in want.items() if v}


def _addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


CASES = (
    Case(5001, tags=((TPID_8021Q, 100, 5),), packets=3),
    Case(5002, tags=((TPID_8021AD, 300, 2), (TPID_8021Q, 30, 6)), packets=4),
    Case(5003, mpls=((16, 1), (17, 0)), packets=5),
    Case(5004, v6=True, mpls=((1000, 7),)),
    Case(5005, tags=((TPID_8021Q, 200, 0),), mpls=((16, 0), (17, 2), (18, 0), (19, 0))),
    Case(5006, v6=True, src_mac=MAC_C),
)


def _config(tmp: Path, ns: str, ifname: str, flow: str, mode: str = "tcx",
            decapsulate: str = "", export: str = "") -> tuple[Path, Path]:
    out, conf = tmp / "flows.jsonl", tmp / "agent.toml"
    conf.write_text(f"""
[agent]
control_socket = "{tmp / 'agent.sock'}"

[flow]
{flow}

[cache]
inactive_timeout = 60

[[ingest.ebpf]]
interfaces = ["{ifname}"]
netns = "{ns}"
mode = "{mode}"
direction = "ingress"
poll_interval_ms = 100
{decapsulate}

[[export.log]]
path = "{out}"

{export}
""")
    return conf, out


def _run(tmp: Path, conf: Path, send: object) -> tuple[dict, str]:
    """Start the agent, call ``send()`` (-> packets the program must see), stop the agent
    once its kernel counters show them; its ingest statistics and log."""
    agent = Agent(conf, socket=tmp / "agent.sock", log_path=tmp / "agent.log").start(
        ready="attached")
    try:
        sent = send()  # type: ignore[operator]
        snap = agent.wait_for(
            lambda s: s["components"][INGEST].get("kernel_packets", 0) >= sent,
            what="the ingest's counters")
    finally:
        stop_agent(agent)
    return dict(snap["components"][INGEST]), agent.log()


def _flows(out: Path) -> list[dict]:
    return [r for r in map(json.loads, out.read_text().splitlines()) if r.get("type") == "flow"]


@pytest.mark.parametrize("mode", ["tcx", "xdp"])
def test_mac_vlan_mpls_in_the_exported_flows(veth_pair_ns: VethPair, tmp_path: Path,
                                             mode: str) -> None:
    """``mac``, ``vlan`` and ``mpls_labels = 3``: one flow per crafted flow with its exact
    MACs, tags (id, priority), first three label stack entries, packets and bytes, in the
    cache's records, in nfdump's reading of the v9 export and in tshark's of the IPFIX one."""
    a, b = veth_pair_ns.a, veth_pair_ns.b
    v9_port = free_udp_port()
    with UdpSink() as sink, nfcapd(tmp_path / "nfcapd", v9_port) as v9:
        export = (f'[[export.netflow]]\nprotocol = 9\ndestination = ["127.0.0.1:{v9_port}"]\n'
                  f'[[export.ipfix]]\ndestination = ["{sink.endpoint}"]\n')
        conf, out = _config(tmp_path, b.ns.name, b.ifname,
                            "mac = true\nvlan = true\nmpls_labels = 3", mode, export=export)
        frames = [case.frame() for case in CASES for _ in range(case.packets)]
        _stats, log = _run(tmp_path, conf, lambda: send_frames(a, frames))
        ipfix = sink.collect()
    by_port = {r["src_port"]: r for r in _flows(out) if r["dst_port"] == 7000}
    assert sorted(by_port) == [case.sport for case in CASES], log
    for case in CASES:
        got = by_port[case.sport]
        want = case.expected(3)
        assert {k: got.get(k) for k in want} == want, case
        for absent in {"vlan_id", "inner_vlan_id", "mpls_labels"} - set(want):
            assert absent not in got, (case, got)
    assert _nfdump_l2(v9) == {c.sport: c.nfdump_row() for c in CASES}
    assert _tshark_l2(ipfix, sink.port, tmp_path) == {c.sport: c.tshark_row() for c in CASES}


def _nfdump_l2(collector: object) -> dict[int, list[str]]:
    """nfdump's MACs, outer VLAN, label stack entries, packets, bytes per source port."""
    rows = collector.flows(  # type: ignore[attr-defined]
        "%sp|%dp|%ismc|%idmc|%svln|%mpls1|%mpls2|%mpls3|%pkt|%byt")
    return {int(r[0]): r[2:] for r in rows if r[1] == "7000"}


TSHARK_L2 = ["cflow.srcport", "cflow.dstport", "cflow.srcmac", "cflow.dstmac", "cflow.vlanid",
             "cflow.dot1q_priority", "cflow.dot1q_customer_vlan_id",
             "cflow.dot1q_customer_priority", "cflow.ethernet_type", "cflow.mpls_label",
             "cflow.mpls_exp", "cflow.mpls_bos"]


def _tshark_l2(datagrams: list[bytes], port: int, tmp: Path) -> dict[int, tuple]:
    """tshark's reading of the IPFIX records: per source port (MACs, VLAN id/priority, inner
    VLAN id/priority, ethernetType, the three label stack entries as (label, TC, S))."""
    pcap = write_capture(datagrams, tmp / "ipfix.pcap", port)
    seen = {}
    for frame in tshark_fields(pcap, TSHARK_L2, port):
        cols = [c.split(",") if c else [] for c in frame]
        for i, sport in enumerate(cols[0]):
            if cols[1][i] != "7000":
                continue
            labels = [tuple(int(cols[k][j]) for k in (9, 10, 11)) for j in range(3 * i, 3 * i + 3)]
            seen[int(sport)] = (cols[2][i], cols[3][i], *(int(cols[k][i]) for k in range(4, 9)),
                                labels)
    return seen


def test_mpls_frames_are_accounted_with_the_defaults(veth_pair_ns: VethPair,
                                                     tmp_path: Path) -> None:
    """Without ``[flow]`` fields MPLS frames are still flows (their inner IP packet), and the
    records carry no optional field: the default key is the 44-byte base."""
    a, b = veth_pair_ns.a, veth_pair_ns.b
    conf, out = _config(tmp_path, b.ns.name, b.ifname, "")
    mpls = [c for c in CASES if c.mpls]
    frames = [case.frame() for case in mpls for _ in range(case.packets)]
    stats, log = _run(tmp_path, conf, lambda: send_frames(a, frames))
    got = {r["src_port"]: (r["packets"], r["octets"]) for r in _flows(out)
           if r["dst_port"] == 7000}
    assert got == {c.sport: (c.expected(0)["packets"], c.expected(0)["octets"]) for c in mpls}
    assert stats.get("kernel_non_ip", 0) == 0, log
    for record in _flows(out):
        assert not {"src_mac", "vlan_id", "mpls_labels", "ethernet_type"} & set(record)


def test_vlan_fields_split_flows_by_tag(veth_pair_ns: VethPair, tmp_path: Path) -> None:
    """``vlan`` alone: the same 5-tuple under two tags is two flows, and no MAC is kept."""
    a, b = veth_pair_ns.a, veth_pair_ns.b
    conf, out = _config(tmp_path, b.ns.name, b.ifname, "vlan = true")
    cases = (Case(5101, tags=((TPID_8021Q, 10, 1),), packets=2),
             Case(5101, tags=((TPID_8021Q, 11, 1),), packets=3))
    frames = [case.frame() for case in cases for _ in range(case.packets)]
    _run(tmp_path, conf, lambda: send_frames(a, frames))
    got = {r["vlan_id"]: r["packets"] for r in _flows(out) if r["src_port"] == 5101}
    assert got == {10: 2, 11: 3}
    assert all("src_mac" not in r for r in _flows(out))


def test_vxlan_tunnel_id_is_layer2_segment_id(routed: RoutedTopology, tmp_path: Path) -> None:
    """``decapsulate = ["vxlan"]`` with ``[flow] tunnel_id``: the inner flow carries the VNI
    as layer2SegmentId (segment type 0x01 << 56 | 42) with exact packets, in the cache's
    record and in tshark's reading of the IPFIX export."""
    vxlan_overlay(routed.client, routed.server)
    rc = routed.router_client
    with UdpSink() as sink:
        conf, out = _config(tmp_path, routed.router_ns.name, rc.ifname, "tunnel_id = true",
                            decapsulate='decapsulate = ["vxlan"]',
                            export=f'[[export.ipfix]]\ndestination = ["{sink.endpoint}"]\n')

        def send() -> int:
            sent = send_udp(routed.client.ns, "192.168.77.2", 9400, 6, 200,
                            peer=routed.server.ns)
            return sent.truth.packets

        _stats, log = _run(tmp_path, conf, send)
        ipfix = sink.collect()
    segment = 1 << 56 | 42
    inner = [r for r in _flows(out) if r["dst_port"] == 9400]
    assert [(r["dst_addr"], r["packets"], r.get("tunnel_id")) for r in inner] == [
        ("192.168.77.2", 6, segment)], log
    pcap = write_capture(ipfix, tmp_path / "ipfix.pcap", sink.port)
    fields = ["cflow.dstport", "cflow.layer2_segment_id", "cflow.packets"]
    seen = [tuple(zip(*(c.split(",") for c in frame), strict=True))
            for frame in tshark_fields(pcap, fields, sink.port) if frame[0]]
    assert [r for rows in seen for r in rows if r[0] == "9400"] == [("9400", str(segment), "6")]


@pytest.mark.parametrize(("tunnel", "segment"), [
    ("vxlan", 1 << 56 | 42), ("geneve", 1 << 56 | 42), ("gre-key", 42), ("gre-teb", 42),
    ("ipip", 0), ("gre", 0)])
def test_crafted_tunnels_give_their_id(veth_pair_ns: VethPair, tunnel: str,
                                       segment: int) -> None:
    """The tunnel id of every kind (this kernel has no GRE or Geneve links): VXLAN and Geneve
    VNI with segment type 0x01, the GRE key with type 0; tunnels without an id give 0. The
    inner flows stay exact."""
    a, b = veth_pair_ns.a, veth_pair_ns.b
    built = flows_of(PcapBuilder(fragments="track", tunnel=tunnel, tunnel_id=42,
                                 tunnel_outer=("192.0.2.1", "192.0.2.2")))
    with active_schema(FlowOptions(tunnel_id=True)), ebpf_ingest(
            interfaces=[b.ifname], netns=b.ns.name, direction="ingress",
            poll_interval_ms=100, decapsulate=TUNNELS[tunnel]) as seen:
        send_frames(a, (frame for _ts, frame, _len in built.frames()))
    assert seen.table() == built.truth.table()
    assert {int(t) for batch in seen.batches for t in batch.flows["tunnel_id"]} == {segment}
