"""Tunnels: account the inner flow of GRE, VXLAN, Geneve and IP-in-IP (``decapsulate``).

On a mirror port or a router that carries transit tunnels only the outer flow (one pair of
tunnel endpoints) is visible; with ``decapsulate = [...]`` on a packet ingest the packet is
accounted to its *inner* flow instead, as ipfixprobe does (and to both with ``keep_outer``).
Tunnels, by the ``decapsulate`` names:

* ``"gre"``: GRE (RFC 2784, RFC 2890 key and sequence number, version 0) carrying IPv4, IPv6,
  MPLS or, with transparent Ethernet bridging (``0x6558``), an Ethernet frame; ERSPAN type II
  (``0x88BE``, 8-byte header) and type III (``0x22EB``, 12 bytes plus the optional 8-byte
  platform subheader), whose payload is the mirrored Ethernet frame (type I: no header). The
  tunnel id is the GRE key, or the ERSPAN session id;
* ``"vxlan"``: VXLAN (RFC 7348) on UDP port 4789, and 8472 (Linux's default when a VXLAN link
  has no ``dstport``); the tunnel id is the VNI;
* ``"geneve"``: Geneve (RFC 8926) on UDP port 6081, Ethernet or IP payload; the id is the VNI;
* ``"ipip"``: IPv4 or IPv6 directly inside IPv4 or IPv6 (protocols 4 and 41: IP-in-IP, 6in4,
  4in6, 6in6).

Inner Ethernet frames are walked by ``agent/linklayer.py`` (VLAN tags, MPLS ...). Tunnels nest
up to :data:`MAX_DEPTH` levels. A tunnel packet whose payload is not an IP packet (ARP inside
VXLAN, a truncated inner header, an unknown GRE protocol) and an outer packet that is a
fragment (the inner header may be incomplete) are accounted as the outer flow and counted
(``decap_failed``); nothing is dropped. The tunnel kind and id of the last packet are kept on
request (``keep_facts``) for the flow schema that will export them (layer2SegmentId 351).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from netflow_agent.config.schema import option
from netflow_agent.errors import ConfigIssue
from netflow_agent.fragments import FragmentPolicy
from netflow_agent.linklayer import ETH_P_TEB, ethernet_ip_offset, ip_after
from netflow_agent.model import Packet
from netflow_agent.packet import (
    _EXT_LEN8,
    IPPROTO_FRAGMENT,
    IPPROTO_UDP,
    PacketParser,
)

TUNNELS = ("gre", "vxlan", "geneve", "ipip")
IPPROTO_IPIP = 4
IPPROTO_IPV6 = 41
IPPROTO_GRE = 47
VXLAN_PORTS = (4789, 8472)
GENEVE_PORT = 6081
ETH_P_ERSPAN2 = 0x88BE
ETH_P_ERSPAN3 = 0x22EB
MAX_DEPTH = 2

#: kinds of :class:`Tunnel`
KIND_GRE, KIND_ERSPAN, KIND_VXLAN, KIND_GENEVE, KIND_IPIP = 1, 2, 3, 4, 5


class Tunnel(NamedTuple):
    """Where a tunnel's inner IP packet starts, and what the tunnel said about itself."""

    inner: int  # offset of the inner IP header in the outer packet
    kind: int  # KIND_*
    tunnel_id: int  # GRE key, ERSPAN session, VXLAN/Geneve VNI; 0 when none


def transport_offset(data: Any) -> tuple[int, int]:
    """``(protocol, offset of the transport header)`` of an unfragmented IP packet, or
    ``(-1, 0)`` when it is a fragment or its headers do not fit."""
    n = len(data)
    if data[0] >> 4 == 4:
        ihl = (data[0] & 0x0F) * 4
        if ((data[6] << 8) | data[7]) & 0x3FFF or n < ihl:
            return -1, 0
        return data[9], ihl
    nh, off = data[6], 40
    for _ in range(8):
        if nh not in _EXT_LEN8:
            break
        if n < off + 2:
            return -1, 0
        nh, off = data[off], off + (data[off + 1] + 1) * 8
    if nh == IPPROTO_FRAGMENT:
        return -1, 0
    return nh, off


def find_inner(data: Any, kinds: frozenset[str]) -> Tunnel | None:
    """The inner IP packet of the tunnel packet ``data`` (starting at its IP header), or
    ``None`` when it is not one of ``kinds`` or carries no IP packet."""
    proto, off = transport_offset(data)
    if proto == IPPROTO_UDP and len(data) >= off + 8:
        dport = (data[off + 2] << 8) | data[off + 3]
        if dport in VXLAN_PORTS and "vxlan" in kinds:
            return _vxlan(data, off + 8)
        if dport == GENEVE_PORT and "geneve" in kinds:
            return _geneve(data, off + 8)
        return None
    if proto == IPPROTO_GRE and "gre" in kinds:
        return _gre(data, off)
    if (proto == IPPROTO_IPIP or proto == IPPROTO_IPV6) and "ipip" in kinds:
        return Tunnel(off, KIND_IPIP, 0) if len(data) > off else None
    return None


def _found(inner: int, kind: int, tunnel_id: int) -> Tunnel | None:
    return Tunnel(inner, kind, tunnel_id) if inner >= 0 else None


def _vxlan(data: Any, off: int) -> Tunnel | None:
    if len(data) < off + 8 or not data[off] & 0x08:  # the I flag: the VNI is valid
        return None
    vni = (data[off + 4] << 16) | (data[off + 5] << 8) | data[off + 6]
    return _found(ethernet_ip_offset(data, off + 8), KIND_VXLAN, vni)


def _geneve(data: Any, off: int) -> Tunnel | None:
    if len(data) < off + 8 or data[off] >> 6:  # version 0
        return None
    proto = (data[off + 2] << 8) | data[off + 3]
    vni = (data[off + 4] << 16) | (data[off + 5] << 8) | data[off + 6]
    payload = off + 8 + (data[off] & 0x3F) * 4
    if proto == ETH_P_TEB:
        return _found(ethernet_ip_offset(data, payload), KIND_GENEVE, vni)
    return _found(ip_after(data, proto, payload), KIND_GENEVE, vni)


def _gre(data: Any, off: int) -> Tunnel | None:
    n = len(data)
    if n < off + 4:
        return None
    flags = (data[off] << 8) | data[off + 1]
    if flags & 0x0007:  # version 1 (PPTP) and others
        return None
    proto = (data[off + 2] << 8) | data[off + 3]
    pos = off + 4 + (4 if flags & 0x8000 else 0)  # checksum present
    key = 0
    if flags & 0x2000:  # key present
        if n < pos + 4:
            return None
        key = int.from_bytes(data[pos:pos + 4], "big")
        pos += 4
    if flags & 0x1000:  # sequence number present
        pos += 4
    if proto == ETH_P_TEB:
        return _found(ethernet_ip_offset(data, pos), KIND_GRE, key)
    if proto == ETH_P_ERSPAN2 or proto == ETH_P_ERSPAN3:
        return _erspan(data, pos, proto, flags & 0x1000)
    return _found(ip_after(data, proto, pos), KIND_GRE, key)


def _erspan(data: Any, pos: int, proto: int, sequenced: int) -> Tunnel | None:
    if proto == ETH_P_ERSPAN2 and not sequenced:  # type I: the frame follows GRE directly
        return _found(ethernet_ip_offset(data, pos), KIND_ERSPAN, 0)
    if len(data) < pos + 12:
        return None
    session = ((data[pos + 2] << 8) | data[pos + 3]) & 0x03FF
    if proto == ETH_P_ERSPAN2:
        return _found(ethernet_ip_offset(data, pos + 8), KIND_ERSPAN, session)
    frame = pos + 12 + (8 if data[pos + 11] & 1 else 0)  # the O flag: platform subheader
    return _found(ethernet_ip_offset(data, frame), KIND_ERSPAN, session)


class DecapParser(PacketParser):
    """A :class:`~agent.packet.PacketParser` that accounts tunnelled packets to their inner
    flow. Used only when ``decapsulate`` is set, so the plain parser pays nothing for it.

    :param kinds: names from :data:`TUNNELS`.
    :param keep_outer: also account the outer packet (to :attr:`extra`).
    :param keep_facts: keep the last packet's tunnel in :attr:`last_tunnel`.
    """

    __slots__ = ("kinds", "keep_outer", "keep_facts", "protos", "udp_ports", "decapsulated",
                 "decap_failed", "last_tunnel")

    def __init__(self, kinds: frozenset[str] | set[str] | list[str],
                 keep_outer: bool = False, fragments: FragmentPolicy | None = None,
                 keep_facts: bool = False) -> None:
        super().__init__(fragments)
        self.kinds = frozenset(kinds)
        self.keep_outer = keep_outer
        self.keep_facts = keep_facts
        self.protos = frozenset(
            ({IPPROTO_GRE} if "gre" in self.kinds else set())
            | ({IPPROTO_IPIP, IPPROTO_IPV6} if "ipip" in self.kinds else set()))
        self.udp_ports = frozenset(
            (set(VXLAN_PORTS) if "vxlan" in self.kinds else set())
            | ({GENEVE_PORT} if "geneve" in self.kinds else set()))
        self.decapsulated = 0  # packets accounted to their inner flow
        self.decap_failed = 0  # tunnel packets accounted as the outer flow (see module doc)
        self.last_tunnel: Tunnel | None = None

    def parse(self, data: bytes | memoryview, ts_ns: int, in_if: int = 0, out_if: int = 0,
              direction: int = 0, wire_len: int = 0, depth: int = 0) -> Packet | None:
        """As :meth:`PacketParser.parse`, but a tunnel packet gives its inner flow."""
        pkt = PacketParser.parse(self, data, ts_ns, in_if, out_if, direction, wire_len)
        if self.keep_facts and depth == 0:
            self.last_tunnel = None
        if pkt is None or depth >= MAX_DEPTH:
            return pkt
        key = pkt[0]
        proto = key[1]
        if proto not in self.protos and not (
                proto == IPPROTO_UDP and ((key[10] << 8) | key[11]) in self.udp_ports):
            return pkt
        return self._decapsulate(data, pkt, ts_ns, in_if, out_if, direction, depth)

    def _decapsulate(self, data: Any, outer: Packet, ts_ns: int, in_if: int, out_if: int,
                     direction: int, depth: int) -> Packet | None:
        tunnel = find_inner(data, self.kinds)
        if tunnel is None:
            self.decap_failed += 1
            return outer
        view = memoryview(data) if isinstance(data, bytes) else data
        trunc, trunc_bytes = self.trunc, self.trunc_bytes
        # an inner length field of 0: the outer's accounted bytes from the inner header on
        inner = self.parse(view[tunnel.inner:], ts_ns, in_if, out_if, direction,
                           max(outer[1] - tunnel.inner, 0), depth + 1)
        if inner is None and self.trunc != trunc:  # the payload is no IP packet after all
            self.trunc, self.trunc_bytes = trunc, trunc_bytes
            self.decap_failed += 1
            return outer
        self.decapsulated += 1
        if self.keep_facts and depth == 0:  # the outermost tunnel of the packet
            self.last_tunnel = tunnel
        if self.keep_outer:
            self.extra.append(outer)
        return inner

    def stats(self) -> dict[str, int]:
        """Fragment counters plus ``decapsulated`` and ``decap_failed``."""
        return {**super().stats(), "decapsulated": self.decapsulated,
                "decap_failed": self.decap_failed}


TunnelName = Literal["gre", "vxlan", "geneve", "ipip"]


def decapsulate_option() -> Any:
    """The ``decapsulate`` key shared by the packet ingests' tables."""
    return option([], doc='Tunnels whose inner flow is accounted instead of the outer one: '
                  'any of "gre" (with ERSPAN and Ethernet over GRE), "vxlan", "geneve", "ipip" '
                  "(IPv4/IPv6 in IPv4/IPv6). Empty = account tunnels as they are.")


def keep_outer_option(extra: str = "") -> Any:
    """The ``keep_outer`` key shared by the packet ingests' tables; ``extra`` ends its doc
    with what is particular to one ingest."""
    return option(False, doc="With decapsulate: also account every tunnel packet to its outer "
                  "flow (the tunnel endpoints), as without decapsulate." + extra)


def check_decapsulate(kinds: list[str], keep_outer: bool) -> list[ConfigIssue]:
    """Pure checks of the two keys: no tunnel twice, ``keep_outer`` only with tunnels."""
    issues = []
    if len(set(kinds)) != len(kinds):
        issues.append(ConfigIssue("decapsulate", "lists a tunnel twice"))
    if keep_outer and not kinds:
        issues.append(ConfigIssue("keep_outer", "has no effect without decapsulate",
                                  "warning"))
    return issues


def make_parser(fragments: FragmentPolicy | None, kinds: list[str] | tuple[str, ...] = (),
                keep_outer: bool = False) -> PacketParser:
    """The parser an ingest needs: the plain one unless tunnels are decapsulated."""
    if kinds:
        return DecapParser(frozenset(kinds), keep_outer, fragments)
    return PacketParser(fragments)
