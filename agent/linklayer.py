"""Layer 2 in front of an IP header: EtherType chains, VLAN tags, MPLS label stacks, PPPoE.

Owns the walk from an EtherType to the IPv4/IPv6 header it leads to, shared by every place a
frame can start: the pcap link types (``plugins/ingest_pcap/linktype.py``: Ethernet, Linux
cooked captures, Cisco HDLC, ...) and the tunnels that carry Ethernet frames
(``agent/tunnels.py``: VXLAN, Geneve, GRE transparent Ethernet bridging, ERSPAN).

What is recognised after an EtherType (IEEE 802.3 / IANA ``ieee-802-numbers``):

* ``0x0800`` IPv4, ``0x86DD`` IPv6: the IP header starts right after;
* VLAN tags (802.1Q ``0x8100``, 802.1ad ``0x88A8``, the older QinQ ``0x9100``/``0x9200``/
  ``0x9300``), any number up to :data:`MAX_VLAN_TAGS`;
* MPLS (RFC 3032; ``0x8847`` unicast, ``0x8848`` multicast): label stack entries up to the
  bottom-of-stack bit, at most :data:`MAX_MPLS_LABELS`. MPLS does not say what it carries, so
  the payload is guessed as tcpdump and Wireshark do: first nibble 4 is IPv4, 6 is IPv6, 0 is
  a pseudowire control word (RFC 4385) followed by an Ethernet frame (RFC 4448), which is
  walked again (at most :data:`MAX_NESTING` times). An Ethernet pseudowire *without* control
  word cannot be told from other payloads and is counted as not IP;
* PPPoE session (RFC 2516, ``0x8864``) with PPP protocol ``0x0021`` (IPv4), ``0x0057`` (IPv6)
  or ``0x0281`` (MPLS unicast);
* an 802.3 length field with an LLC/SNAP header (``AA AA 03``, OUI 0) and an EtherType.

Two walks with the same result, so that what nobody asked for costs nothing:
:func:`ip_after` (the hot path: an offset, or a negative :data:`NOT_IP`/:data:`TRUNCATED`/
:data:`TOO_DEEP`) and :func:`facts_after` (the opt-in slow path: the same offset plus the L2
facts a flow record may export later, :class:`LinkFacts`, and why a frame is not IP).
"""

from __future__ import annotations

from typing import NamedTuple

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_QINQ = (0x9100, 0x9200, 0x9300)
ETH_P_MPLS_UC = 0x8847
ETH_P_MPLS_MC = 0x8848
ETH_P_PPP_SES = 0x8864
ETH_P_TEB = 0x6558  # transparent Ethernet bridging (GRE, Geneve)
PPP_IP = 0x0021
PPP_IPV6 = 0x0057
PPP_MPLS_UC = 0x0281

VLAN_TPIDS = frozenset({ETH_P_8021Q, ETH_P_8021AD, *ETH_P_QINQ})
MAX_VLAN_TAGS = 8
MAX_MPLS_LABELS = 16
#: pseudowire Ethernet frames inside MPLS inside Ethernet ...: walked at most this deep
MAX_NESTING = 2

#: negative results of :func:`ip_after`
NOT_IP = -1  # another protocol (ARP, LLDP, an unknown EtherType, an MPLS payload not IP)
TRUNCATED = -2  # the frame ends inside a link-layer header
TOO_DEEP = -3  # more VLAN tags, MPLS labels or nested pseudowires than the bounds


class LinkFacts(NamedTuple):
    """What the link layer said about one frame (opt-in: :func:`facts_after`).

    :ivar ip_offset: where the IP header starts, or a negative code as :func:`ip_after`.
    :ivar src_mac: sourceMacAddress (56) material, ``b""`` when the link has none.
    :ivar dst_mac: destinationMacAddress (80) material, ``b""`` when the link has none.
    :ivar ethertype: the EtherType the frame starts with (ethernetType, 256), 0 if none.
    :ivar vlans: ``(tpid, vlan id, priority)`` per tag, outermost first (vlanId 58,
        dot1qPriority 244, dot1qCustomerVlanId 245 ...).
    :ivar mpls: label stack entries as 32-bit words, outermost first (RFC 3032: label
        ``e >> 12``, traffic class ``e >> 9 & 7``, bottom ``e >> 8 & 1``, TTL ``e & 0xFF``;
        mplsTopLabelStackSection 70 ... 79).
    :ivar pppoe_session: the PPPoE session id, or -1.
    :ivar payload_type: the EtherType (or PPP protocol) right in front of the payload.
    :ivar reason: why the frame is not IP (a short label for counters), else ``""``.
    """

    ip_offset: int
    src_mac: bytes = b""
    dst_mac: bytes = b""
    ethertype: int = 0
    vlans: tuple[tuple[int, int, int], ...] = ()
    mpls: tuple[int, ...] = ()
    pppoe_session: int = -1
    payload_type: int = 0
    reason: str = ""


# --- hot path ----------------------------------------------------------------------------


def ip_after(frame: bytes | memoryview, etype: int, off: int, depth: int = 0) -> int:
    """Offset of the IP header behind EtherType ``etype`` whose payload starts at ``off``.

    :return: the offset, or :data:`NOT_IP`, :data:`TRUNCATED` or :data:`TOO_DEEP`.
    """
    if etype == ETH_P_IP or etype == ETH_P_IPV6:
        return off
    n = len(frame)
    for _ in range(MAX_VLAN_TAGS):
        if etype not in VLAN_TPIDS:
            break
        if n < off + 4:
            return TRUNCATED
        etype = (frame[off + 2] << 8) | frame[off + 3]
        off += 4
        if etype == ETH_P_IP or etype == ETH_P_IPV6:
            return off
    else:
        if etype in VLAN_TPIDS:
            return TOO_DEEP
    if etype == ETH_P_MPLS_UC or etype == ETH_P_MPLS_MC:
        return _mpls(frame, off, depth)
    if etype == ETH_P_PPP_SES:
        return _pppoe(frame, off, depth)
    if etype < 0x0600:  # an 802.3 length: LLC, maybe SNAP with an EtherType
        return _snap(frame, off, depth)
    return NOT_IP


def ethernet_ip_offset(frame: bytes | memoryview, off: int = 0, depth: int = 0) -> int:
    """Offset of the IP header in the Ethernet frame starting at ``off`` (see :func:`ip_after`)."""
    if len(frame) < off + 14:
        return TRUNCATED
    return ip_after(frame, (frame[off + 12] << 8) | frame[off + 13], off + 14, depth)


def _mpls(frame: bytes | memoryview, off: int, depth: int) -> int:
    n = len(frame)
    for _ in range(MAX_MPLS_LABELS):
        if n < off + 4:
            return TRUNCATED
        bottom = frame[off + 2] & 1
        off += 4
        if bottom:
            break
    else:
        return TOO_DEEP
    if n <= off:
        return TRUNCATED
    nibble = frame[off] >> 4
    if nibble == 4 or nibble == 6:
        return off
    if nibble == 0:  # pseudowire control word, then an Ethernet frame
        if depth >= MAX_NESTING:
            return TOO_DEEP
        return ethernet_ip_offset(frame, off + 4, depth + 1)
    return NOT_IP


def _pppoe(frame: bytes | memoryview, off: int, depth: int) -> int:
    if len(frame) < off + 8:
        return TRUNCATED
    if frame[off] != 0x11 or frame[off + 1] != 0:  # version 1, type 1, code 0 (session data)
        return NOT_IP
    proto = (frame[off + 6] << 8) | frame[off + 7]
    if proto == PPP_IP or proto == PPP_IPV6:
        return off + 8
    if proto == PPP_MPLS_UC:
        return _mpls(frame, off + 8, depth)
    return NOT_IP


def _snap(frame: bytes | memoryview, off: int, depth: int) -> int:
    if len(frame) < off + 8:
        return TRUNCATED
    if frame[off] != 0xAA or frame[off + 1] != 0xAA or frame[off + 2] != 3 \
            or frame[off + 3] or frame[off + 4] or frame[off + 5]:
        return NOT_IP
    etype = (frame[off + 6] << 8) | frame[off + 7]
    if etype < 0x0600:
        return NOT_IP
    return ip_after(frame, etype, off + 8, depth)


# --- opt-in: the facts ---------------------------------------------------------------------


def ethernet_facts(frame: bytes | memoryview, off: int = 0) -> LinkFacts:
    """:func:`ethernet_ip_offset` with the facts (MACs, tags, labels)."""
    if len(frame) < off + 14:
        return LinkFacts(TRUNCATED, reason="truncated link header")
    etype = (frame[off + 12] << 8) | frame[off + 13]
    return facts_after(frame, etype, off + 14, dst_mac=bytes(frame[off:off + 6]),
                       src_mac=bytes(frame[off + 6:off + 12]))


def facts_after(frame: bytes | memoryview, etype: int, off: int, *, src_mac: bytes = b"",
                dst_mac: bytes = b"") -> LinkFacts:
    """:func:`ip_after` with the facts; same offset for every input (tests check it)."""
    walk = _FactsWalk(frame)
    off = walk.after(etype, off, 0)
    reason = "" if off >= 0 else walk.reason or _REASONS[off]
    return LinkFacts(off, src_mac, dst_mac, etype, tuple(walk.vlans), tuple(walk.mpls),
                     walk.session, walk.payload_type, reason)


_REASONS = {NOT_IP: "not IP", TRUNCATED: "truncated link header",
            TOO_DEEP: "too many tags or labels"}


class _FactsWalk:
    """The slow twin of :func:`ip_after`, recording what it crosses."""

    def __init__(self, frame: bytes | memoryview):
        self.frame = frame
        self.vlans: list[tuple[int, int, int]] = []
        self.mpls: list[int] = []
        self.session = -1
        self.payload_type = 0
        self.reason = ""

    def after(self, etype: int, off: int, depth: int) -> int:
        frame, n = self.frame, len(self.frame)
        tags = 0
        while etype in VLAN_TPIDS:
            if tags == MAX_VLAN_TAGS:
                return TOO_DEEP
            if n < off + 4:
                return TRUNCATED
            tci = (frame[off] << 8) | frame[off + 1]
            self.vlans.append((etype, tci & 0x0FFF, tci >> 13))
            etype = (frame[off + 2] << 8) | frame[off + 3]
            off += 4
            tags += 1
        self.payload_type = etype
        if etype == ETH_P_IP or etype == ETH_P_IPV6:
            return off
        if etype == ETH_P_MPLS_UC or etype == ETH_P_MPLS_MC:
            return self.mpls_payload(off, depth)
        if etype == ETH_P_PPP_SES:
            return self.pppoe(off, depth)
        if etype < 0x0600:
            return self.snap(off, depth)
        self.reason = f"ethertype 0x{etype:04x}"
        return NOT_IP

    def mpls_payload(self, off: int, depth: int) -> int:
        frame, n = self.frame, len(self.frame)
        for _ in range(MAX_MPLS_LABELS):
            if n < off + 4:
                return TRUNCATED
            entry = int.from_bytes(frame[off:off + 4], "big")
            self.mpls.append(entry)
            off += 4
            if entry & 0x100:
                break
        else:
            return TOO_DEEP
        if n <= off:
            return TRUNCATED
        nibble = frame[off] >> 4
        if nibble == 4 or nibble == 6:
            return off
        if nibble == 0:
            if depth >= MAX_NESTING:
                return TOO_DEEP
            if n < off + 18:
                return TRUNCATED
            return self.after((frame[off + 16] << 8) | frame[off + 17], off + 18, depth + 1)
        self.reason = "mpls payload not IP"
        return NOT_IP

    def pppoe(self, off: int, depth: int) -> int:
        frame = self.frame
        if len(frame) < off + 8:
            return TRUNCATED
        if frame[off] != 0x11 or frame[off + 1] != 0:
            self.reason = "pppoe not session data"
            return NOT_IP
        self.session = (frame[off + 2] << 8) | frame[off + 3]
        proto = (frame[off + 6] << 8) | frame[off + 7]
        self.payload_type = proto
        if proto == PPP_IP or proto == PPP_IPV6:
            return off + 8
        if proto == PPP_MPLS_UC:
            return self.mpls_payload(off + 8, depth)
        self.reason = f"ppp protocol 0x{proto:04x}"
        return NOT_IP

    def snap(self, off: int, depth: int) -> int:
        frame = self.frame
        if len(frame) < off + 8:
            return TRUNCATED
        if bytes(frame[off:off + 6]) != b"\xaa\xaa\x03\0\0\0":
            self.reason = "802.3 llc"
            return NOT_IP
        etype = (frame[off + 6] << 8) | frame[off + 7]
        if etype < 0x0600:
            self.reason = "802.3 llc"
            return NOT_IP
        return self.after(etype, off + 8, depth)
