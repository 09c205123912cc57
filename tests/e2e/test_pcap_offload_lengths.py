"""Packets whose IP length field says 0, replayed from captures: what their bytes are.

An IPv4 total length of 0 is how a capture taken on a TSO sender holds its super-packets, and
how the kernel writes a BIG TCP packet over 65,535 bytes; an IPv6 payload length of 0 with a
payload is IPv6 BIG TCP, or an RFC 2675 jumbogram whose hop-by-hop Jumbo Payload option holds
the length. The bytes of such a packet (ipt_NETFLOW's: the length of the IP packet on the
wire) are the pcap record's original length less the link header, as Wireshark reads them,
not the snap length; the Jumbo option wins when present. NFLOG (live, or LINKTYPE_NFLOG
captures) carries no original length: there such a packet is counted as truncated.

Captures are built in ``tmp_path``; tshark is the oracle where it reads a length.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop, Jumbo
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw
from scapy.utils import PcapWriter

from netflow_agent.testing import build_agent, collecting_plugin_module
from tests.support import require_tool
from tests.support.pcapgen import nflog_tlv, pcapng_block
from tests.support.tshark_truth import FlowKey, tshark_flows

T0 = 1_765_000_000_000_000_000
SNAP = 96
A4, B4, A6, B6 = "10.7.0.1", "10.7.0.2", "fd00:7::1", "fd00:7::2"


def _eth() -> Ether:
    return Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b")


def tso4(payload: int) -> bytes:
    """An Ethernet/IPv4/TCP super-packet with total length 0."""
    frame = bytearray(bytes(_eth() / IP(src=A4, dst=B4) / TCP(sport=40000, dport=443,
                                                              flags="PA")
                            / Raw(b"t" * payload)))
    frame[16:18] = b"\0\0"
    return bytes(frame)


def big6(payload: int) -> bytes:
    """An Ethernet/IPv6/TCP BIG TCP packet: payload length 0, no Jumbo option."""
    frame = bytearray(bytes(_eth() / IPv6(src=A6, dst=B6) / TCP(sport=40001, dport=443,
                                                                flags="PA")
                            / Raw(b"t" * payload)))
    frame[18:20] = b"\0\0"
    return bytes(frame)


def jumbo6(payload: int) -> tuple[bytes, int]:
    """The first bytes of an RFC 2675 jumbogram and its length on the wire."""
    jumbo = 8 + 20 + payload  # everything after the fixed header
    ip = (IPv6(src=A6, dst=B6, plen=0)
          / IPv6ExtHdrHopByHop(options=[Jumbo(jumboplen=jumbo)])
          / TCP(sport=40002, dport=443, flags="A"))
    return bytes(_eth() / ip), 14 + 40 + jumbo


def write(path: Path, records: list[tuple[bytes, int]], ng: bool = False) -> Path:
    """An Ethernet capture of ``(packet bytes, original length)`` records, each cut to
    :data:`SNAP` bytes: classic pcap (scapy) or pcapng (one SHB, IDB and EPB per record)."""
    if ng:
        out = pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
        out += pcapng_block(1, struct.pack("<HHI", 1, 0, SNAP))
        for n, (data, wirelen) in enumerate(records):
            us = (T0 + n * 1000) // 1000
            out += pcapng_block(6, struct.pack("<IIIII", 0, us >> 32, us & 0xFFFFFFFF,
                                         len(data[:SNAP]), wirelen) + data[:SNAP])
        path.write_bytes(out)
        return path
    with PcapWriter(str(path), linktype=1, sync=True) as w:
        w.write_header(None)
        for n, (data, wirelen) in enumerate(records):
            sec, ns = divmod(T0 + n * 1000, 10**9)
            w.write_packet(data[:SNAP], sec=sec, usec=ns // 1000, wirelen=wirelen)
    return path


def replay(tmp_path: Path, capture: Path) -> tuple[dict[FlowKey, tuple[int, int]], dict]:
    """Replay ``capture``; ``{5-tuple: (packets, bytes)}`` and the core counters."""
    agent = build_agent(f"[[ingest.pcap]]\npath = \"{capture}\"\n[[export.collect]]\n",
                        tmp_path, [collecting_plugin_module])
    agent.pipeline.run()
    stats = agent.pipeline.collect_stats()
    agent.finish()
    flows: dict[FlowKey, tuple[int, int]] = {}
    for r in agent["export.collect[0]"].flows:
        d = r.to_dict()
        key = (d["protocol"], d["src_addr"], d["dst_addr"], d["src_port"], d["dst_port"])
        packets, octets = flows.get(key, (0, 0))
        flows[key] = (packets + r.packets, octets + r.octets)
    return flows, stats["core"]


@pytest.mark.parametrize("ng", [False, True], ids=["pcap", "pcapng"])
def test_a_tso_frame_cut_by_the_snap_length_counts_its_wire_length(tmp_path, ng):
    """A 9054-byte Ethernet TSO frame cut to 96 bytes: tshark reads ip.len 9040 (frame
    length less 14), and so must the agent; it accounted the 82 bytes captured."""
    frames = [tso4(9000), tso4(60_000)]
    capture = write(tmp_path / "c.pcap", [(f, len(f)) for f in frames], ng)
    truth = tshark_flows(capture)
    flows, core = replay(tmp_path, capture)
    key = (6, A4, B4, 40000, 443)
    assert truth.table() == {key: (2, 9040 + 60_040)}
    assert flows == truth.table()
    assert core["trunc"] == 0


@pytest.mark.parametrize("ng", [False, True], ids=["pcap", "pcapng"])
def test_an_original_length_over_512k_is_truncated_not_4_gib(tmp_path, ng):
    """A corrupt record whose original length is 0xFFFFFFFF made a length-0 packet worth
    ~4 GiB: beyond 512 KiB (no Linux skb is longer) it counts in trunc; a plausible one
    beside it is still its wire length, and a whole header's length is still its own."""
    tso, big = tso4(9000), big6(9000)
    whole = bytes(_eth() / IP(src=A4, dst=B4) / TCP(sport=40003, dport=443) / Raw(b"t" * 10))
    capture = write(tmp_path / "c.pcap", [(tso, 0xFFFF_FFFF), (big, 0xFFFF_FFFF),
                                          (tso, 14 + 512 * 1024), (tso, 15 + 512 * 1024),
                                          (whole, 0xFFFF_FFFF)], ng)
    flows, core = replay(tmp_path, capture)
    assert flows == {(6, A4, B4, 40000, 443): (1, 512 * 1024),
                     (6, A4, B4, 40003, 443): (1, 20 + 20 + 10)}
    assert core["trunc"] == 3


def test_ipv6_big_tcp_cut_by_the_snap_length_counts_its_wire_length(tmp_path):
    """IPv6 payload length 0 without a Jumbo option (Linux IPv6 BIG TCP): the original
    length less the link header (tshark has no length for it: 'maybe TSO'); it was 40."""
    frame = big6(9000)
    flows, core = replay(tmp_path, write(tmp_path / "c.pcap", [(frame, len(frame))]))
    assert flows == {(6, A6, B6, 40001, 443): (1, len(frame) - 14)}
    assert core["trunc"] == 0


def test_an_ipv6_jumbogram_counts_its_jumbo_payload_length(tmp_path):
    """RFC 2675: the hop-by-hop Jumbo Payload option holds the length (tshark's
    ipv6.opt.jumbo + 40), even when the record's original length says otherwise."""
    head, wirelen = jumbo6(70_000)
    capture = write(tmp_path / "c.pcap", [(head, wirelen), (head, wirelen + 4)])
    tshark = require_tool("tshark")
    out = subprocess.run([tshark, "-n", "-r", str(capture), "-T", "fields", "-e",
                          "ipv6.opt.jumbo"], capture_output=True, text=True, check=True)
    jumbo = [int(v) for v in out.stdout.split()]
    assert jumbo == [8 + 20 + 70_000] * 2
    flows, core = replay(tmp_path, capture)
    assert flows == {(6, A6, B6, 40002, 443): (2, 2 * (40 + jumbo[0]))}
    assert core["trunc"] == 0


def nflog(ip: bytes) -> bytes:
    """LINKTYPE_NFLOG as ``tcpdump -i nflog:5`` writes it, the payload TLV last."""
    return (struct.pack("!BBH", 2, 0, 5) + nflog_tlv(1, struct.pack("!HBx", 0x0800, 3), pad=b"\x55")
            + nflog_tlv(9, ip, pad=b"\x55"))


def _ip4(pkt: Packet, total: int | None = None) -> bytes:
    data = bytearray(bytes(pkt))
    if total is not None:
        data[2:4] = struct.pack("!H", total)
    return bytes(data)


def test_nflog_link_type_bounds_the_packet_by_its_payload_tlv(tmp_path):
    """LINKTYPE_NFLOG: the IP packet ends where the payload TLV does, not at its 0-3 padding
    bytes. A total length of 0 there was accounted with the padding (9041 -> 9044); NFLOG
    copies no original length, so it is counted as truncated, as the live NFLOG ingest does.
    A copy cut inside the TCP ports reads no port from the padding."""
    big = _ip4(IP(src=A4, dst=B4) / TCP(sport=40000, dport=443) / Raw(b"t" * 9001), total=0)
    cut = _ip4(IP(src=A4, dst="10.7.0.3") / TCP(sport=40003, dport=443))[:22]
    assert len(big) == 9041
    frames = [nflog(big), nflog(cut)]
    capture = tmp_path / "n.pcap"
    with PcapWriter(str(capture), linktype=239, sync=True) as w:
        w.write_header(None)
        for n, f in enumerate(frames):
            w.write_packet(f, sec=T0 // 10**9, usec=n)
    flows, core = replay(tmp_path, capture)
    assert flows == {(6, A4, "10.7.0.3", 0, 0): (1, 40)}
    assert core["trunc"] == 1
