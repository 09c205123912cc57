"""agent.packet: IP parsing into flow keys, frag and trunc classification."""

from __future__ import annotations

import ipaddress

import pytest

from netflow_agent.model import split_key
from netflow_agent.packet import PacketParser
from tests.support.pcapgen import FlowSpec, PcapBuilder
from tests.support.truth import GroundTruth


def packets_of(*specs: FlowSpec, truncated: int = 0) -> tuple[list[bytes], GroundTruth]:
    b = PcapBuilder()
    for s in specs:
        b.add(s)
    for _ in range(truncated):
        b.add_truncated()
    return [ip for _, ip in b.packets], b.truth


def parse_all(ips: list[bytes]) -> tuple[GroundTruth, PacketParser]:
    parser = PacketParser()
    truth = GroundTruth()
    from tests.support.truth import FlowId

    for ip in ips:
        pkt = parser.parse(ip, 1, in_if=3)
        if pkt is None:
            continue
        k = split_key(pkt[0])
        assert k.in_if == 3
        fid = FlowId.make(k.protocol, str(ipaddress.ip_address(k.src_addr)),
                          str(ipaddress.ip_address(k.dst_addr)), k.src_port, k.dst_port)
        truth.add(fid, pkt[1], pkt[2])
    return truth, parser


@pytest.mark.parametrize("spec", [
    FlowSpec("udp", "10.0.0.1", "10.0.0.2", 1000, 53, packets=3, payload=20),
    FlowSpec("tcp", "10.0.0.1", "10.0.0.2", 40000, 443, packets=5, payload=100),
    FlowSpec("icmp", "10.0.0.1", "10.0.0.2", packets=2, icmp_type=8),
    FlowSpec("icmp", "10.0.0.1", "10.0.0.2", packets=1, icmp_type=3, icmp_code=3),
    FlowSpec("udp", "fd00::1", "fd00::2", 5, 6, packets=2, payload=9, ext_headers=(0, 43, 60)),
    FlowSpec("tcp", "fd00::1", "fd00::2", 7, 8, packets=3, tos=0xB8),
    FlowSpec("icmpv6", "fd00::1", "fd00::2", packets=2, icmp_type=128),
    FlowSpec("udp", "10.0.0.1", "10.0.0.2", 9, 10, packets=2, payload=3000, fragment=1000),
    FlowSpec("udp", "fd00::1", "fd00::2", 9, 10, packets=2, payload=3000, fragment=1000),
    FlowSpec("tcp", "fd00::1", "fd00::2", 9, 10, packets=1, payload=2000, fragment=800,
             ext_headers=(0,)),
], ids=["udp4", "tcp4", "icmp-echo", "icmp-unreach", "udp6-ext", "tcp6-tos", "icmpv6",
        "frag4", "frag6", "frag6-ext"])
def test_parse_matches_ground_truth(spec):
    ips, truth = packets_of(spec)
    got, parser = parse_all(ips)
    assert {f: (c.packets, c.bytes, c.tcp_flags) for f, c in got.flows.items()} == \
        {f: (c.packets, c.bytes, c.tcp_flags) for f, c in truth.flows.items()}
    assert parser.frag == truth.frag and parser.trunc == 0


def test_tos_is_part_of_the_key():
    ips, _ = packets_of(FlowSpec("udp", "10.0.0.1", "10.0.0.2", 1, 2, tos=0x28))
    pkt = PacketParser().parse(ips[0], 0)
    assert split_key(pkt[0]).tos == 0x28


@pytest.mark.parametrize("data", [
    b"", b"\x45", bytes(19), b"\x60" + bytes(38), b"\x44" + bytes(30),
    b"\x45\x00\x00\x10" + bytes(16),  # total length shorter than the header
    b"\x15" + bytes(40),  # version 1
], ids=["empty", "one-byte", "short4", "short6", "ihl4", "total-short", "version"])
def test_truncated_or_malformed_is_counted_never_raises(data):
    parser = PacketParser()
    assert parser.parse(data, 0) is None
    assert parser.trunc == 1


def test_transport_header_cut_by_snaplen_gives_zero_ports_not_trunc():
    ips, _ = packets_of(FlowSpec("tcp", "10.0.0.1", "10.0.0.2", 1234, 80, payload=10))
    parser = PacketParser()
    pkt = parser.parse(ips[0][:22], 0)  # IP header + 2 bytes of TCP
    k = split_key(pkt[0])
    assert (k.src_port, k.dst_port, pkt[1], parser.trunc) == (0, 0, len(ips[0]), 0)


def test_take_counters_resets():
    parser = PacketParser()
    parser.parse(b"", 0)
    assert parser.take_counters() == (1, 0, 0)
    assert parser.take_counters() == (0, 0, 0)
