"""Link-layer headers in captures: find where the IP header starts.

Owns the link types a replay needs (tcpdump.org/linktypes.html): Ethernet (1) with any number
of 802.1Q/802.1ad tags, raw IP (101, and 12/14 as some systems write it, 228 IPv4, 229 IPv6),
Linux cooked capture v1 (113, SLL) and v2 (276, SLL2), and BSD loopback (0, NULL).
"""

from __future__ import annotations

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
_RAW_ALIASES = {12, 14, LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6}
_VLAN_TPIDS = {0x8100, 0x88A8, 0x9100}
_IP_ETHERTYPES = {0x0800, 0x86DD}
SUPPORTED = {LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2,
             *_RAW_ALIASES}


def ip_offset(linktype: int, frame: bytes) -> int:
    """Offset of the IP header in ``frame``, or -1 when the frame does not carry IP."""
    if linktype == LINKTYPE_ETHERNET:
        return _ethernet(frame, 12)
    if linktype in _RAW_ALIASES:
        return 0
    if linktype == LINKTYPE_LINUX_SLL:
        return _after_ethertype(frame, 14, 16)
    if linktype == LINKTYPE_LINUX_SLL2:
        return _after_ethertype(frame, 0, 20)
    if linktype == LINKTYPE_NULL:
        return 4 if len(frame) > 4 else -1
    return -1


def _ethernet(frame: bytes, off: int) -> int:
    for _ in range(4):  # at most a few stacked tags
        if len(frame) < off + 2:
            return -1
        etype = (frame[off] << 8) | frame[off + 1]
        if etype in _VLAN_TPIDS:
            off += 4
            continue
        return off + 2 if etype in _IP_ETHERTYPES else -1
    return -1


def _after_ethertype(frame: bytes, type_off: int, header_len: int) -> int:
    if len(frame) < header_len:
        return -1
    etype = (frame[type_off] << 8) | frame[type_off + 1]
    if etype in _VLAN_TPIDS:  # SLL with a VLAN tag left in the payload
        return _ethernet(frame, header_len + 2) if len(frame) > header_len + 4 else -1
    return header_len if etype in _IP_ETHERTYPES else -1
