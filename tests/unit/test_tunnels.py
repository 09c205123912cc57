"""Tunnel decapsulation in the Python parser: inner offsets, tunnel ids, what is refused."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from netflow_agent.model import split_key
from netflow_agent.tunnels import (
    KIND_ERSPAN,
    KIND_GENEVE,
    KIND_GRE,
    KIND_IPIP,
    KIND_VXLAN,
    DecapParser,
    find_inner,
)
from tests.support.pcapgen import encapsulate, ipv4_packet, ipv6_packet

INNER = ipv4_packet(bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2]), 17,
                    struct.pack("!HHHH", 1234, 53, 8, 0))
ALL = ["gre", "vxlan", "geneve", "ipip"]


@pytest.mark.parametrize("tunnel,kind,tunnel_id", [
    ("gre", KIND_GRE, 0), ("gre-key", KIND_GRE, 77), ("gre-teb", KIND_GRE, 77),
    ("erspan2", KIND_ERSPAN, 77), ("erspan3", KIND_ERSPAN, 77), ("vxlan", KIND_VXLAN, 77),
    ("geneve", KIND_GENEVE, 77), ("ipip", KIND_IPIP, 0),
])
def test_tunnel_ids_are_kept_on_request(tunnel: str, kind: int, tunnel_id: int) -> None:
    outer = encapsulate(INNER, tunnel, 77, "2001:db8::1", "2001:db8::2")
    parser = DecapParser(ALL, keep_facts=True)
    pkt = parser.parse(outer, 1, 3)
    assert pkt is not None
    key = split_key(pkt[0])
    assert (str(ipaddress.ip_address(key.src_addr)), key.src_port, key.dst_port, pkt[1]) == \
        ("10.9.0.1", 1234, 53, len(INNER))
    assert parser.last_tunnel is not None
    assert (parser.last_tunnel.kind, parser.last_tunnel.tunnel_id) == (kind, tunnel_id)
    assert outer[parser.last_tunnel.inner:] == INNER
    parser.parse(INNER, 2)
    assert parser.last_tunnel is None  # facts are per packet


def test_gre_checksum_and_ipv6_extension_headers_are_skipped() -> None:
    gre = struct.pack("!HHHH", 0x8000, 0x0800, 0, 0) + INNER  # checksum present
    hop = struct.pack("!BBBB4x", 47, 0, 1, 4)  # hop-by-hop options, then GRE
    outer = ipv6_packet(bytes(15) + b"\x01", bytes(15) + b"\x02", 0, hop + gre)
    tunnel = find_inner(outer, frozenset(ALL))
    assert tunnel is not None and outer[tunnel.inner:] == INNER


def test_what_is_not_decapsulated() -> None:
    """Kinds not asked for, PPTP GRE, VXLAN without the I flag, outer fragments."""
    vxlan = encapsulate(INNER, "vxlan", 5, "192.0.2.1", "192.0.2.2")
    assert find_inner(vxlan, frozenset({"gre"})) is None
    no_i_flag = bytearray(vxlan)
    no_i_flag[28] = 0
    assert find_inner(bytes(no_i_flag), frozenset(ALL)) is None
    pptp = ipv4_packet(bytes(4), bytes(4), 47, struct.pack("!HHI", 0x3001, 0x880B, 0) + INNER)
    assert find_inner(pptp, frozenset(ALL)) is None
    fragment = bytearray(encapsulate(INNER, "gre", 0, "192.0.2.1", "192.0.2.2"))
    fragment[6] = 0x20  # more fragments
    parser = DecapParser(ALL)
    pkt = parser.parse(bytes(fragment), 1)
    assert pkt is not None and pkt[0][1] == 47  # the outer flow
    assert (parser.decapsulated, parser.decap_failed) == (0, 1)


def test_nested_tunnels_stop_at_the_depth_bound() -> None:
    twice = encapsulate(encapsulate(INNER, "vxlan", 1, "192.0.2.1", "192.0.2.2"), "gre", 0,
                        "198.51.100.1", "198.51.100.2")
    thrice = encapsulate(twice, "ipip", 0, "203.0.113.1", "203.0.113.2")
    parser = DecapParser(ALL)
    assert parser.parse(twice, 1)[0] == parser.parse(INNER, 1)[0]  # type: ignore[index]
    pkt = parser.parse(thrice, 1)  # two tunnels removed: the VXLAN packet stays
    assert pkt is not None
    assert (split_key(pkt[0]).protocol, split_key(pkt[0]).dst_port) == (17, 4789)
