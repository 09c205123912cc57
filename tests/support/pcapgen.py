"""Write (and read) pcap and pcapng files with known flows and exact ground truth.

What it owns:

* packet construction: IPv4 (RFC 791) and IPv6 (RFC 8200, optional extension headers),
  TCP/UDP/ICMP/ICMPv6 with correct checksums, IPv4 and IPv6 fragments, and deliberately
  truncated packets (an IPv4 header whose IHL is below 5);
* link layers: Ethernet, 802.1Q/802.1ad/QinQ VLAN tags (any number, any TPIDs), MPLS label
  stacks (RFC 3032; with an Ethernet pseudowire and control word, RFC 4448), PPPoE sessions
  (RFC 2516), Linux cooked capture v1 (SLL) and v2 (SLL2), raw IP (LINKTYPE_RAW,
  LINKTYPE_IPV4/IPV6), BSD/OpenBSD loopback, PPP, per the tcpdump.org link-type list; frames
  that carry no IP (:meth:`PcapBuilder.add_frame`);
* tunnels around the IP packets (:func:`encapsulate`): GRE (plain, with a key, transparent
  Ethernet bridging, ERSPAN II and III), VXLAN, Geneve, IP-in-IP; the truth then holds the
  inner flows and :attr:`PcapBuilder.outer_truth` the outer ones;
* the file formats: classic pcap (microsecond or nanosecond magic) and pcapng (SHB, IDB with
  ``if_tsresol``, EPB; draft-ietf-opsawg-pcapng);
* ground truth (:class:`~tests.support.truth.GroundTruth`): per flow id the packets, IP bytes
  (the IP total length) and TCP flags, plus ``frag`` and ``trunc`` counts, computed while the
  packets are built; and a reader (:func:`read_frames`, :func:`truth_from_file`) that derives
  the same truth independently from any capture, e.g. one taken by tcpdump.

Example::

    b = PcapBuilder(linktype=LINKTYPE_ETHERNET, vlans=(100,))
    b.add(FlowSpec("udp", "10.0.0.1", "10.0.0.2", 1000, 53, packets=3, payload=40))
    b.add(FlowSpec("tcp", "fd00::1", "fd00::2", 40000, 80, packets=4, payload=100))
    b.add_truncated()
    truth = b.write(tmp_path / "t.pcapng", fmt="pcapng")
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from tests.support.truth import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    FlowId,
    GroundTruth,
)

# --- link types (https://www.tcpdump.org/linktypes.html) ---------------------------------
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
TPID_8021Q = 0x8100
TPID_8021AD = 0x88A8
TPID_QINQ = 0x9100
ETHERTYPE_ARP = 0x0806
ETHERTYPE_MPLS = 0x8847
ETHERTYPE_MPLS_MC = 0x8848
ETHERTYPE_PPPOE = 0x8864
ETHERTYPE_TEB = 0x6558
TUNNELS = ("gre", "gre-key", "gre-teb", "erspan2", "erspan3", "vxlan", "geneve", "ipip")

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
PROTO_NUMBERS = {"icmp": PROTO_ICMP, "tcp": PROTO_TCP, "udp": PROTO_UDP, "icmpv6": PROTO_ICMPV6}

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
SAMPLE_EPOCH_NS = 1_700_000_000 * 10**9  # fixed clock so generated files are reproducible

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")


@dataclass(frozen=True)
class FlowSpec:
    """One unidirectional flow to generate.

    :param proto: ``"tcp"``, ``"udp"``, ``"icmp"``, ``"icmpv6"`` or a protocol number.
    :param sport: source port (TCP/UDP); ignored for ICMP.
    :param dport: destination port (TCP/UDP); for ICMP use ``icmp_type``/``icmp_code``.
    :param packets: number of packets (before fragmentation).
    :param payload: transport payload bytes per packet.
    :param tcp_flags: one value for every packet, a per-packet sequence, or ``None`` for
        SYN, then ACK (PSH|ACK with payload), FIN|ACK on the last packet.
    :param ext_headers: IPv6 extension headers to insert (0 hop-by-hop, 60 dest. options,
        43 routing type 0 with no addresses left), 8 bytes each.
    :param fragment: when > 0, fragment every packet with this many payload bytes per fragment
        (rounded down to a multiple of 8).
    :param reorder: send the fragments of each packet last first (out of order).
    :param start_ns: time of the first packet (default: after the previous flow).
    :param gap_ns: time between packets of this flow.
    :param fragment_gap_ns: time between the fragments of one packet.
    """

    proto: str | int
    src: str
    dst: str
    sport: int = 0
    dport: int = 0
    packets: int = 1
    payload: int = 0
    tcp_flags: int | Sequence[int] | None = None
    icmp_type: int = 8
    icmp_code: int = 0
    tos: int = 0
    ttl: int = 64
    ext_headers: tuple[int, ...] = ()
    fragment: int = 0
    reorder: bool = False
    start_ns: int | None = None
    gap_ns: int = 1_000_000
    fragment_gap_ns: int = 0

    @property
    def proto_number(self) -> int:
        return PROTO_NUMBERS[self.proto] if isinstance(self.proto, str) else self.proto

    @property
    def ip_version(self) -> int:
        return ipaddress.ip_address(self.src).version

    def flow_id(self) -> FlowId:
        """The id collectors must show for the (first fragments of the) packets."""
        proto = self.proto_number
        if proto in (PROTO_ICMP, PROTO_ICMPV6):
            return FlowId.make(proto, self.src, self.dst, 0, self.icmp_type << 8 | self.icmp_code)
        if proto in (PROTO_TCP, PROTO_UDP):
            return FlowId.make(proto, self.src, self.dst, self.sport, self.dport)
        return FlowId.make(proto, self.src, self.dst)

    def flags_for(self, index: int) -> int:
        """TCP flags of packet ``index``."""
        if isinstance(self.tcp_flags, int):
            return self.tcp_flags
        if self.tcp_flags is not None:
            return self.tcp_flags[index]
        if index == 0:
            return TCP_SYN
        if index == self.packets - 1:
            return TCP_FIN | TCP_ACK
        return TCP_PSH | TCP_ACK if self.payload else TCP_ACK


#: A small mix for exporter tests: IPv4 and IPv6; UDP, TCP, ICMP; tiny to MTU-sized packets.
MIXED_FLOWS = (
    FlowSpec("udp", "10.0.0.1", "10.0.0.2", 1000, 53, packets=3, payload=40),
    FlowSpec("tcp", "10.0.0.1", "10.0.0.3", 40000, 80, packets=7, payload=900),
    FlowSpec("icmp", "10.0.0.5", "10.0.0.1", packets=2, payload=56),
    FlowSpec("udp", "10.0.0.9", "10.0.0.2", 5000, 5001, packets=40, payload=1200),
    FlowSpec("tcp", "fd00::1", "fd00::2", 40001, 443, packets=5, payload=300),
    FlowSpec("udp", "fd00::3", "fd00::2", 7000, 53, packets=2, payload=20),
)


class Frame(NamedTuple):
    """One captured frame: time, link type, captured bytes and original length."""

    ts_ns: int
    linktype: int
    data: bytes
    orig_len: int


# --- checksums and headers ----------------------------------------------------------------


def inet_checksum(data: bytes) -> int:
    """The RFC 1071 one's-complement sum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def transport_segment(spec: FlowSpec, index: int, src: bytes, dst: bytes) -> bytes:
    """The transport header plus payload of packet ``index`` with a valid checksum."""
    proto = spec.proto_number
    payload = bytes((index + i) & 0xFF for i in range(spec.payload))
    if proto == PROTO_TCP:
        seq = 1000 + index * spec.payload + (index > 0)  # the SYN takes one sequence number
        flags = spec.flags_for(index)
        hdr = _TCP.pack(spec.sport, spec.dport, seq, 0, 5 << 4, flags, 65535, 0, 0)
    elif proto == PROTO_UDP:
        hdr = _UDP.pack(spec.sport, spec.dport, 8 + len(payload), 0)
    elif proto in (PROTO_ICMP, PROTO_ICMPV6):
        hdr = struct.pack("!BBHHH", spec.icmp_type, spec.icmp_code, 0, 0x4242, index)
    else:
        return payload
    seg = bytearray(hdr + payload)
    csum_off = {PROTO_TCP: 16, PROTO_UDP: 6}.get(proto, 2)
    pseudo = b"" if proto == PROTO_ICMP else _pseudo_header(src, dst, proto, len(seg))
    csum = inet_checksum(pseudo + bytes(seg))
    if proto == PROTO_UDP and csum == 0:
        csum = 0xFFFF
    struct.pack_into("!H", seg, csum_off, csum)
    return bytes(seg)


def ipv4_packet(
    src: bytes,
    dst: bytes,
    proto: int,
    body: bytes,
    *,
    tos: int = 0,
    ttl: int = 64,
    ident: int = 1,
    frag: int = 0,
) -> bytes:
    """An IPv4 packet; ``frag`` is the flags+offset field (MF = 0x2000, offset in 8-byte units)."""
    hdr = bytearray(_IPV4.pack(0x45, tos, 20 + len(body), ident, frag, ttl, proto, 0, src, dst))
    struct.pack_into("!H", hdr, 10, inet_checksum(bytes(hdr)))
    return bytes(hdr) + body


def ipv6_packet(
    src: bytes, dst: bytes, next_header: int, body: bytes, *, tos: int = 0, hop_limit: int = 64
) -> bytes:
    """An IPv6 packet whose payload (extension headers included) is ``body``."""
    return _IPV6.pack(6 << 28 | tos << 20, len(body), next_header, hop_limit, src, dst) + body


def _ext_header(kind: int, next_header: int) -> bytes:
    """An 8-byte IPv6 extension header: PadN options, or an empty type-0 routing header."""
    if kind == 43:
        return struct.pack("!BBBB4x", next_header, 0, 0, 0)
    return struct.pack("!BBBB4x", next_header, 0, 1, 4)  # PadN with 4 bytes of padding


# --- the builder --------------------------------------------------------------------------


@dataclass
class PcapBuilder:
    """Collects packets of several flows, then writes one capture file and returns the truth.

    :param linktype: one of the ``LINKTYPE_*`` constants.
    :param vlans: VLAN ids for Ethernet (outermost first); two tags use ``vlan_tpids``.
    :param vlan_pcps: the tags' priorities (PCP), outermost first; missing ones are 0.
    :param snaplen: when > 0, store at most this many bytes per frame. The truth (IP total
        length, ports) holds as long as the snap length keeps the transport header.
    :param fragments: how the truth accounts non-first fragments, as ``[cache] fragments``:
        ``"ports0"`` or ``"track"`` (see :class:`~tests.support.truth.GroundTruth`).
    :param mpls: MPLS labels (outermost first) between the VLAN tags and the packet.
    :param mpls_tc: the traffic class of every label stack entry.
    :param mpls_pw: with ``mpls``: carry an Ethernet pseudowire (control word + Ethernet).
    :param pppoe_session: put the packets in this PPPoE session (after VLAN tags).
    :param tunnel: one of :data:`TUNNELS`: wrap every IP packet in it (:func:`encapsulate`),
        with ``tunnel_id`` (key, session or VNI) between the ``tunnel_outer`` addresses.
    """

    linktype: int = LINKTYPE_ETHERNET
    vlans: tuple[int, ...] = ()
    vlan_tpids: tuple[int, ...] = (TPID_8021AD, TPID_8021Q)
    vlan_pcps: tuple[int, ...] = ()
    snaplen: int = 0
    start_ns: int = SAMPLE_EPOCH_NS
    truth: GroundTruth = field(default_factory=GroundTruth)
    packets: list[tuple[int, bytes]] = field(default_factory=list)  # (ts_ns, IP packet)
    fragments: str = "ports0"
    mpls: tuple[int, ...] = ()
    mpls_pw: bool = False
    mpls_tc: int = 0
    pppoe_session: int | None = None
    tunnel: str = ""
    tunnel_id: int = 0
    tunnel_outer: tuple[str, str] = ("192.0.2.1", "192.0.2.2")
    outer_truth: GroundTruth = field(default_factory=GroundTruth)
    raw_frames: list[tuple[int, bytes]] = field(default_factory=list)  # (ts_ns, frame)
    non_ip: int = 0
    _clock_ns: int = 0
    _ident: int = 0

    def __post_init__(self) -> None:
        self.truth.fragments = self.fragments

    def add(self, spec: FlowSpec) -> FlowSpec:
        """Generate every packet of ``spec`` and account it in :attr:`truth`."""
        ts = spec.start_ns if spec.start_ns is not None else self.start_ns + self._clock_ns
        for index in range(spec.packets):
            fragments = self._ip_packets(spec, index)
            if spec.reorder:
                fragments.reverse()
            for ip, fid, first in fragments:
                outer = ip
                if self.tunnel:
                    outer = encapsulate(ip, self.tunnel, self.tunnel_id, *self.tunnel_outer)
                    self.outer_truth.add_ip_packet(outer)
                self.packets.append((ts, outer))
                tcp = spec.proto_number == PROTO_TCP and first
                flags = spec.flags_for(index) if tcp else 0
                if spec.fragment > 0:
                    self.truth.add_fragment((spec.src, spec.dst, self._ident), fid, len(ip),
                                            first, flags)
                else:
                    self.truth.add(fid, len(ip), flags)
                ts += spec.fragment_gap_ns
            ts += spec.gap_ns
        self._clock_ns = max(self._clock_ns, ts - self.start_ns)
        return spec

    def add_truncated(self, ts_ns: int | None = None) -> None:
        """Add an IPv4 packet whose header is invalid (IHL 4): counted as ``trunc`` only."""
        bad = bytearray(ipv4_packet(bytes(4), bytes(4), PROTO_UDP, bytes(8)))
        bad[0] = 0x44
        ts = ts_ns if ts_ns is not None else self.start_ns + self._clock_ns
        self.packets.append((ts, bytes(bad)))
        self.truth.trunc += 1

    def add_frame(self, frame: bytes, ts_ns: int | None = None) -> None:
        """Add a link-layer frame as is (one that carries no IP): counted as ``non_ip``."""
        ts = ts_ns if ts_ns is not None else self.start_ns + self._clock_ns
        self.raw_frames.append((ts, frame))
        self.non_ip += 1

    def frames(self) -> list[tuple[int, bytes, int]]:
        """``(ts_ns, frame, orig_len)`` in time order, link layer added, snaplen applied."""
        out = [(ts, self._frame(ip)) for ts, ip in self.packets] + self.raw_frames
        capped = []
        for ts, frame in sorted(out, key=lambda p: p[0]):
            cap = frame[: self.snaplen] if self.snaplen else frame
            capped.append((ts, cap, len(frame)))
        return capped

    def _frame(self, ip: bytes) -> bytes:
        """One IP packet in its link layer (MPLS and PPPoE need Ethernet or SLL)."""
        payload, ethertype = ip, _ethertype(ip)
        if self.mpls:
            inner = b"\0\0\0\0" + ethernet_frame(ip) if self.mpls_pw else ip
            payload, ethertype = mpls_stack(self.mpls, self.mpls_tc) + inner, ETHERTYPE_MPLS
        if self.pppoe_session is not None:
            payload = pppoe_header(self.pppoe_session, payload, ethertype) + payload
            ethertype = ETHERTYPE_PPPOE
        return link_header(self.linktype, ip, self.vlans, self.vlan_tpids, ethertype,
                           self.vlan_pcps) + payload

    def write(self, path: str | Path, fmt: str = "pcap", nanosecond: bool = False) -> GroundTruth:
        """Write the capture (``fmt`` is ``"pcap"`` or ``"pcapng"``) and return the truth."""
        writer = write_pcapng if fmt == "pcapng" else write_pcap
        writer(path, self.linktype, self.frames(), nanosecond=nanosecond)
        return self.truth

    def _ip_packets(self, spec: FlowSpec, index: int) -> list[tuple[bytes, FlowId, bool]]:
        """The IP packet(s) of one packet of ``spec`` (several when fragmented).

        :return: ``(packet, flow id, carries the transport header)`` per IP packet.
        """
        src = ipaddress.ip_address(spec.src).packed
        dst = ipaddress.ip_address(spec.dst).packed
        body = transport_segment(spec, index, src, dst)
        self._ident += 1
        fid = spec.flow_id()
        if spec.fragment <= 0:
            return [(self._whole(spec, src, dst, body), fid, True)]
        step = max(8, spec.fragment // 8 * 8)
        chunks = [body[i : i + step] for i in range(0, len(body), step)]
        out = []
        for n, chunk in enumerate(chunks):
            more = n < len(chunks) - 1
            pkt = self._fragment(spec, src, dst, chunk, n * step, more)
            out.append((pkt, fid if n == 0 else fid._replace(sport=0, dport=0), n == 0))
        return out

    def _whole(self, spec: FlowSpec, src: bytes, dst: bytes, body: bytes) -> bytes:
        proto = spec.proto_number
        if spec.ip_version == 4:
            return ipv4_packet(src, dst, proto, body, tos=spec.tos, ttl=spec.ttl, ident=self._ident)
        nh, exts = proto, b""
        for kind in reversed(spec.ext_headers):
            exts, nh = _ext_header(kind, nh) + exts, kind
        return ipv6_packet(src, dst, nh, exts + body, tos=spec.tos, hop_limit=spec.ttl)

    def _fragment(
        self, spec: FlowSpec, src: bytes, dst: bytes, chunk: bytes, offset: int, more: bool
    ) -> bytes:
        proto = spec.proto_number
        if spec.ip_version == 4:
            frag = (0x2000 if more else 0) | offset // 8
            return ipv4_packet(
                src, dst, proto, chunk, tos=spec.tos, ttl=spec.ttl, ident=self._ident, frag=frag
            )
        frag_hdr = struct.pack("!BxHI", proto, offset | int(more), self._ident)
        return ipv6_packet(src, dst, 44, frag_hdr + chunk, tos=spec.tos, hop_limit=spec.ttl)


def link_header(
    linktype: int,
    ip: bytes,
    vlans: Sequence[int] = (),
    tpids: Sequence[int] = (TPID_8021AD, TPID_8021Q),
    ethertype: int | None = None,
    pcps: Sequence[int] = (),
) -> bytes:
    """The link-layer header to put in front of ``ip`` (or of a payload of ``ethertype``);
    ``pcps`` are the VLAN tags' priorities."""
    if ethertype is None:
        ethertype = _ethertype(ip)
    if linktype == LINKTYPE_ETHERNET:
        tags = b""
        tpid_list = [TPID_8021Q] * len(vlans)
        if len(vlans) > 1:
            tpid_list[0] = tpids[0]  # outer tag: service VLAN (802.1ad) by default
        pcp_list = [*pcps, *[0] * len(vlans)][:len(vlans)]
        for vid, tpid, pcp in zip(vlans, tpid_list, pcp_list, strict=True):
            tags += struct.pack("!HH", tpid, (pcp & 7) << 13 | vid & 0x0FFF)
        return b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + tags + struct.pack("!H", ethertype)
    if linktype == LINKTYPE_LINUX_SLL:  # packet type 4 = outgoing, ARPHRD_ETHER
        return struct.pack("!HHH8sH", 4, 1, 6, b"\x02\0\0\0\0\x01", ethertype)
    if linktype == LINKTYPE_LINUX_SLL2:  # protocol, reserved, ifindex, hatype, pkttype, halen
        return struct.pack("!HHIHBB8s", ethertype, 0, 2, 1, 0, 6, b"\x02\0\0\0\0\x01")
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return b""
    family = 2 if ethertype == ETHERTYPE_IPV4 else 10
    if linktype == LINKTYPE_NULL:  # address family in the writer's (here: little) byte order
        return struct.pack("<I", family)
    if linktype == LINKTYPE_LOOP:  # OpenBSD: network byte order, AF_INET6 is 24
        return struct.pack("!I", 2 if family == 2 else 24)
    if linktype == LINKTYPE_PPP:  # HDLC-like framing, then the PPP protocol
        return b"\xff\x03" + struct.pack("!H", _PPP_PROTOCOLS[ethertype])
    raise ValueError(f"unsupported link type {linktype}")


_PPP_PROTOCOLS = {ETHERTYPE_IPV4: 0x0021, ETHERTYPE_IPV6: 0x0057, ETHERTYPE_MPLS: 0x0281}


def _ethertype(ip: bytes) -> int:
    return ETHERTYPE_IPV6 if ip and ip[0] >> 4 == 6 else ETHERTYPE_IPV4


def ethernet_frame(ip: bytes, vlans: Sequence[int] = ()) -> bytes:
    """``ip`` in an Ethernet II frame (tunnel payloads, pseudowires)."""
    return link_header(LINKTYPE_ETHERNET, ip, vlans) + ip


def mpls_stack(labels: Sequence[int], tc: int = 0, ttl: int = 64) -> bytes:
    """RFC 3032 label stack entries, the bottom-of-stack bit on the last one."""
    return b"".join(
        struct.pack("!I", (label & 0xFFFFF) << 12 | tc << 9 | (i == len(labels) - 1) << 8 | ttl)
        for i, label in enumerate(labels)
    )


def pppoe_header(session: int, payload: bytes, ethertype: int) -> bytes:
    """RFC 2516 session header plus the PPP protocol field for a payload of ``ethertype``."""
    return struct.pack("!BBHHH", 0x11, 0, session, len(payload) + 2, _PPP_PROTOCOLS[ethertype])


def encapsulate(ip: bytes, tunnel: str, tunnel_id: int, outer_src: str, outer_dst: str,
                frame: bytes | None = None) -> bytes:
    """``ip`` inside one of :data:`TUNNELS`, in an outer IPv4/IPv6 packet between the two
    addresses (GRE flags and ERSPAN headers per RFC 2784/2890 and draft-foschiano-erspan).

    :param frame: for tunnels of Ethernet frames: this frame instead of ``ip`` in Ethernet.
    """
    frame = ethernet_frame(ip) if frame is None else frame
    if tunnel == "ipip":
        return _outer(outer_src, outer_dst, 4 if ip[0] >> 4 == 4 else 41, ip)
    if tunnel in ("vxlan", "geneve"):
        if tunnel == "vxlan":
            head, dport = struct.pack("!B3xI", 0x08, tunnel_id << 8), 4789
        else:  # 8 bytes of options (one experimental TLV) before the frame
            head = struct.pack("!BBHI", 2, 0, ETHERTYPE_TEB, tunnel_id << 8)
            head += struct.pack("!HBB4x", 0xFFFF, 0x80, 1)
            dport = 6081
        body = head + frame
        udp = struct.pack("!HHHH", 49152 + tunnel_id % 1000, dport, 8 + len(body), 0)
        return _outer(outer_src, outer_dst, PROTO_UDP, udp + body)
    if tunnel == "gre":
        gre = struct.pack("!HH", 0, _ethertype(ip)) + ip
    elif tunnel == "gre-key":
        gre = struct.pack("!HHI", 0x2000, _ethertype(ip), tunnel_id) + ip
    elif tunnel == "gre-teb":
        gre = struct.pack("!HHI", 0x2000, ETHERTYPE_TEB, tunnel_id) + frame
    elif tunnel == "erspan2":  # ver 1, vlan 0; cos, en, t, session; reserved, index
        gre = struct.pack("!HHI", 0x1000, 0x88BE, 7) + struct.pack(
            "!HHI", 1 << 12, tunnel_id & 0x3FF, 0) + frame
    elif tunnel == "erspan3":  # ver 2; session; timestamp; sgt, p/ft/hw/d/gra/o (o = 0)
        gre = struct.pack("!HHI", 0x1000, 0x22EB, 7) + struct.pack(
            "!HHIHH", 2 << 12, tunnel_id & 0x3FF, 12345, 0, 0) + frame
    else:
        raise ValueError(f"unknown tunnel {tunnel!r}")
    return _outer(outer_src, outer_dst, 47, gre)


def _outer(src: str, dst: str, proto: int, body: bytes) -> bytes:
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if len(s) == 4:
        return ipv4_packet(s, d, proto, body)
    return ipv6_packet(s, d, proto, body)


# --- file formats -------------------------------------------------------------------------


def write_pcap(
    path: str | Path,
    linktype: int,
    frames: Sequence[tuple[int, bytes, int]],
    nanosecond: bool = False,
    snaplen: int = 262144,
) -> None:
    """Write a classic little-endian pcap file from ``(ts_ns, data, orig_len)`` frames."""
    magic, div = (PCAP_MAGIC_NS, 1) if nanosecond else (PCAP_MAGIC_US, 1000)
    out = [struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for ts, data, orig in frames:
        sec, frac = divmod(ts, 10**9)
        out.append(struct.pack("<IIII", sec, frac // div, len(data), orig) + data)
    Path(path).write_bytes(b"".join(out))


def pcapng_block(block_type: int, body: bytes, order: str = "<") -> bytes:
    """One pcapng block: type, total length, ``body`` padded to 4 bytes, the length again, in
    the section's byte ``order`` (``"<"`` or ``">"``)."""
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def nflog_tlv(kind: int, value: bytes, pad: bytes = b"\0") -> bytes:
    """One LINKTYPE_NFLOG TLV: length and type in the capturing host's (little-endian) order,
    the value padded to 4 bytes with ``pad``."""
    return struct.pack("<HH", 4 + len(value), kind) + value + pad * (-len(value) % 4)


def write_pcapng(
    path: str | Path,
    linktype: int,
    frames: Sequence[tuple[int, bytes, int]],
    nanosecond: bool = False,
    snaplen: int = 262144,
) -> None:
    """Write a pcapng file: one section, one interface, one enhanced packet block per frame."""
    shb = pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    resol = 9 if nanosecond else 6
    opts = struct.pack("<HHB3x", 9, 1, resol) + struct.pack("<HH", 0, 0)  # if_tsresol, end
    idb = pcapng_block(1, struct.pack("<HHI", linktype, 0, snaplen) + opts)
    blocks = [shb, idb]
    div = 1 if nanosecond else 1000
    for ts, data, orig in frames:
        units = ts // div
        body = struct.pack("<IIIII", 0, units >> 32, units & 0xFFFFFFFF, len(data), orig) + data
        blocks.append(pcapng_block(6, body))
    Path(path).write_bytes(b"".join(blocks))


def read_frames(path: str | Path) -> Iterator[Frame]:
    """Read every frame of a pcap or pcapng file (either byte order)."""
    data = Path(path).read_bytes()
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        yield from _read_pcapng(data)
    else:
        yield from _read_pcap(data)


def _read_pcap(data: bytes) -> Iterator[Frame]:
    for endian in "<>":
        magic = struct.unpack_from(endian + "I", data)[0]
        if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            break
    else:
        raise ValueError("not a pcap or pcapng file")
    mult = 1 if magic == PCAP_MAGIC_NS else 1000
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0x0FFFFFFF
    off = 24
    while off + 16 <= len(data):
        sec, frac, caplen, orig = struct.unpack_from(endian + "IIII", data, off)
        yield Frame(sec * 10**9 + frac * mult, linktype, data[off + 16 : off + 16 + caplen], orig)
        off += 16 + caplen


def _read_pcapng(data: bytes) -> Iterator[Frame]:
    endian, off, ifaces = "<", 0, []  # ifaces: (linktype, ns per unit)
    while off + 12 <= len(data):
        if data[off : off + 4] == b"\x0a\x0d\x0d\x0a":
            endian = "<" if struct.unpack_from("<I", data, off + 8)[0] == 0x1A2B3C4D else ">"
            ifaces = []
        btype, blen = struct.unpack_from(endian + "II", data, off)
        body = data[off + 8 : off + blen - 4]
        if btype == 1:
            ifaces.append((struct.unpack_from(endian + "H", body)[0], _tsresol(body, endian)))
        elif btype == 6:
            iface, hi, lo, caplen, orig = struct.unpack_from(endian + "IIIII", body)
            linktype, unit = ifaces[iface]
            yield Frame(((hi << 32) | lo) * unit, linktype, body[20 : 20 + caplen], orig)
        elif btype == 3:
            linktype, unit = ifaces[0]
            orig = struct.unpack_from(endian + "I", body)[0]
            yield Frame(0, linktype, body[4 : 4 + orig], orig)
        off += blen


def _tsresol(idb_body: bytes, endian: str) -> int:
    """Nanoseconds per timestamp unit from an IDB's ``if_tsresol`` option (default µs)."""
    off = 8
    while off + 4 <= len(idb_body):
        code, length = struct.unpack_from(endian + "HH", idb_body, off)
        if code == 0:
            break
        if code == 9:
            value = idb_body[off + 4]
            per_second = 2 ** (value & 0x7F) if value & 0x80 else 10**value
            return max(1, 10**9 // per_second)
        off += 4 + length + (-length % 4)
    return 1000


def ip_of_frame(frame: Frame) -> bytes | None:
    """Strip the link layer (Ethernet with VLAN tags, SLL, SLL2, raw); ``None`` if not IP."""
    data, lt = frame.data, frame.linktype
    if lt in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return data
    if lt == LINKTYPE_LINUX_SLL:
        off, ethertype = 16, struct.unpack_from("!H", data, 14)[0]
    elif lt == LINKTYPE_LINUX_SLL2:
        off, ethertype = 20, struct.unpack_from("!H", data, 0)[0]
    elif lt == LINKTYPE_ETHERNET:
        off, ethertype = 14, struct.unpack_from("!H", data, 12)[0]
        while ethertype in (TPID_8021Q, TPID_8021AD, TPID_QINQ) and len(data) >= off + 4:
            ethertype, off = struct.unpack_from("!H", data, off + 2)[0], off + 4
    else:
        raise ValueError(f"unsupported link type {lt}")
    if ethertype == ETHERTYPE_PPPOE and len(data) >= off + 8:
        ppp = struct.unpack_from("!H", data, off + 6)[0]
        ethertype = {v: k for k, v in _PPP_PROTOCOLS.items()}.get(ppp, 0)
        off += 8
    if ethertype in (ETHERTYPE_MPLS, ETHERTYPE_MPLS_MC):
        while len(data) >= off + 4 and not data[off + 2] & 1:
            off += 4
        off += 4
        ethertype = {4: ETHERTYPE_IPV4, 6: ETHERTYPE_IPV6}.get(data[off] >> 4 if len(data) > off
                                                               else 0, 0)
    return data[off:] if ethertype in (ETHERTYPE_IPV4, ETHERTYPE_IPV6) else None


def truth_from_file(path: str | Path, fragments: str = "ports0") -> GroundTruth:
    """Derive ground truth from any capture file (independently of the builder)."""
    truth = GroundTruth(fragments=fragments)
    for frame in read_frames(path):
        ip = ip_of_frame(frame)
        if ip is not None:
            truth.add_ip_packet(ip)
    return truth
