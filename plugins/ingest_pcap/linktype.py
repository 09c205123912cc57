"""Link-layer headers in captures: find where the IP header starts, per pcap link type.

Owns the link types a replay needs (tcpdump.org/linktypes.html) and where each one puts its
EtherType or address family; what follows an EtherType (VLAN tags, QinQ, MPLS, PPPoE, SNAP)
is ``agent/linklayer.py``'s walk:

* Ethernet (1); Linux cooked capture v1 (113, SLL) and v2 (276, SLL2), whose protocol field is
  an EtherType (a VLAN tag the kernel stripped comes back in the payload as libpcap writes it);
* raw IP (101, and 12/14 as some systems write it, 228 IPv4, 229 IPv6);
* BSD loopback (0, NULL: the address family in the writer's byte order) and OpenBSD loopback
  (108, LOOP: network byte order); AF_INET 2 and AF_INET6 10/24/28/30 (Linux, *BSD, macOS);
* PPP (9) and PPP in HDLC-like framing (50), protocol 0x0021/0x0057/0x0281;
* Cisco HDLC (104), whose protocol field is an EtherType;
* Linux NFLOG (239: ``tcpdump -i nflog:N``), whose NFULA_PAYLOAD TLV holds the IP packet.

:func:`ip_offset` is the per-frame hot path; :func:`link_facts` is the opt-in twin that also
returns the L2 facts (MACs, VLAN tags, MPLS labels, PPPoE session; :class:`LinkFacts`) and, for
a frame that does not carry IP, the reason, which the ingest counts by name.
"""

from __future__ import annotations

import struct

from netflow_agent.api import (
    NOT_IP,
    PPP_IP,
    PPP_IPV6,
    PPP_MPLS_UC,
    TRUNCATED,
    LinkFacts,
    ethernet_facts,
    ethernet_ip_offset,
    facts_after,
    ip_after,
)

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_PPP_HDLC = 50
LINKTYPE_RAW = 101
LINKTYPE_C_HDLC = 104
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_NFLOG = 239
LINKTYPE_LINUX_SLL2 = 276
_RAW_ALIASES = frozenset({12, 14, LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6})
_AF_INET = 2
_AF_INET6 = frozenset({10, 24, 28, 30})  # Linux, NetBSD/OpenBSD, FreeBSD, macOS
_NFULA_PAYLOAD = 9
SUPPORTED = frozenset({LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_PPP, LINKTYPE_PPP_HDLC,
                       LINKTYPE_C_HDLC, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2,
                       LINKTYPE_NFLOG, *_RAW_ALIASES})
#: the EtherType each PPP protocol number stands for
_PPP_ETHERTYPES = {PPP_IP: 0x0800, PPP_IPV6: 0x86DD, PPP_MPLS_UC: 0x8847}


def ip_offset(linktype: int, frame: bytes) -> int:
    """Offset of the IP header in ``frame``, or a negative code when it does not carry IP."""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) >= 14:  # untagged IP inline: the common case pays no call
            etype = (frame[12] << 8) | frame[13]
            if etype == 0x0800 or etype == 0x86DD:
                return 14
        return ethernet_ip_offset(frame)
    if linktype in _RAW_ALIASES:
        return 0
    if linktype == LINKTYPE_LINUX_SLL:
        return ip_after(frame, _be16(frame, 14), 16) if len(frame) >= 16 else TRUNCATED
    if linktype == LINKTYPE_LINUX_SLL2:
        return ip_after(frame, _be16(frame, 0), 20) if len(frame) >= 20 else TRUNCATED
    etype, off = _ethertype_of(linktype, frame)
    return off if off < 0 else ip_after(frame, etype, off)


def nflog_payload_end(frame: bytes, off: int) -> int:
    """End of the NFULA_PAYLOAD TLV whose value starts at ``off`` (:func:`ip_offset` of a
    LINKTYPE_NFLOG frame): the IP packet stops there, before the TLV's 0-3 padding bytes and
    any later TLV. The TLV length is what NFLOG copied, never the packet's original length."""
    tlv_len = struct.unpack_from("<H", frame, off - 4)[0]
    return min(len(frame), off - 4 + tlv_len)


def link_facts(linktype: int, frame: bytes) -> LinkFacts:
    """:func:`ip_offset` plus what the link layer said (opt-in, slower)."""
    if linktype == LINKTYPE_ETHERNET:
        return ethernet_facts(frame)
    if linktype in _RAW_ALIASES:
        return LinkFacts(0)
    if linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return LinkFacts(TRUNCATED, reason="truncated link header")
        addr = frame[6:6 + min(8, _be16(frame, 4))]
        return facts_after(frame, _be16(frame, 14), 16, src_mac=bytes(addr))
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            return LinkFacts(TRUNCATED, reason="truncated link header")
        addr = frame[12:12 + min(8, frame[11])]
        return facts_after(frame, _be16(frame, 0), 20, src_mac=bytes(addr))
    if linktype not in SUPPORTED:
        return LinkFacts(NOT_IP, reason=f"linktype {linktype}")
    etype, off = _ethertype_of(linktype, frame)
    if off < 0:
        reason = "truncated link header" if off == TRUNCATED else f"{_NAMES[linktype]} not IP"
        return LinkFacts(off, reason=reason)
    return facts_after(frame, etype, off)


_NAMES = {LINKTYPE_NULL: "loopback", LINKTYPE_LOOP: "loopback", LINKTYPE_PPP: "ppp",
          LINKTYPE_PPP_HDLC: "ppp", LINKTYPE_C_HDLC: "c-hdlc", LINKTYPE_NFLOG: "nflog"}


def _be16(frame: bytes, off: int) -> int:
    return (frame[off] << 8) | frame[off + 1]


def _ethertype_of(linktype: int, frame: bytes) -> tuple[int, int]:
    """``(EtherType, payload offset)`` for the less common link types; offset < 0 if none."""
    if linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
        return _loopback(frame, linktype == LINKTYPE_LOOP)
    if linktype == LINKTYPE_PPP or linktype == LINKTYPE_PPP_HDLC:
        return _ppp(frame)
    if linktype == LINKTYPE_C_HDLC:
        return (_be16(frame, 2), 4) if len(frame) >= 4 else (0, TRUNCATED)
    if linktype == LINKTYPE_NFLOG:
        return _nflog(frame)
    return 0, NOT_IP


def _loopback(frame: bytes, network_order: bool) -> tuple[int, int]:
    if len(frame) < 4:
        return 0, TRUNCATED
    family = int.from_bytes(frame[:4], "big" if network_order else "little")
    if family > 0xFFFF:  # NULL written on a big-endian host: families are small numbers
        family = int.from_bytes(frame[:4], "big")
    if family == _AF_INET:
        return 0x0800, 4
    if family in _AF_INET6:
        return 0x86DD, 4
    return 0, NOT_IP


def _ppp(frame: bytes) -> tuple[int, int]:
    off = 2 if frame[:2] == b"\xff\x03" else 0
    if len(frame) < off + 1:
        return 0, TRUNCATED
    if frame[off] & 1:  # protocol field compression: one byte
        proto, off = frame[off], off + 1
    elif len(frame) < off + 2:
        return 0, TRUNCATED
    else:
        proto, off = _be16(frame, off), off + 2
    etype = _PPP_ETHERTYPES.get(proto)
    return (etype, off) if etype else (0, NOT_IP)


def _nflog(frame: bytes) -> tuple[int, int]:
    """LINKTYPE_NFLOG: a 4-byte header, then TLVs (length and type in host byte order)."""
    if len(frame) < 4:
        return 0, TRUNCATED
    etype = 0x86DD if frame[0] == 10 else 0x0800  # nflog_hdr.nflog_family
    off = 4
    while off + 4 <= len(frame):
        tlv_len, tlv_type = struct.unpack_from("<HH", frame, off)
        if tlv_len < 4:
            return 0, TRUNCATED
        if tlv_type == _NFULA_PAYLOAD:
            return etype, off + 4
        off += (tlv_len + 3) & ~3
    return 0, NOT_IP
