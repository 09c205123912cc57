"""IPv4/IPv6 header parsing into flow keys: the per-packet hot path shared by packet ingests.

Owns what ipt_NETFLOW's ``netflow_target`` did per packet: read the network header (RFC 791,
RFC 8200 with extension headers), the transport ports (TCP, UDP, UDP-Lite, SCTP, DCCP), the
TCP flags, ICMP/ICMPv6 type and code (carried in the destination port as NetFlow does), and
classify fragments and truncated packets with the seed's counters:

* ``frag``: every fragment is counted and accounted. Non-first fragments have no transport
  header: with a :class:`~agent.fragments.FragmentPolicy` of mode ``"track"`` they get the
  ports of their first fragment (``agent/fragments.py``), otherwise (``"ports0"``, and a parser
  built without a policy) their ports and flags are 0, as in ipt_NETFLOW.
* ``trunc``: the network header itself is missing or inconsistent. The packet is dropped,
  counted, and never raises.

:meth:`PacketParser.parse` returns the packet it parsed, or ``None``; packets that become
ready later (fragments released from the hold, outer flows of tunnels) are appended to
:attr:`PacketParser.extra`, which the caller drains: ``if parser.extra`` after each call, and
after :meth:`PacketParser.expire` / :meth:`PacketParser.flush`.

The input starts at the network header (NFLOG payloads, raw-IP pcaps); link layers are
stripped by the caller (see ``plugins/ingest_pcap/linktype.py``). Bytes accounted are the
header's total length, not the captured length, so a small snap length does not change them;
a length field of 0 (IPv4: a segmentation-offload super-packet captured on its sender, a BIG
TCP packet over 64 KiB; IPv6 payload length 0 with a payload: BIG TCP, or an RFC 2675
jumbogram whose Jumbo Payload option says the length) stands for the packet's length on the
wire, which the caller passes when it knows it (a pcap record's original length, as Wireshark
reads it) and NFLOG does not: then the packet is counted as truncated.
"""

from __future__ import annotations

import struct
from typing import Any

from netflow_agent.fragments import FragmentPolicy, FragmentTracker
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
#: extension headers walked to the transport behind them (length in 8-byte units). The
#: Mobility Header (135, RFC 6275) is not one of them: it is the upper layer (its Payload
#: Proto is always 59, "no next header"), so a flow of binding updates has protocol 135, as
#: ipt_NETFLOW's ipv6_ext_hdr() walk and tshark say
_EXT_LEN8 = frozenset({IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS})
_MAX_EXT_HEADERS = 8
#: The longest packet a length field or a capture's original length may claim: Linux's
#: GSO_MAX_SIZE (524,280 bytes) rounded up to 512 KiB; longer ones are corrupt (truncated)
MAX_PACKET_LEN = 512 * 1024


class PacketParser:
    """Turns raw IP packets into :data:`~agent.model.Packet` tuples and counts what it skips.

    One parser per ingest thread; :attr:`trunc`, :attr:`frag` and :attr:`trunc_bytes` are
    cumulative and read by the owner when it builds a batch.

    :param fragments: how to account non-first fragments; ``None`` = ports 0, no state.
    """

    __slots__ = ("trunc", "frag", "trunc_bytes", "extra", "tracker")

    def __init__(self, fragments: FragmentPolicy | None = None) -> None:
        self.trunc = 0
        self.frag = 0
        self.trunc_bytes = 0
        #: packets ready besides the one :meth:`parse` returned; the caller drains it
        self.extra: list[Packet] = []
        self.tracker = (FragmentTracker(fragments, self.extra)
                        if fragments is not None and fragments.tracking else None)

    def take_counters(self) -> tuple[int, int, int]:
        """Return and reset ``(trunc, frag, trunc_bytes)``."""
        out = (self.trunc, self.frag, self.trunc_bytes)
        self.trunc = self.frag = self.trunc_bytes = 0
        return out

    def expire(self, now_ns: int) -> None:
        """Release fragments that waited for their first fragment too long (to :attr:`extra`)."""
        if self.tracker is not None:
            self.tracker.expire(now_ns)

    def flush(self) -> None:
        """Release every waiting fragment (to :attr:`extra`); call it when the ingest stops."""
        if self.tracker is not None:
            self.tracker.flush()

    def stats(self) -> dict[str, int]:
        """Fragment tracking counters (empty without tracking)."""
        return self.tracker.stats() if self.tracker is not None else {}

    def parse(
        self,
        data: bytes | memoryview,
        ts_ns: int,
        in_if: int = 0,
        out_if: int = 0,
        direction: int = 0,
        wire_len: int = 0,
    ) -> Packet | None:
        """Parse one packet that starts at its IP header.

        ``wire_len`` is how long the IP packet was on the wire when the capture says so (a
        pcap record's original length less the link header), 0 when nothing says it (NFLOG).
        It is read only for a packet whose length field is 0 (see :func:`_offloaded_length`);
        one over :data:`MAX_PACKET_LEN` (a corrupt capture record) is no length.

        :return: the packet tuple, or ``None`` when it was truncated (then counted) or is a
            fragment waiting for its first fragment.
        """
        if wire_len > MAX_PACKET_LEN:
            wire_len = 0
        if len(data) >= 20 and data[0] >> 4 == 4:
            return self._ipv4(data, ts_ns, in_if, out_if, direction, wire_len)
        if len(data) >= 40 and data[0] >> 4 == 6:
            return self._ipv6(data, ts_ns, in_if, out_if, direction, wire_len)
        self.trunc += 1
        return None

    # Both methods below are the per-packet hot path: flat code, no helper calls on the
    # common TCP/UDP path (fragments take the slower ``_fragment*`` methods).

    def _ipv4(self, data, ts_ns, in_if, out_if, direction, wire_len):  # type: ignore[no-untyped-def]
        ver_ihl, tos, total, ident, frag, _ttl, proto, _csum, src, dst = _IP4.unpack_from(data)
        ihl = (ver_ihl & 0x0F) * 4
        if ihl < 20 or total < ihl:
            length = _offloaded_length(data, ihl, total, wire_len)
            if not length:
                self.trunc += 1
                self.trunc_bytes += total
                return None
            total = length
        if frag & 0x3FFF:  # MF set or offset != 0
            return self._fragment4(data, ihl, tos, total, ident, frag, proto, src, dst, ts_ns,
                                   in_if, out_if, direction)
        sport = dport = flags = 0
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

    def _fragment4(self, data, ihl, tos, total, ident, frag, proto, src, dst,  # type: ignore[no-untyped-def]
                   ts_ns, in_if, out_if, direction):
        self.frag += 1
        tracker = self.tracker
        if frag & 0x1FFF:  # not the first fragment: no transport header
            pkt = (KEY4.pack(4, proto, tos, direction, in_if, 0, 0, src, dst), total, 0, ts_ns,
                   out_if)
            return pkt if tracker is None else tracker.later((src, dst, proto, ident), pkt,
                                                             ts_ns)
        sport, dport, flags = transport(data, ihl, proto, IPPROTO_ICMP)
        if tracker is not None:
            tracker.first((src, dst, proto, ident), proto, sport, dport, ts_ns)
        return (
            KEY4.pack(4, proto, tos, direction, in_if, sport, dport, src, dst),
            total, flags, ts_ns, out_if,
        )

    def _ipv6(self, data, ts_ns, in_if, out_if, direction, wire_len):  # type: ignore[no-untyped-def]
        vtf, payload_len, nh, _hop, src, dst = _IP6.unpack_from(data)
        tos = (vtf >> 20) & 0xFF
        total = 40 + payload_len
        if not payload_len and nh != IPPROTO_NONE:
            total = _jumbo_length(data) or wire_len
            if not total:
                self.trunc += 1
                return None
        off = 40
        n = len(data)
        sport = dport = flags = 0
        frag_id = None
        for _ in range(_MAX_EXT_HEADERS):
            if nh in _EXT_LEN8:
                if n < off + 2:
                    break
                nh, off = data[off], off + (data[off + 1] + 1) * 8
            elif nh == IPPROTO_FRAGMENT:
                if n < off + 8:
                    break
                if frag_id is None:  # a packet is one fragment, however many headers say so
                    self.frag += 1
                    frag_id = (src, dst, bytes(data[off + 4:off + 8]))
                offset_flags = (data[off + 2] << 8) | data[off + 3]
                nh, off = data[off], off + 8
                if offset_flags & 0xFFF8:  # non-first fragment
                    pkt = (KEY6.pack(6, nh, tos, direction, in_if, 0, 0, src, dst),
                           total, 0, ts_ns, out_if)
                    tracker = self.tracker
                    return pkt if tracker is None else tracker.later(frag_id, pkt, ts_ns)
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
        if frag_id is not None and self.tracker is not None:
            self.tracker.first(frag_id, nh, sport, dport, ts_ns)
        return (
            KEY6.pack(6, nh, tos, direction, in_if, sport, dport, src, dst),
            total, flags, ts_ns, out_if,
        )


def _offloaded_length(data: Any, ihl: int, total: int, wire_len: int) -> int:
    """The length of an IPv4 packet whose total length field says 0: a TCP segmentation
    offload super-packet as captured on its sender, or a BIG TCP packet over 64 KiB. Its
    length is what was on the wire, ``wire_len``, as Wireshark reads it (the pcap record's
    original length, not the snap length). 0 when nothing says it (NFLOG copies at most
    65,531 bytes and carries no original length) and for every other inconsistent header:
    the caller counts the packet as truncated rather than account a wrong length."""
    if total == 0 and ihl >= 20 and len(data) >= ihl and wire_len >= ihl:
        return wire_len
    return 0


def _jumbo_length(data: Any) -> int:
    """The length of an IPv6 packet whose payload length is 0 from its Jumbo Payload option
    (RFC 2675: type 0xC2, 4 bytes, in a hop-by-hop header right after the fixed header,
    counting everything after the fixed header); 0 when there is none or its length is not a
    jumbogram's (RFC 2675: over 65,535) or longer than :data:`MAX_PACKET_LEN`."""
    n = len(data)
    if data[6] != IPPROTO_HOPOPTS or n < 48:
        return 0
    end = min(n, 40 + (data[41] + 1) * 8)
    off = 42
    while off < end:
        opt = data[off]
        if opt == 0:  # Pad1
            off += 1
            continue
        if off + 2 > end:
            break
        if opt == 0xC2 and data[off + 1] == 4 and off + 6 <= end:
            jumbo = int.from_bytes(data[off + 2:off + 6], "big")
            return 40 + jumbo if 65_535 < jumbo <= MAX_PACKET_LEN - 40 else 0
        off += 2 + data[off + 1]
    return 0


def transport(data: Any, off: int, proto: int, icmp: int) -> tuple[int, int, int]:
    """``(sport, dport, tcp_flags)`` of the transport header at ``off`` (ICMP type and code
    in ``dport``; ``icmp`` is the ICMP protocol number of the IP version); zeros when absent."""
    n = len(data)
    if proto in PORT_PROTOCOLS:
        if n < off + 4:
            return 0, 0, 0
        sport, dport = _PORTS.unpack_from(data, off)
        flags = data[off + 13] if proto == IPPROTO_TCP and n >= off + 14 else 0
        return sport, dport, flags
    if proto == icmp and n >= off + 2:
        return 0, (data[off] << 8) | data[off + 1], 0
    return 0, 0, 0
