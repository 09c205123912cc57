"""tests/support/flowgen.py and bench/ebpf/flowgen.c: the generator's truth is what goes out.

A small mixed flood (IPv4 and IPv6, UDP/TCP/ICMP, varied destinations, 1-3 packets per flow)
is captured on the receiving end of a veth link and read by the tests' own IP parser: every
flow, packet count and byte count must equal :meth:`Flood.truth`, and every checksum must be
valid. The truth of a flood cut short (its first ``sent`` packets) is checked against a
packet-by-packet walk of the schedule.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tests.support.flowgen import FIRST_SOURCE, FIRST_SOURCE6, Flood, build
from tests.support.netns import Capture, subnet_for
from tests.support.pcapgen import ip_of_frame, read_frames
from tests.support.truth import PROTO_TCP

MIXED = Flood(flows=180, per_flow=1, per_flow_max=3, concurrent=25, mix=True)


def _walk(flood: Flood, sent: int) -> list[int]:
    """Per-flow packets of the schedule's first ``sent`` packets, one packet at a time."""
    counts = [0] * flood.flows
    for first in range(0, flood.flows, flood.concurrent):
        window = range(first, min(first + flood.concurrent, flood.flows))
        for r in range(max(flood.per_flow_max, flood.per_flow)):
            for f in window:
                if flood.packets_of(f) > r and sent:
                    counts[f] += 1
                    sent -= 1
    return counts


def _sum16(data: bytes) -> int:
    data += b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _checksums_valid(ip: bytes) -> bool:
    """IP header (IPv4) and transport checksums verify (IPv4 UDP may carry none)."""
    if ip[0] >> 4 == 4:
        proto, l4 = ip[9], ip[20:]
        if _sum16(ip[:20]) != 0xFFFF:
            return False
        if proto == 17 and l4[6:8] == b"\0\0":
            return True
        pseudo = b"" if proto == 1 else ip[12:20] + struct.pack("!HH", proto, len(l4))
    else:
        proto, l4 = ip[6], ip[40:]
        pseudo = ip[8:40] + struct.pack("!IxxxB", len(l4), proto)
    return _sum16(pseudo + l4) == 0xFFFF


def test_partial_truth_is_the_schedule_prefix():
    for flood in (MIXED, Flood(flows=10, per_flow=4, concurrent=3)):
        for sent in (0, 1, 24, 25, 26, 47, 100, flood.packets - 1, flood.packets):
            assert flood.sent_per_flow(sent) == _walk(flood, sent), (flood, sent)
    assert MIXED.packets == sum(MIXED.packets_of(f) for f in range(180)) == 360


def test_test_subnets_never_hold_a_flood_source():
    """Whatever a test process's id, its links' subnets stay clear of the generated sources
    (a million flows: 10.128.0.0-10.143.66.63, fd00:80::-fd00:80::f:423f): a router with
    one of them connected would forward ICMP errors back to the sources and drop the flows
    that carry its own address, and a flood test would count what it never sent."""
    sources = ipaddress.ip_network(f"{ipaddress.IPv4Address(FIRST_SOURCE)}/9")
    sources6 = ipaddress.ip_network(f"{ipaddress.IPv6Address(FIRST_SOURCE6)}/64")
    for pid in range(256):
        for n in (0, 1, 255, 256, 4097):
            v4, v6 = subnet_for(pid, n)
            assert not ipaddress.ip_network(f"{v4}.0/24").overlaps(sources), (pid, n)
            assert not ipaddress.ip_network(f"{v6}::/64").overlaps(sources6), (pid, n)


@pytest.mark.netns
def test_mixed_flood_on_the_wire_is_its_truth(veth_pair_ns, tmp_path):
    a, b = veth_pair_ns.a, veth_pair_ns.b
    dst6 = str(ipaddress.IPv6Address("fd00:c8::"))
    flowgen = build(tmp_path)
    with Capture(b.ns, b.ifname, direction="in", buffer_kib=8192,
                 snaplen=256) as cap:
        sent = MIXED.send(flowgen, a, b.mac, "10.200.0.0", dst6, seconds=20)
    assert sent == MIXED.packets
    got = cap.truth.table()
    want = MIXED.truth("10.200.0.0", dst6)
    assert got == want
    assert {f.proto for f in want} == {1, 6, 17, 58} and {f.ip_version for f in want} == {4, 6}
    assert len({f.dst for f in want}) == 180 and len({f.dport for f in want}) == 10
    frames = [ip_of_frame(fr) for fr in read_frames(cap.path)]
    assert all(ip is not None and _checksums_valid(ip) for ip in frames)
    tcp = [ip for ip in frames if ip is not None and ip[0] >> 4 == 4 and ip[9] == PROTO_TCP]
    assert tcp and {ip[33] for ip in tcp} == {0x02, 0x10}  # SYN first, then ACK
