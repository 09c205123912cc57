"""Differential replay: captures written by scapy and Wireshark's tools, truth from tshark.

The other pcap tests build their captures with ``tests/support/pcapgen.py`` and compare with
that writer's own ground truth, so a misreading shared by writer and parser passes. Here the
captures come from independent writers (scapy's ``PcapWriter``/``PcapNgWriter``, Wireshark's
``editcap``/``mergecap``) and the expected flows from tshark's dissection of the same file
(``tests/support/tshark_truth.py``): packets, bytes, TCP flags and first/last time per
5-tuple must match what the agent accounts, for every file format, link type and
encapsulation a real capture holds. Frames tshark finds no IP in must be the agent's
``non_ip``; IP headers nobody can read its ``trunc``.

Where the agent's documented semantics differ from a plain dissection, the test asserts the
documented behaviour and says so (tunnels without ``decapsulate``: the outer flow; SPB blocks
carry no timestamp: the agent dates them with the previous packet).
"""

from __future__ import annotations

import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    MIP6MH_BU,
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.layers.sctp import SCTP, SCTPChunkInit
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw
from scapy.utils import PcapNgWriter, PcapWriter

from netflow_agent.testing import build_agent, collecting_plugin_module
from tests.support import require_tool
from tests.support.pcapgen import nflog_tlv, pcapng_block
from tests.support.tshark_truth import FlowKey, Truth, tshark_flows, tshark_flows_by_interface

T0 = 1_765_000_000_123_456_789  # ns: not a whole microsecond, so precisions show
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


# --- traffic: what the captures carry, as IP packets --------------------------------------


def tcp_session(src: str, dst: str, sport: int, dport: int, v6: bool = False) -> list[Packet]:
    """A whole TCP session both ways: SYN, SYN/ACK, data, FIN, and an RST'd second one."""
    ip = IPv6 if v6 else IP
    fwd, rev = ip(src=src, dst=dst), ip(src=dst, dst=src)
    return [fwd / TCP(sport=sport, dport=dport, flags="S"),
            rev / TCP(sport=dport, dport=sport, flags="SA"),
            fwd / TCP(sport=sport, dport=dport, flags="A"),
            fwd / TCP(sport=sport, dport=dport, flags="PA") / Raw(b"G" * 300),
            rev / TCP(sport=dport, dport=sport, flags="PA") / Raw(b"H" * 1200),
            fwd / TCP(sport=sport, dport=dport, flags="FA"),
            rev / TCP(sport=dport, dport=sport, flags="FA"),
            fwd / TCP(sport=sport, dport=dport, flags="A"),
            fwd / TCP(sport=sport + 1, dport=dport, flags="S"),
            rev / TCP(sport=dport, dport=sport + 1, flags="RA")]


def ipv4_traffic() -> list[Packet]:
    """TCP, UDP with IP options, SCTP, UDP-Lite, DCCP, ICMP requests, replies and errors
    (quoting a header)."""
    a, b = "10.1.0.1", "10.1.0.2"
    dccp = bytes.fromhex("2328" "0016" "0500" "0000" "0000" "0000" "0001") + bytes(10)
    return [*tcp_session(a, b, 40000, 80),
            IP(src=a, dst=b) / SCTP(sport=2905, dport=2905) / SCTPChunkInit(),
            IP(src=a, dst=b, proto=136) / UDP(sport=5004, dport=5005) / Raw(b"l" * 12),
            IP(src=a, dst=b, proto=33) / Raw(dccp),
            IP(src=a, dst=b, options=[IPOption_RR(routers=["192.0.2.9"])])
            / UDP(sport=5353, dport=53) / Raw(b"q" * 33),
            IP(src=a, dst=b, options=[IPOption_RR(routers=["192.0.2.9", "192.0.2.10"])])
            / UDP(sport=5353, dport=53) / Raw(b"q" * 20),
            IP(src=a, dst=b) / ICMP(type=8, id=1) / Raw(b"p" * 56),
            IP(src=b, dst=a) / ICMP(type=0, id=1) / Raw(b"p" * 56),
            IP(src=b, dst=a) / ICMP(type=3, code=3) / IP(src=a, dst=b) / UDP(sport=9, dport=7),
            IP(src=b, dst=a) / ICMP(type=11, code=0) / IP(src=a, dst=b) / UDP(sport=9, dport=7)]


def ipv6_traffic() -> list[Packet]:
    """TCP, UDP behind hop-by-hop, routing and destination options, ICMPv6 of four types."""
    a, b = "fd00::1", "fd00::2"
    return [*tcp_session(a, b, 50000, 443, v6=True),
            IPv6(src=a, dst=b) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(addresses=["fd00::9"])
            / IPv6ExtHdrDestOpt() / UDP(sport=1000, dport=2000) / Raw(b"x" * 77),
            IPv6(src=a, dst=b) / IPv6ExtHdrDestOpt() / UDP(sport=1001, dport=2000) / Raw(b"y"),
            IPv6(src=a, dst=b) / ICMPv6EchoRequest(id=7) / Raw(b"e" * 32),
            IPv6(src=b, dst=a) / ICMPv6EchoReply(id=7) / Raw(b"e" * 32),
            IPv6(src=a, dst="ff02::1:ff00:2") / ICMPv6ND_NS(tgt=b),
            IPv6(src=b, dst=a) / ICMPv6ND_NA(tgt=b),
            IPv6(src=b, dst=a) / ICMPv6DestUnreach(code=4) / IPv6(src=a, dst=b)
            / UDP(sport=3, dport=4)]


def fragmented(reorder: bool) -> list[Packet]:
    """A UDP and an ICMP datagram over IPv4, a UDP one over IPv6, each in 3 fragments."""
    v4 = fragment(IP(src="10.2.0.1", dst="10.2.0.2", id=0x1234) / UDP(sport=6000, dport=7000)
                  / Raw(b"u" * 3000), 1400)
    icmp = fragment(IP(src="10.2.0.1", dst="10.2.0.2", id=0x1235) / ICMP(type=8)
                    / Raw(b"i" * 3000), 1400)
    v6 = fragment6(IPv6(src="fd02::1", dst="fd02::2") / IPv6ExtHdrFragment(id=77)
                   / UDP(sport=6001, dport=7001) / Raw(b"w" * 3000), 1280)
    out = []
    for frags in (v4, icmp, v6):
        frags = list(frags)
        if reorder:
            frags.reverse()
        out += frags
    return out


def mixed() -> list[Packet]:
    return [*ipv4_traffic(), *ipv6_traffic(), *fragmented(False)]


# --- link layers ----------------------------------------------------------------------------


def ethertype(ip: Packet) -> int:
    return 0x86DD if isinstance(ip, IPv6) else 0x0800


def af_bytes(ip: Packet, order: str, af6: int = 10) -> bytes:
    return struct.pack(order + "I", af6 if isinstance(ip, IPv6) else 2)


def nflog_frame(ip: Packet) -> bytes:
    """LINKTYPE_NFLOG as ``tcpdump -i nflog:5`` writes it: header, packet header, prefix,
    then the payload TLV."""
    family = 10 if isinstance(ip, IPv6) else 2
    return (struct.pack("!BBH", family, 0, 5) + nflog_tlv(1, struct.pack("!HBx", ethertype(ip), 3))
            + nflog_tlv(10, b"flows\0") + nflog_tlv(9, bytes(ip)))


def snap_frame(ip: Packet) -> bytes:
    """802.3 with a length, then LLC/SNAP with the EtherType."""
    body = b"\xaa\xaa\x03\0\0\0" + struct.pack("!H", ethertype(ip)) + bytes(ip)
    return bytes.fromhex("02000000000b02000000000a") + struct.pack("!H", len(body)) + body


#: name -> (linktype, frame(ip packet) -> bytes)
LINKS: dict[str, tuple[int, Any]] = {
    # short frames padded to Ethernet's minimum of 60 bytes, as a NIC receives them
    "ethernet": (1, lambda ip: bytes(Ether(src=MAC_A, dst=MAC_B) / ip).ljust(60, b"\0")),
    "802.1q": (1, lambda ip: bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=100, prio=5) / ip)
               .ljust(60, b"\0")),
    "qinq-88a8": (1, lambda ip: bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1AD(vlan=10)
                                      / Dot1Q(vlan=20) / ip)),
    "qinq-9100": (1, lambda ip: bytes(Ether(src=MAC_A, dst=MAC_B, type=0x9100)
                                      / Dot1Q(vlan=10) / Dot1Q(vlan=20) / ip)),
    "mpls-1": (1, lambda ip: bytes(Ether(src=MAC_A, dst=MAC_B) / MPLS(label=16, s=1) / ip)),
    "mpls-3": (1, lambda ip: bytes(Ether(src=MAC_A, dst=MAC_B) / MPLS(label=16, s=0)
                                   / MPLS(label=1000, s=0) / MPLS(label=1048575, s=1) / ip)),
    "vlan-mpls": (1, lambda ip: bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=7)
                                      / MPLS(label=3, s=1) / ip)),
    "pppoe": (1, lambda ip: bytes(Ether(src=MAC_A, dst=MAC_B) / PPPoE(sessionid=0x1234)
                                  / PPP(proto=0x57 if isinstance(ip, IPv6) else 0x21) / ip)),
    "sll": (113, lambda ip: bytes(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6,
                                              src=bytes.fromhex("02000000000a") + b"\0\0",
                                              proto=ethertype(ip)) / ip)),
    "sll2": (276, lambda ip: bytes(CookedLinuxV2(proto=ethertype(ip), ifindex=3, lladdrtype=1,
                                                 pkttype=0, lladdrlen=6,
                                                 src=bytes.fromhex("02000000000a") + b"\0\0")
                                   / ip)),
    "raw-101": (101, bytes),
    "raw-dlt12": (12, bytes),
    "raw-dlt14": (14, bytes),
    "null-le": (0, lambda ip: af_bytes(ip, "<", 24) + bytes(ip)),
    "null-be": (0, lambda ip: af_bytes(ip, ">", 30) + bytes(ip)),
    "loop": (108, lambda ip: af_bytes(ip, ">", 24) + bytes(ip)),
    "ppp": (9, lambda ip: bytes(PPP(proto=0x57 if isinstance(ip, IPv6) else 0x21) / ip)),
    "ppp-pfc": (9, lambda ip: (b"\x57" if isinstance(ip, IPv6) else b"\x21") + bytes(ip)),
    "c-hdlc": (104, lambda ip: b"\x0f\x00" + struct.pack("!H", ethertype(ip)) + bytes(ip)),
    "nflog": (239, nflog_frame),
    "llc-snap": (1, snap_frame),
    "ppp-hdlc": (50, lambda ip: b"\xff\x03"
                 + (b"\x00\x57" if isinstance(ip, IPv6) else b"\x00\x21") + bytes(ip)),
}


def write_pcap(path: Path, frames: list[tuple[int, bytes]], linktype: int,
               endianness: str = "", nano: bool = False) -> Path:
    """A classic pcap written by scapy: ``frames`` are ``(ts_ns, bytes)``."""
    with PcapWriter(str(path), linktype=linktype, endianness=endianness, nano=nano,
                    sync=True) as w:
        w.write_header(None)
        for ts, data in frames:
            sec, frac = divmod(ts, 10**9)
            w.write_packet(data, sec=sec, usec=frac if nano else frac // 1000)
    if linktype == 0:  # scapy takes linktype 0 (NULL) for "not given" and writes Ethernet
        with open(path, "r+b") as f:
            f.seek(20)
            f.write(struct.pack((endianness or "<") + "I", 0))
    return path


def framed(link: str, packets: list[Packet], start: int = T0) -> list[tuple[int, bytes]]:
    """Each packet behind the link header of ``link``, 1.000 001 ms apart."""
    _lt, frame = LINKS[link]
    return [(start + i * 1_000_001, frame(p)) for i, p in enumerate(packets)]


# --- the replay and the comparison ----------------------------------------------------------


def replay(tmp_path: Path, capture: Path, extra: str = "") -> tuple[dict, dict, dict]:
    """Replay ``capture`` in-process; (flows by key, ingest stats, core stats)."""
    agent = build_agent(f"[[ingest.pcap]]\npath = \"{capture}\"\n{extra}\n"
                        "[[export.collect]]\n", tmp_path, [collecting_plugin_module])
    agent.pipeline.run()
    stats = agent.pipeline.collect_stats()
    agent.finish()
    flows: dict[FlowKey, list[int]] = {}
    for r in agent["export.collect[0]"].flows:
        d = r.to_dict()
        key = (d["protocol"], d["src_addr"], d["dst_addr"], d["src_port"], d["dst_port"])
        got = flows.setdefault(key, [0, 0, 0, r.start_ns, r.end_ns])
        got[0] += r.packets
        got[1] += r.octets
        got[2] |= r.tcp_flags
        got[3], got[4] = min(got[3], r.start_ns), max(got[4], r.end_ns)
    return flows, stats["ingest.pcap[0]"], stats["core"]


def assert_same_flows(truth: Truth, flows: dict, times: bool = True) -> None:
    """Packets, bytes and TCP flags per 5-tuple, and first/last timestamps, as tshark says."""
    assert {k: (v[0], v[1]) for k, v in flows.items()} == truth.table()
    assert {k: v[2] for k, v in flows.items()} == {k: f.tcp_flags
                                                   for k, f in truth.flows.items()}
    if times:
        assert {k: (v[3], v[4]) for k, v in flows.items()} == {
            k: (f.first_ns, f.last_ns) for k, f in truth.flows.items()}


def check(tmp_path: Path, capture: Path, extra: str = "",
          decapsulate: frozenset[str] = frozenset(), times: bool = True,
          truth: Truth | None = None) -> tuple[Truth, dict]:
    """Replay and compare with tshark (``truth``: tshark's already, see :class:`Batch`);
    return the truth and the ingest's counters."""
    truth = truth or tshark_flows(capture, decapsulate)
    assert truth.flows, "tshark found no flow: the capture is not what the test meant"
    flows, ingest, core = replay(tmp_path, capture, extra)
    assert_same_flows(truth, flows, times)
    assert ingest["packets"] == len(truth.non_ip) + len(truth.bad_ip) + sum(
        f.packets for f in truth.flows.values())
    assert ingest["non_ip"] == len(truth.non_ip)
    assert core["trunc"] == len(truth.bad_ip)
    return truth, ingest


Frames = list[tuple[int, bytes]]


def write_pcapng(path: Path, captures: list[tuple[int, Frames, bool]]) -> Path:
    """One pcapng section, an interface per ``(linktype, frames, nano)`` capture (its link
    type; timestamps in ns with ``nano``, else in µs: a classic pcap's), the captures' frames
    one capture after the other."""
    out = pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1), order="<")
    for linktype, _frames, nano in captures:
        resol = struct.pack("<HHB3x", 9, 1, 9) + bytes(4) if nano else b""  # if_tsresol
        out += pcapng_block(1, struct.pack("<HHI", linktype, 0, 262144) + resol, order="<")
    for interface, (_linktype, frames, nano) in enumerate(captures):
        for ts, frame in frames:
            ticks = ts if nano else ts // 1000
            out += pcapng_block(6, struct.pack("<IIIII", interface, ticks >> 32,
                                              ticks & 0xFFFFFFFF, len(frame), len(frame))
                          + frame, order="<")
    path.write_bytes(out)
    return path


class Batch:
    """Captures whose truth comes from one tshark run (tshark's start-up, ~0.6 s, was most of
    each case's time): each is an interface of one pcapng; a case replays its own classic
    pcap of the same frames and compares with its interface's flows."""

    def __init__(self, directory: Path, captures: dict[str, tuple[int, Frames, bool]]):
        self.captures = captures
        self.path = write_pcapng(directory / "batch.pcapng", list(captures.values()))
        self._truths: dict[frozenset[str], dict[int, Truth]] = {}

    def pcap(self, directory: Path, name: str, endianness: str = "") -> Path:
        """The capture ``name`` as a classic pcap (the file the case replays)."""
        linktype, frames, nano = self.captures[name]
        return write_pcap(directory / "c.pcap", frames, linktype, endianness, nano)

    def truth(self, name: str, decapsulate: frozenset[str] = frozenset()) -> Truth:
        if decapsulate not in self._truths:
            self._truths[decapsulate] = tshark_flows_by_interface(self.path, decapsulate)
        return self._truths[decapsulate].get(list(self.captures).index(name), Truth())


def tunnel_packets(tunnel: str) -> list[Packet]:
    """The inner traffic through ``tunnel`` over IPv4 and IPv6, and one plain packet between
    the endpoints (not a tunnel)."""
    _kind, wrap = TUNNELS[tunnel]
    packets = []
    for outer in (IP(src="192.0.2.1", dst="192.0.2.2"),
                  IPv6(src="2001:db8::1", dst="2001:db8::2")):
        packets += [wrap(outer.copy(), p) for p in inner_traffic()]
    packets.append(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=2)
                   / Raw(b"n"))
    return packets


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Batch:
    """Every link type, the single-version raw ones, every tunnel, Ethernet with ns times,
    the IPv6 mobility/AH, fragment and non-IP captures, in one batch."""
    captures = {f"link {link}": (linktype, framed(link, mixed()), False)
                for link, (linktype, _frame) in LINKS.items()}
    captures["ethernet-ns"] = (1, framed("ethernet", mixed()), True)
    captures["raw-228"] = (228, framed("raw-101", ipv4_traffic()), False)
    captures["raw-229"] = (229, framed("raw-101", ipv6_traffic()), False)
    for tunnel in TUNNELS:
        captures[f"tunnel {tunnel}"] = (1, framed("ethernet", tunnel_packets(tunnel)), False)
    captures["mobility"] = (1, framed("ethernet", mobility_and_ah()), False)
    for reorder in (False, True):
        captures[f"fragments {reorder}"] = (1, framed("ethernet", fragmented(reorder)), False)
    captures["non-ip"] = (1, with_non_ip_frames(framed("ethernet", mixed())), False)
    return Batch(tmp_path_factory.mktemp("batch"), captures)


# --- file formats ---------------------------------------------------------------------------


@pytest.mark.parametrize("endianness,nano", [("<", False), (">", False), ("<", True),
                                             (">", True)],
                         ids=["le-us", "be-us", "le-ns", "be-ns"])
def test_classic_pcap_in_both_byte_orders_and_resolutions(tmp_path, batch, endianness, nano):
    name = "ethernet-ns" if nano else "link ethernet"
    check(tmp_path, batch.pcap(tmp_path, name, endianness), truth=batch.truth(name))


@pytest.mark.parametrize("order", ["<", ">"], ids=["le", "be"])
def test_modified_pcap_magic_with_24_byte_record_headers(tmp_path, order):
    """Kuznetzov's patched libpcap (magic 0xA1B2CD34, old Red Hat/SuSE tcpdump): each record
    header has 8 more bytes (ifindex, protocol, packet type). tshark reads it in either byte
    order (a big-endian host wrote the magic, and every field, big-endian); so must we."""
    frames = framed("ethernet", mixed())
    out = struct.pack(order + "IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)
    for n, (ts, frame) in enumerate(frames):
        sec, ns = divmod(ts, 10**9)
        out += struct.pack(order + "IIIIIHBx", sec, ns // 1000, len(frame), len(frame),
                           2 + n % 2, 0x0800, 0) + frame
    path = tmp_path / "c.pcap"
    path.write_bytes(out)
    check(tmp_path, path)


def scapy_pcapng(path: Path, frames: list[tuple[int, Packet]]) -> Path:
    """A pcapng by scapy: one IDB per ``sniffed_on`` name, each with its packet's link type."""
    with PcapNgWriter(str(path)) as w:
        for ts, pkt in frames:
            pkt.time = ts / 1e9
            w.write(pkt)
    return path


def test_pcapng_with_interfaces_of_different_link_types(tmp_path):
    """Ethernet, SLL and SLL2 interfaces interleaved in one section (scapy's IDB per name)."""
    frames = []
    for i, ip in enumerate(mixed()):
        kind = i % 3
        if kind == 0:
            pkt = Ether(src=MAC_A, dst=MAC_B) / ip
        elif kind == 1:
            pkt = CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, proto=ethertype(ip)) / ip
        else:
            pkt = CookedLinuxV2(proto=ethertype(ip), lladdrtype=1, lladdrlen=6) / ip
        pkt.sniffed_on = ["eth0", "any", "any2"][kind]
        frames.append((T0 + i * 1_000_000, pkt))
    check(tmp_path, scapy_pcapng(tmp_path / "c.pcapng", frames))


@pytest.mark.parametrize("order", ["<", ">"], ids=["le", "be"])
@pytest.mark.parametrize("offset", [1_765_000_000, -86_400], ids=["ahead", "behind"])
def test_pcapng_interface_timestamp_offset(tmp_path, order, offset):
    """if_tsoffset (IDB option 14, a signed 64-bit count of seconds in the section's byte
    order) adds whole seconds to the interface's timestamps: a capture whose clock counted
    from boot (positive), or one whose clock ran ahead (negative). tshark applies it, the
    flows' first and last times must too."""
    first_ns = 1_765_086_400_123_456_789
    frames = framed("ethernet", ipv4_traffic(), first_ns - offset * 10**9)
    shb = pcapng_block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1), order=order)
    opts = struct.pack(order + "HHB3x", 9, 1, 9) + struct.pack(order + "HHq", 14, 8, offset)
    idb = pcapng_block(1, struct.pack(order + "HHI", 1, 0, 65535) + opts + bytes(4), order=order)
    out = shb + idb
    for ts, frame in frames:
        out += pcapng_block(6, struct.pack(order + "IIIII", 0, ts >> 32, ts & 0xFFFFFFFF,
                                            len(frame), len(frame)) + frame, order=order)
    path = tmp_path / "c.pcapng"
    path.write_bytes(out)
    truth, _ingest = check(tmp_path, path)
    assert min(f.first_ns for f in truth.flows.values()) == first_ns


def test_pcapng_sections_resolutions_and_simple_and_obsolete_blocks(tmp_path):
    """Several sections (the second from Wireshark's mergecap of a nanosecond raw-IP capture
    and a microsecond Ethernet one: two IDBs with different if_tsresol), then a section in
    big-endian byte order with an if_tsresol of 2^-20 s, an obsolete packet block and a
    simple packet block.

    Documented difference: an SPB has no timestamp; the agent dates it with the previous
    packet of the capture (reader.py), tshark with none. Its flow is compared without times.
    """
    editcap, mergecap = require_tool("editcap"), require_tool("mergecap")
    v4, v6 = ipv4_traffic(), ipv6_traffic()
    write_pcap(tmp_path / "eth.pcap", framed("ethernet", v4), 1)
    write_pcap(tmp_path / "raw.pcap", framed("raw-101", v6, T0 + 500_001), 101,
                     nano=True)
    for name in ("eth", "raw"):
        subprocess.run([editcap, "-F", "pcapng", str(tmp_path / f"{name}.pcap"),
                        str(tmp_path / f"{name}.pcapng")], check=True, capture_output=True)
    subprocess.run([mergecap, "-F", "pcapng", "-w", str(tmp_path / "merged.pcapng"),
                    str(tmp_path / "eth.pcapng"), str(tmp_path / "raw.pcapng")],
                   check=True, capture_output=True)
    first = scapy_pcapng(tmp_path / "first.pcapng",
                         [(T0 - 10**9 + i * 1000, Ether() / p)
                          for i, p in enumerate(fragmented(True))])
    last_ts = T0 + 2 * 10**9
    big = big_endian_section(last_ts, [bytes(Ether(src=MAC_A, dst=MAC_B) / p)
                                       for p in tcp_session("10.9.0.1", "10.9.0.2", 1, 2)],
                             spb=bytes(Ether() / IP(src="10.9.9.9", dst="10.9.0.2")
                                       / UDP(sport=7, dport=9) / Raw(b"s" * 10)))
    path = tmp_path / "c.pcapng"
    path.write_bytes(first.read_bytes() + (tmp_path / "merged.pcapng").read_bytes() + big)
    truth = tshark_flows(path)
    spb_key = (17, "10.9.9.9", "10.9.0.2", 7, 9)
    assert spb_key in truth.flows
    flows, ingest, _core = replay(tmp_path, path)
    assert_same_flows(truth, flows, times=False)
    del flows[spb_key], truth.flows[spb_key]
    assert_same_flows(truth, flows)
    assert ingest["packets"] == 3 * 3 + len(v4) + len(v6) + 10 + 1


def big_endian_section(ts_ns: int, frames: list[bytes], spb: bytes) -> bytes:
    """SHB (big endian), IDB (Ethernet, if_tsresol 2^-20 s), an OPB per frame, then an SPB."""
    order = ">"
    shb = pcapng_block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1), order=order)
    opts = struct.pack(">HHB3x", 9, 1, 0x80 | 20) + struct.pack(">HH", 0, 0)
    idb = pcapng_block(1, struct.pack(">HHI", 1, 0, 65535) + opts, order=order)
    out = shb + idb
    for i, frame in enumerate(frames):
        ticks = ((ts_ns + i * 1_000_000) << 20) // 10**9
        ticks_ns = ticks * 10**9 >> 20
        assert ticks_ns <= ts_ns + i * 1_000_000
        out += pcapng_block(2, struct.pack(">HHIIII", 0, 0, ticks >> 32, ticks & 0xFFFFFFFF,
                                            len(frame), len(frame)) + frame, order=order)
    return out + pcapng_block(3, struct.pack(">I", len(spb)) + spb, order=order)


def mobility_and_ah() -> list[Packet]:
    """IPv6 Mobility Headers (one behind destination options), AH in IPv6 and in IPv4."""
    a, b = "fd00::1", "fd00::2"
    return [IPv6(src=a, dst=b) / MIP6MH_BU(seq=1),
            IPv6(src=a, dst=b) / IPv6ExtHdrDestOpt() / MIP6MH_BU(seq=2),
            IPv6(src=a, dst=b, nh=51) / AH(nh=17, payloadlen=4, spi=9, icv=b"\0" * 12)
            / UDP(sport=500, dport=4500) / Raw(b"k" * 10),
            IP(src="10.0.0.1", dst="10.0.0.2") / AH(nh=17, payloadlen=4, icv=b"\0" * 12)
            / UDP(sport=500, dport=4500)]


def test_ipv6_mobility_and_authentication_headers(tmp_path, batch):
    """The Mobility Header (RFC 6275) is the upper layer, its Payload Proto always 59 (no
    next header): the flow's protocol is 135, as tshark and ipt_NETFLOW say, not 59. AH
    (RFC 4302) is walked to the transport behind it in IPv6, as ipt_NETFLOW does."""
    a, b = "fd00::1", "fd00::2"
    truth, _ingest = check(tmp_path, batch.pcap(tmp_path, "mobility"),
                           truth=batch.truth("mobility"))
    assert (135, a, b, 0, 0) in truth.flows and (17, a, b, 500, 4500) in truth.flows
    assert (51, "10.0.0.1", "10.0.0.2", 0, 0) in truth.flows  # IPv4 AH: not walked


def test_segmentation_offload_packets_with_total_length_0(tmp_path):
    """A capture taken on a host whose NIC segments TCP (TSO) holds the outgoing super-
    packets with an IPv4 total length of 0; tshark (and Wireshark) then take the captured
    length as the packet's. The agent must account them likewise, not drop them as
    truncated: they can be most of a sender's bytes."""
    frames = []
    for n, size in enumerate((3000, 9000, 64000)):
        frame = bytearray(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src="10.3.0.1", dst="10.3.0.2")
                                / TCP(sport=40000, dport=443, flags="PA")
                                / Raw(b"t" * size)))
        frame[16:18] = b"\0\0"  # IPv4 total length
        frames.append((T0 + n * 1000, bytes(frame)))
    frames += framed("ethernet", tcp_session("10.3.0.1", "10.3.0.2", 40000, 443), T0 + 10**6)
    truth, _ingest = check(tmp_path, write_pcap(tmp_path / "c.pcap", frames, 1))
    assert truth.flows[(6, "10.3.0.1", "10.3.0.2", 40000, 443)].octets > 76000


# --- link types and encapsulations ----------------------------------------------------------


@pytest.mark.parametrize("link", LINKS)
def test_every_link_type_and_encapsulation(tmp_path, batch, link):
    name = f"link {link}"
    check(tmp_path, batch.pcap(tmp_path, name), truth=batch.truth(name))


@pytest.mark.parametrize("name", ["raw-228", "raw-229"], ids=["ipv4-228", "ipv6-229"])
def test_single_version_raw_link_types(tmp_path, batch, name):
    check(tmp_path, batch.pcap(tmp_path, name), truth=batch.truth(name))


@pytest.mark.parametrize("reorder", [False, True], ids=["in-order", "out-of-order"])
def test_fragments_belong_to_their_datagram(tmp_path, batch, reorder):
    """tshark's reassembly says which datagram each fragment is of; each fragment counts as a
    packet of its own length in that datagram's flow (``fragments = "track"``)."""
    name = f"fragments {reorder}"
    _truth, ingest = check(tmp_path, batch.pcap(tmp_path, name), truth=batch.truth(name))
    assert ingest["frag_held"] == (2 * 3 if reorder else 0)


def test_snaplen_shorter_than_the_packets_keeps_the_ip_lengths(tmp_path):
    """editcap -s cuts every frame after its TCP/UDP ports (112 bytes: a VLAN tag, IPv6 and
    its extension headers, the ports); bytes stay the IP total length."""
    big = [*ipv4_traffic(), *ipv6_traffic()]
    whole = write_pcap(tmp_path / "whole.pcap", framed("802.1q", big), 1)
    cut = tmp_path / "c.pcap"
    subprocess.run([require_tool("editcap"), "-s", "112", str(whole), str(cut)], check=True,
                   capture_output=True)
    truth, _ingest = check(tmp_path, cut)
    assert truth.table() == tshark_flows(whole).table()


def with_non_ip_frames(frames: Frames) -> Frames:
    """``frames`` with ARP (two, one VLAN-tagged), LLDP and three unreadable IP headers (IHL
    3, IPv4 and IPv6 cut short) between them."""
    eth = Ether(src=MAC_A, dst=MAC_B)
    odd = [bytes(eth / ARP(psrc="10.1.0.1", pdst="10.1.0.2")),
           bytes(Ether(src=MAC_A, dst="01:80:c2:00:00:0e", type=0x88CC)
                 / Raw(bytes.fromhex("0207046c6c64700404050331000602007800000000"))),
           bytes(eth / Dot1Q(vlan=5) / ARP()),
           bytes(Ether(src=MAC_A, dst=MAC_B, type=0x0800)) + bytes.fromhex("4300001c"),  # IHL 3
           bytes(Ether(src=MAC_A, dst=MAC_B, type=0x0800)) + bytes(IP(dst="10.1.0.2"))[:12],
           bytes(Ether(src=MAC_A, dst=MAC_B, type=0x86DD)) + bytes(IPv6())[:24]]
    frames = list(frames)
    for i, frame in enumerate(odd):
        frames.insert(3 * i + 1, (frames[3 * i][0] + 1, frame))
    return frames


def test_non_ip_frames_and_unreadable_ip_headers_are_counted_and_skipped(tmp_path, batch):
    truth, ingest = check(tmp_path, batch.pcap(tmp_path, "non-ip"), truth=batch.truth("non-ip"))
    assert len(truth.non_ip) == 3 and len(truth.bad_ip) == 3
    assert ingest["non_ip_reasons"] == {"ethertype 0x0806": 2, "ethertype 0x88cc": 1}


# --- tunnels ----------------------------------------------------------------------------------


def inner_traffic() -> list[Packet]:
    a, b = "172.16.0.1", "172.16.0.2"
    return [*tcp_session(a, b, 33000, 22)[:6],
            IP(src=a, dst=b) / UDP(sport=4000, dport=53) / Raw(b"d" * 40),
            IP(src=a, dst=b) / ICMP(type=8) / Raw(b"p" * 20),
            *tcp_session("fd10::1", "fd10::2", 33001, 22, v6=True)[:4],
            IPv6(src="fd10::1", dst="fd10::2") / ICMPv6EchoRequest() / Raw(b"e" * 8)]


#: name -> (decapsulate name, outer packet header(s) in front of an inner IP packet)
TUNNELS: dict[str, tuple[str, Any]] = {
    "gre": ("gre", lambda o, i: o / GRE(proto=ethertype(i)) / i),
    "gre-key": ("gre", lambda o, i: o / GRE(key_present=1, key=42, seqnum_present=1,
                                            sequence_number=5, proto=ethertype(i)) / i),
    "gre-teb": ("gre", lambda o, i: o / GRE(proto=0x6558) / Ether(src=MAC_A, dst=MAC_B) / i),
    "gre-mpls": ("gre", lambda o, i: o / GRE(chksum_present=1, proto=0x8847)
                 / MPLS(label=5, s=1) / i),
    "vxlan": ("vxlan", lambda o, i: o / UDP(sport=49152, dport=4789) / VXLAN(vni=42)
              / Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=9) / i),
    "geneve": ("geneve", lambda o, i: o / UDP(sport=49153, dport=6081)
               / GENEVE(vni=7, proto=0x6558) / Ether(src=MAC_A, dst=MAC_B) / i),
    "geneve-options": ("geneve", lambda o, i: o / UDP(sport=49155, dport=6081) / GENEVE(
        vni=9, proto=0x6558, options=[GeneveOptions(classid=0x0102, type=0x80, data=b"abcd")])
        / Ether(src=MAC_A, dst=MAC_B) / i),
    "geneve-ip": ("geneve", lambda o, i: o / UDP(sport=49154, dport=6081)
                  / GENEVE(vni=8, proto=ethertype(i)) / i),
    "ipip": ("ipip", lambda o, i: o / i),
}


@pytest.mark.parametrize("decap", [False, True], ids=["outer", "decapsulated"])
@pytest.mark.parametrize("tunnel", TUNNELS)
def test_tunnels_with_and_without_decapsulate(tmp_path, batch, tunnel, decap):
    """IPv4 and IPv6 outer headers. Without ``decapsulate`` the outer flow (the tunnel
    endpoints) is what is accounted (ipt_NETFLOW's behaviour, although tshark dissects the
    inner packet too); with it the inner flow, with the inner IP length."""
    kind, _wrap = TUNNELS[tunnel]
    name = f"tunnel {tunnel}"
    kinds = frozenset({kind}) if decap else frozenset()
    extra = f'decapsulate = ["{kind}"]' if decap else ""
    _truth, ingest = check(tmp_path, batch.pcap(tmp_path, name), extra, kinds,
                           truth=batch.truth(name, kinds))
    if decap:
        packets = len(batch.captures[name][1])
        assert (ingest["decapsulated"], ingest["decap_failed"]) == (packets - 1, 0)


# --- the whole export path, read back by independent decoders -------------------------------


def _ms(ns: int) -> int:
    return ns // 1_000_000


def _nfdump_ms(text: str) -> int:
    """nfdump's ``2025-12-06T05:46:40.123`` as ms since the epoch: local time, which
    :func:`tests.support.collectors.nfdump_flows` makes UTC (``TZ=UTC``)."""
    return round(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def _tshark_ms(text: str) -> int:
    """tshark's ``Dec  6, 2025 05:46:40.123000000 UTC`` as ms since the epoch (UTC:
    :func:`tests.support.collectors.tshark_decode` runs tshark with ``TZ=UTC``)."""
    assert text.endswith(" UTC"), text
    stamp, _, frac = text.removesuffix(" UTC").rpartition(".")
    when = datetime.strptime(" ".join(stamp.split()), "%b %d, %Y %H:%M:%S")
    return int(when.replace(tzinfo=UTC).timestamp()) * 1000 + int(frac[:3])


def test_exported_v9_ipfix_and_v5_decode_to_the_captures_flows(tmp_path):
    """One capture (TCP sessions, UDP, ICMP/ICMPv6, fragments, several link layers in a
    pcapng) through the cache and three exporters: nfdump reads the v9 export, tshark the
    IPFIX one and the PyPI ``netflow`` package the v5 one (IPv4 only). Each shows tshark's
    flows of the capture: addresses, ports (ICMP type/code), protocol, packets, octets, TCP
    flags, and first/last as the capture's timestamps to the millisecond (v9 and IPFIX)."""
    from netflow_agent.testing import build_agent as build
    from tests.support.collectors import (
        Nfcapd,
        UdpSink,
        cflow_records,
        netflow_decode,
        netflow_records,
        tshark_decode,
    )

    frames = []
    for i, ip in enumerate(mixed()):  # (tshark reassembles IPv4 per VLAN: one link each)
        v6 = isinstance(ip, IPv6)
        pkt = (CookedLinuxV2(proto=0x86DD, lladdrtype=1, lladdrlen=6) / ip) if v6 else \
            (Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=3) / ip)
        pkt.sniffed_on = "any" if v6 else "vlan3"
        frames.append((T0 + i * 7_654_321, pkt))
    path = scapy_pcapng(tmp_path / "c.pcapng", frames)
    truth = tshark_flows(path)
    with UdpSink() as ipfix, UdpSink() as v5, Nfcapd(tmp_path / "nfcapd") as nfcapd:
        agent = build(f'[[ingest.pcap]]\npath = "{path}"\n'
                      f'[[export.netflow]]\nprotocol = 9\n'
                      f'destination = ["127.0.0.1:{nfcapd.port}"]\n'
                      f'[[export.netflow]]\nprotocol = 5\ndestination = ["{v5.endpoint}"]\n'
                      f'[[export.ipfix]]\ndestination = ["{ipfix.endpoint}"]\n', tmp_path, [])
        agent.pipeline.run()
        agent.finish()
        flows = len(truth.flows)
        ipfix_data = ipfix.wait_for(lambda got: len(cflow_records(
            tshark_decode(got, ipfix.port))) >= flows)
        v4 = sum(1 for k in truth.flows if ":" not in k[1])
        v5_data = v5.wait_for(lambda got: len(netflow_decode(got, audit=False)[1]) >= v4)
        rows = nfcapd.flows()

    want = {k: (f.packets, f.octets, f.tcp_flags, _ms(f.first_ns), _ms(f.last_ns))
            for k, f in truth.flows.items()}
    assert {(r["proto"], r["src"], r["dst"], r["sport"], r["dport"]):
            (r["packets"], r["bytes"], r["tcp_flags"], _nfdump_ms(r["first"]),
             _nfdump_ms(r["last"])) for r in rows} == want

    got_ipfix = {}
    for r in cflow_records(tshark_decode(ipfix_data, ipfix.port)):
        v6 = "cflow.srcaddrv6" in r
        if "cflow.icmp_ipv6_type" in r:  # icmpTypeCodeIPv6, as tshark splits it
            dport = int(r["cflow.icmp_ipv6_type"]) << 8 | int(r["cflow.icmp_ipv6_code"])
        elif "cflow.icmp_type_code_ipv4" in r:
            dport = int(r["cflow.icmp_type_code_ipv4"], 16)
        else:
            dport = int(r.get("cflow.dstport", 0))
        key = (int(r["cflow.protocol"]), r["cflow.srcaddrv6" if v6 else "cflow.srcaddr"],
               r["cflow.dstaddrv6" if v6 else "cflow.dstaddr"], int(r.get("cflow.srcport", 0)),
               dport)
        got_ipfix[key] = (int(r["cflow.packets"]), int(r["cflow.octets"]),
                          int(r.get("cflow.tcpflags", "0"), 16),
                          _tshark_ms(r["cflow.abstimestart"]), _tshark_ms(r["cflow.abstimeend"]))
    assert got_ipfix == want

    got_v5 = {(r["proto"], r["src"], r["dst"], r["sport"], r["dport"]):
              (r["packets"], r["bytes"], r["tcp_flags"])
              for r in netflow_records(netflow_decode(v5_data, audit=False)[1])}
    assert got_v5 == {k: v[:3] for k, v in want.items() if ":" not in k[1]}
