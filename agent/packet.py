"""IPv4/IPv6 header parsing into flow keys: the per-packet hot path shared by packet ingests.

Owns what ipt_NETFLOW's ``netflow_target`` did per packet: read the network header (RFC 791,
RFC 8200 with extension headers), the transport ports (TCP, UDP, UDP-Lite, SCTP, DCCP), the
TCP flags, ICMP/ICMPv6 type and code (carried in the destination port as NetFlow does), and
classify fragments and truncated packets with the seed's counters:

* ``frag``: every fragment is counted; non-first fragments have no transport header, so their
  ports (and flags) are 0. They are still accounted.
* ``trunc``: the network header itself is missing or inconsistent. The packet is dropped,
  counted, and never raises.

The input starts at the network header (NFLOG payloads, raw-IP pcaps); link layers are
stripped by the caller (see ``plugins/ingest_pcap/linktype.py``). Bytes accounted are the
header's total length, not the captured length, so a small snap length does not change them.
"""

from __future__ import annotations

import struct

from netflow_agent.model import KEY4, KEY6, Packet

_IP4 = struct.Struct("!BBHHHBBH4s4s")  # ver_ihl tos total_len id frag ttl proto csum src dst
_IP6 = struct.Struct("!IHBB16s16s")  # ver_tc_flow payload_len next_header hop_limit src dst
_PORTS = struct.Struct("!HH")

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_DCCP = 33
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
IPPROTO_NONE = 59
IPPROTO_DSTOPTS = 60
IPPROTO_MH = 135
IPPROTO_SCTP = 132
IPPROTO_UDPLITE = 136

#: protocols whose header starts with 16-bit source and destination ports
PORT_PROTOCOLS = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_DCCP, IPPROTO_SCTP, IPPROTO_UDPLITE})
_EXT_LEN8 = frozenset({IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS, IPPROTO_MH})
_MAX_EXT_HEADERS = 8


class PacketParser:
    """Turns raw IP packets into :data:`~agent.model.Packet` tuples and counts what it skips.

    One parser per ingest thread; :attr:`trunc`, :attr:`frag` and :attr:`trunc_bytes` are
    cumulative and read by the owner when it builds a batch.
    """

    __slots__ = ("trunc", "frag", "trunc_bytes")

    def __init__(self) -> None:
        self.trunc = 0
        self.frag = 0
        self.trunc_bytes = 0

    def take_counters(self) -> tuple[int, int, int]:
        """Return and reset ``(trunc, frag, trunc_bytes)``."""
        out = (self.trunc, self.frag, self.trunc_bytes)
        self.trunc = self.frag = self.trunc_bytes = 0
        return out

    def parse(
        self,
        data: bytes | memoryview,
        ts_ns: int,
        in_if: int = 0,
        out_if: int = 0,
        direction: int = 0,
    ) -> Packet | None:
        """Parse one packet that starts at its IP header.

        :return: the packet tuple, or ``None`` when it was truncated (then counted).
        """
        if len(data) >= 20 and data[0] >> 4 == 4:
            return self._ipv4(data, ts_ns, in_if, out_if, direction)
        if len(data) >= 40 and data[0] >> 4 == 6:
            return self._ipv6(data, ts_ns, in_if, out_if, direction)
        self.trunc += 1
        return None

    # Both methods below are the per-packet hot path: flat code, no helper calls on the
    # common TCP/UDP path.

    def _ipv4(self, data, ts_ns, in_if, out_if, direction):  # type: ignore[no-untyped-def]
        ver_ihl, tos, total, _id, frag, _ttl, proto, _csum, src, dst = _IP4.unpack_from(data)
        ihl = (ver_ihl & 0x0F) * 4
        if ihl < 20 or total < ihl:
            self.trunc += 1
            self.trunc_bytes += total
            return None
        sport = dport = flags = 0
        if frag & 0x3FFF:  # MF set or offset != 0
            self.frag += 1
            if frag & 0x1FFF:  # not the first fragment: no transport header
                return (
                    KEY4.pack(4, proto, tos, direction, in_if, 0, 0, src, dst),
                    total, 0, ts_ns, out_if,
                )
        if proto in PORT_PROTOCOLS:
            if len(data) >= ihl + 4:
                sport, dport = _PORTS.unpack_from(data, ihl)
                if proto == IPPROTO_TCP and len(data) >= ihl + 14:
                    flags = data[ihl + 13]
        elif proto == IPPROTO_ICMP and len(data) >= ihl + 2:
            dport = (data[ihl] << 8) | data[ihl + 1]
        return (
            KEY4.pack(4, proto, tos, direction, in_if, sport, dport, src, dst),
            total, flags, ts_ns, out_if,
        )

    def _ipv6(self, data, ts_ns, in_if, out_if, direction):  # type: ignore[no-untyped-def]
        vtf, payload_len, nh, _hop, src, dst = _IP6.unpack_from(data)
        tos = (vtf >> 20) & 0xFF
        total = 40 + payload_len
        off = 40
        n = len(data)
        sport = dport = flags = 0
        fragmented = False
        for _ in range(_MAX_EXT_HEADERS):
            if nh in _EXT_LEN8:
                if n < off + 2:
                    break
                nh, off = data[off], off + (data[off + 1] + 1) * 8
            elif nh == IPPROTO_FRAGMENT:
                if n < off + 8:
                    break
                if not fragmented:  # a packet is one fragment, however many headers say so
                    self.frag += 1
                    fragmented = True
                offset_flags = (data[off + 2] << 8) | data[off + 3]
                nh, off = data[off], off + 8
                if offset_flags & 0xFFF8:  # non-first fragment
                    return (
                        KEY6.pack(6, nh, tos, direction, in_if, 0, 0, src, dst),
                        total, 0, ts_ns, out_if,
                    )
            elif nh == IPPROTO_AH:
                if n < off + 2:
                    break
                nh, off = data[off], off + (data[off + 1] + 2) * 4
            else:
                break
        if nh in PORT_PROTOCOLS:
            if n >= off + 4:
                sport, dport = _PORTS.unpack_from(data, off)
                if nh == IPPROTO_TCP and n >= off + 14:
                    flags = data[off + 13]
        elif nh == IPPROTO_ICMPV6 and n >= off + 2:
            dport = (data[off] << 8) | data[off + 1]
        return (
            KEY6.pack(6, nh, tos, direction, in_if, sport, dport, src, dst),
            total, flags, ts_ns, out_if,
        )
