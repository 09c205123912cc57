"""Ground truth for flow tests: what a correct flow meter must report for known packets.

A :class:`FlowId` is the tuple a NetFlow collector shows (IP version, protocol, source and
destination address and port; ICMP/ICMPv6 ``type << 8 | code`` as the destination port, source
port 0), and :class:`Counts` the packets, IP bytes (the IP header's total length, RFC 791 /
RFC 8200 payload length + 40) and OR of TCP flags.

Non-first fragments have no ports. A :class:`GroundTruth` accounts them the way the agent is
configured (``[cache] fragments``): ``fragments="ports0"`` (ipt_NETFLOW, and the eBPF ingest)
as their own flow with ports 0, ``"track"`` (the pcap and NFLOG ingests' default) to the flow
of their first fragment, in whatever order the fragments come (a fragment whose first one
never comes keeps ports 0).

:func:`parse_ip` is a small, independent IP header reader (written for the tests, deliberately
not ``agent.packet``), so captured traffic can be turned into ground truth without trusting the
code under test.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
_PORT_PROTOS = {PROTO_TCP, PROTO_UDP, 33, 132, 136}  # TCP UDP DCCP SCTP UDP-Lite
_IPV6_EXT = {0, 43, 60}  # hop-by-hop, routing, destination options (mobility: upper layer)
_IPV6_FRAG = 44


class FlowId(NamedTuple):
    """One unidirectional flow as collectors show it. Addresses are printable strings."""

    ip_version: int
    proto: int
    src: str
    dst: str
    sport: int
    dport: int

    @classmethod
    def make(cls, proto: int, src: str, dst: str, sport: int = 0, dport: int = 0) -> FlowId:
        """Build an id, normalising the addresses (``fd00::0001`` -> ``fd00::1``)."""
        version, src = canonical_ip(src)
        return cls(version, proto, src, canonical_ip(dst)[1], sport, dport)

    @classmethod
    def of_record(cls, r: dict[str, Any]) -> FlowId:
        """The id of one ``[[export.log]]`` JSON flow record."""
        return cls.make(r["protocol"], r["src_addr"], r["dst_addr"], r["src_port"],
                        r["dst_port"])

    def reverse(self) -> FlowId:
        """The reply direction (ports swapped; meaningless for ICMP)."""
        return self._replace(src=self.dst, dst=self.src, sport=self.dport, dport=self.sport)


_V4_PREFIX_SPAN = bytes(10)  # ::/80 holds the IPv4-mapped and -compatible forms


@functools.lru_cache(maxsize=1 << 20)
def ip_text(packed: bytes) -> str:
    """A packed IPv4 (4 bytes) or IPv6 (16 bytes) address printed exactly as
    ``str(ipaddress.ip_address(packed))`` prints it, several times faster (the many-flow
    tests print a million addresses). ``inet_ntop`` and :mod:`ipaddress` differ only in
    ``::/80`` (``::ffff:1.2.3.4``), which goes through :mod:`ipaddress`."""
    if len(packed) == 4:
        return socket.inet_ntoa(packed)
    if packed[:10] == _V4_PREFIX_SPAN:
        return str(ipaddress.ip_address(packed))
    return socket.inet_ntop(socket.AF_INET6, packed)


def canonical_ip(text: str) -> tuple[int, str]:
    """``(version, text)`` of a printable address, normalised as :mod:`ipaddress` prints it
    (``fd00::0001`` -> ``fd00::1``); :class:`ValueError` for what is not an address."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        packed = socket.inet_pton(family, text)
    except OSError:  # ipaddress says why (or accepts what inet_pton does not, e.g. a scope)
        addr = ipaddress.ip_address(text)
        return addr.version, str(addr)
    return (6 if family == socket.AF_INET6 else 4), ip_text(packed)


def record_table(records: Iterable[dict[str, Any]]) -> dict[FlowId, tuple[int, int]]:
    """Packets and bytes per flow id, summed over ``[[export.log]]`` JSON flow records."""
    out: dict[FlowId, tuple[int, int]] = {}
    for r in records:
        fid = FlowId.of_record(r)
        p, b = out.get(fid, (0, 0))
        out[fid] = (p + r["packets"], b + r["octets"])
    return out


@dataclass
class Counts:
    """Packets, IP bytes and the OR of TCP flags of one flow."""

    packets: int = 0
    bytes: int = 0
    tcp_flags: int = 0

    def add(self, ip_bytes: int, tcp_flags: int = 0, packets: int = 1) -> None:
        self.packets += packets
        self.bytes += ip_bytes
        self.tcp_flags |= tcp_flags


@dataclass
class GroundTruth:
    """Per-flow counts plus the seed's ``frag`` and ``trunc`` counters."""

    flows: dict[FlowId, Counts] = field(default_factory=dict)
    frag: int = 0  # fragments seen (first and non-first)
    trunc: int = 0  # packets whose IP header is missing or inconsistent (not in flows)
    fragments: str = "ports0"  # how non-first fragments are accounted: "ports0" or "track"
    #: "track": fragment id -> the flow of its first fragment
    _firsts: dict[tuple, FlowId] = field(default_factory=dict, repr=False)
    #: "track": non-first fragments still waiting for their first one (fragment id, bytes)
    _orphans: list[tuple[tuple, FlowId, int]] = field(default_factory=list, repr=False)

    def add(self, fid: FlowId, ip_bytes: int, tcp_flags: int = 0, packets: int = 1) -> None:
        """Account ``packets`` packets of ``ip_bytes`` bytes in total to ``fid``."""
        self.flows.setdefault(fid, Counts()).add(ip_bytes, tcp_flags, packets)

    def add_fragment(self, frag_id: tuple, fid: FlowId, ip_bytes: int, first: bool,
                     tcp_flags: int = 0) -> None:
        """Account one fragment; ``fid`` is its own id (ports 0 when not ``first``)."""
        self.frag += 1
        track = self.fragments == "track"
        if first or not track:
            self.add(fid, ip_bytes, tcp_flags)
            if first and track:
                self._firsts[frag_id] = fid
                self._adopt(frag_id, fid)
            return
        owner = self._firsts.get(frag_id)
        if owner is not None:
            self.add(owner, ip_bytes)
            return
        self.add(fid, ip_bytes)  # ports 0 until its first fragment shows up
        self._orphans.append((frag_id, fid, ip_bytes))

    def _adopt(self, frag_id: tuple, owner: FlowId) -> None:
        """Move the fragments that came before their first one to its flow."""
        keep = []
        for item in self._orphans:
            if item[0] != frag_id:
                keep.append(item)
                continue
            counts = self.flows[item[1]]
            counts.packets -= 1
            counts.bytes -= item[2]
            if not counts.packets:
                del self.flows[item[1]]
            self.add(owner, item[2])
        self._orphans = keep

    def merge(self, other: GroundTruth) -> GroundTruth:
        """Add another truth into this one; returns ``self``."""
        for fid, c in other.flows.items():
            self.add(fid, c.bytes, c.tcp_flags, c.packets)
        self.frag += other.frag
        self.trunc += other.trunc
        return self

    @property
    def packets(self) -> int:
        """Packets in all flows (truncated packets excluded)."""
        return sum(c.packets for c in self.flows.values())

    @property
    def bytes(self) -> int:
        """IP bytes in all flows."""
        return sum(c.bytes for c in self.flows.values())

    def table(self) -> dict[FlowId, tuple[int, int]]:
        """``{FlowId: (packets, bytes)}``: the usual thing to compare with a collector."""
        return {fid: (c.packets, c.bytes) for fid, c in self.flows.items()}

    def add_ip_packet(self, data: bytes) -> None:
        """Account one raw IP packet (starting at the IP header) with :func:`parse_ip`."""
        parsed = parse_ip(data)
        if parsed is None:
            self.trunc += 1
            return
        fid, total, flags, is_frag = parsed
        if is_frag:
            frag_id, first = fragment_id(data)
            self.add_fragment(frag_id, fid, total, first, flags)
        else:
            self.add(fid, total, flags)

    @classmethod
    def from_ip_packets(cls, packets: Iterable[bytes], fragments: str = "ports0"
                        ) -> GroundTruth:
        """Truth for a sequence of raw IP packets."""
        truth = cls(fragments=fragments)
        for data in packets:
            truth.add_ip_packet(data)
        return truth


def parse_ip(data: bytes) -> tuple[FlowId, int, int, bool] | None:
    """Read ``(flow id, IP total length, TCP flags, is_fragment)`` from a raw IP packet.

    :return: ``None`` when the IP header is truncated or inconsistent.
    """
    if len(data) >= 20 and data[0] >> 4 == 4:
        return _parse_ipv4(data)
    if len(data) >= 40 and data[0] >> 4 == 6:
        return _parse_ipv6(data)
    return None


def _parse_ipv4(data: bytes) -> tuple[FlowId, int, int, bool] | None:
    ihl = (data[0] & 0x0F) * 4
    total, frag = struct.unpack_from("!H2xH", data, 2)
    if ihl < 20 or total < ihl or len(data) < ihl:
        return None
    proto = data[9]
    src, dst = str(ipaddress.IPv4Address(data[12:16])), str(ipaddress.IPv4Address(data[16:20]))
    is_frag = bool(frag & 0x3FFF)
    if frag & 0x1FFF:
        return FlowId(4, proto, src, dst, 0, 0), total, 0, True
    sport, dport, flags = _transport(data, ihl, proto)
    return FlowId(4, proto, src, dst, sport, dport), total, flags, is_frag


def _parse_ipv6(data: bytes) -> tuple[FlowId, int, int, bool] | None:
    total = 40 + struct.unpack_from("!H", data, 4)[0]
    nh, off = data[6], 40
    src, dst = str(ipaddress.IPv6Address(data[8:24])), str(ipaddress.IPv6Address(data[24:40]))
    is_frag = False
    while len(data) >= off + 8 and (nh in _IPV6_EXT or nh == _IPV6_FRAG):
        if nh == _IPV6_FRAG:
            is_frag = True
            offset = struct.unpack_from("!H", data, off + 2)[0] & 0xFFF8
            nh, off = data[off], off + 8
            if offset:
                return FlowId(6, nh, src, dst, 0, 0), total, 0, True
        else:
            nh, off = data[off], off + (data[off + 1] + 1) * 8
    sport, dport, flags = _transport(data, off, nh)
    return FlowId(6, nh, src, dst, sport, dport), total, flags, is_frag


def fragment_id(data: bytes) -> tuple[tuple, bool]:
    """``(identity, is the first fragment)`` of a fragment that :func:`parse_ip` accepted:
    RFC 791's (source, destination, protocol, id) or RFC 8200's (source, destination, id)."""
    if data[0] >> 4 == 4:
        ident, frag = struct.unpack_from("!HH", data, 4)
        return (data[12:16], data[16:20], data[9], ident), not frag & 0x1FFF
    nh, off = data[6], 40
    while nh != _IPV6_FRAG:
        nh, off = data[off], off + (data[off + 1] + 1) * 8
    offset, ident = struct.unpack_from("!2xHI", data, off)
    return (data[8:24], data[24:40], ident), not offset & 0xFFF8


def _transport(data: bytes, off: int, proto: int) -> tuple[int, int, int]:
    """Ports (or ICMP type/code as dport) and TCP flags at ``off``; zeros when absent."""
    if proto in _PORT_PROTOS and len(data) >= off + 4:
        sport, dport = struct.unpack_from("!HH", data, off)
        flags = data[off + 13] if proto == PROTO_TCP and len(data) >= off + 14 else 0
        return sport, dport, flags
    if proto in (PROTO_ICMP, PROTO_ICMPV6) and len(data) >= off + 2:
        return 0, data[off] << 8 | data[off + 1], 0
    return 0, 0, 0
