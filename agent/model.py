"""The records that travel through the pipeline: packet observations, flow records, NAT events.

This module owns the one layout every stage agrees on:

* a **flow key** is a compact ``bytes`` object (see :data:`KEY4` / :data:`KEY6`), built by the
  ingest side with :func:`make_key`; the cache hashes it as is, so it is small (20 or 44 bytes)
  and cheap to compare;
* a **packet observation** is a plain tuple ``(key, length, tcp_flags, ts_ns, out_if)``
  (:data:`Packet`); ingest plugins emit lists of them in a :class:`PacketBatch`;
* a **flow record** (:class:`FlowRecord`) is what the cache hands to aggregation and export;
* a **NAT event** (:class:`NatEvent`) is a translation start or stop, from conntrack;
* a :class:`Sampling` says that an ingest accounts one packet in N (declared once per
  ingest, never per record).

Addresses are packed network-order ``bytes`` (4 or 16): exactly what the encoders write.
Times are wall-clock nanoseconds since the Unix epoch; ingests convert kernel clocks at the
boundary. Field comments name the IANA IPFIX Information Element each field feeds
(https://www.iana.org/assignments/ipfix/ipfix.xhtml).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

# --- flow key ------------------------------------------------------------------------------
#
# byte  0  ip_version     ipVersion (60): 4 or 6
# byte  1  protocol       protocolIdentifier (4)
# byte  2  tos            ipClassOfService (5)
# byte  3  direction      flowDirection (61): 0 ingress, 1 egress
# bytes 4  in_if          the observation interface, u32: ingressInterface (10) for ingress
#                         flows, egressInterface (14) for egress flows (the cache maps it)
# bytes 8  src_port       sourceTransportPort (7), u16
# bytes 10 dst_port       destinationTransportPort (11), u16; ICMP: type << 8 | code
# bytes 12 src_addr       sourceIPv4Address (8) / sourceIPv6Address (27)
#          dst_addr       destinationIPv4Address (12) / destinationIPv6Address (28)
KEY4 = struct.Struct("!BBBBIHH4s4s")  # 20 bytes
KEY6 = struct.Struct("!BBBBIHH16s16s")  # 44 bytes
_KEY_HEAD = struct.Struct("!BBBBIHH")

DIRECTION_INGRESS = 0
DIRECTION_EGRESS = 1

# TCP control bits (tcpControlBits, IE 6)
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

# flowEndReason (IE 136), RFC 5102 section 5.11.3
END_IDLE = 1  # idle timeout (inactive_timeout)
END_ACTIVE = 2  # active timeout
END_OF_FLOW = 3  # end of flow detected (TCP FIN/RST)
END_FORCED = 4  # forced end (shutdown, reload)
END_LACK_OF_RESOURCES = 5  # evicted because the cache was full


def make_key(
    ip_version: int,
    protocol: int,
    src_addr: bytes,
    dst_addr: bytes,
    src_port: int = 0,
    dst_port: int = 0,
    tos: int = 0,
    in_if: int = 0,
    direction: int = DIRECTION_INGRESS,
) -> bytes:
    """Pack a flow key; the one constructor third-party ingest plugins need.

    :param ip_version: 4 or 6; decides the layout (:data:`KEY4` or :data:`KEY6`).
    :param src_addr: packed source address, 4 or 16 bytes to match ``ip_version``.
    :param dst_port: destination port, or ``type << 8 | code`` for ICMP/ICMPv6.
    :param in_if: the observation interface: where an ingress flow entered, or where an
        egress flow left (``direction=DIRECTION_EGRESS``). Keying egress flows on their
        interface keeps two egress interfaces with the same 5-tuple apart.
    """
    layout = KEY4 if ip_version == 4 else KEY6
    return layout.pack(
        ip_version, protocol, tos, direction, in_if, src_port, dst_port, src_addr, dst_addr
    )


class FlowKey(NamedTuple):
    """A decoded flow key (slow path: export, logs, tests)."""

    ip_version: int
    protocol: int
    tos: int
    direction: int
    in_if: int
    src_port: int
    dst_port: int
    src_addr: bytes
    dst_addr: bytes


def split_key(key: bytes) -> FlowKey:
    """Decode a key built by :func:`make_key`."""
    layout = KEY4 if key[0] == 4 else KEY6
    return FlowKey(*layout.unpack(key))


# --- packet observations --------------------------------------------------------------------

#: ``(key, length, tcp_flags, ts_ns, out_if)``: one packet, as ingest plugins emit it.
#: ``length`` is the IP length in bytes (octetDeltaCount), ``tcp_flags`` the TCP header's flag
#: byte (0 when not TCP), ``ts_ns`` the wall-clock capture time, ``out_if`` the *other*
#: interface when known, else 0: the egress interface of an ingress observation, the ingress
#: interface of an egress one (the key holds the observation interface).
Packet = tuple[bytes, int, int, int, int]


@dataclass(slots=True)
class PacketBatch:
    """Packets from one ingest instance plus the parse counters for the same packets.

    Ingest threads build a batch and hand it to ``emit``; the pipeline thread is the only one
    that reads it, so counters need no locking.
    """

    source: str  # instance name, e.g. "ingest.nflog[0]"
    packets: list[Packet] = field(default_factory=list)
    trunc: int = 0  # truncated or malformed packets, dropped (seed: "trunc")
    frag: int = 0  # fragments seen, accounted with ports 0 unless first (seed: "frag")
    dropped_packets: int = 0  # packets known lost before parsing (NFLOG seq gaps, ENOBUFS)
    dropped_bytes: int = 0  # bytes of the dropped packets when known (trunc bytes are not counted)
    clock_ns: int = 0  # for replay ingests: the capture clock after this batch, else 0


@dataclass(slots=True)
class FlowDelta:
    """Counters already aggregated by the kernel (eBPF) for one key since the last drain."""

    key: bytes
    packets: int
    octets: int
    start_ns: int
    end_ns: int
    tcp_flags: int = 0
    out_if: int = 0  # the other interface (see Packet), 0 when unknown


@dataclass(slots=True)
class FlowBatch:
    """Pre-aggregated flow deltas from one ingest instance (see :class:`FlowDelta`)."""

    source: str
    flows: list[FlowDelta] = field(default_factory=list)
    dropped_packets: int = 0  # packets the kernel could not account (map full)
    dropped_bytes: int = 0
    trunc: int = 0
    frag: int = 0


# --- flow records ---------------------------------------------------------------------------


@dataclass(slots=True)
class FlowRecord:
    """One exported flow. Counters are deltas since the previous export of the same flow."""

    ip_version: int  # ipVersion (60)
    protocol: int  # protocolIdentifier (4)
    src_addr: bytes  # sourceIPv4Address (8) / sourceIPv6Address (27)
    dst_addr: bytes  # destinationIPv4Address (12) / destinationIPv6Address (28)
    src_port: int = 0  # sourceTransportPort (7)
    dst_port: int = 0  # destinationTransportPort (11); ICMP type << 8 | code
    tos: int = 0  # ipClassOfService (5)
    in_if: int = 0  # ingressInterface (10)
    out_if: int = 0  # egressInterface (14)
    direction: int = DIRECTION_INGRESS  # flowDirection (61)
    packets: int = 0  # packetDeltaCount (2)
    octets: int = 0  # octetDeltaCount (1)
    start_ns: int = 0  # flowStartMilliseconds (152), wall-clock ns
    end_ns: int = 0  # flowEndMilliseconds (153), wall-clock ns
    tcp_flags: int = 0  # tcpControlBits (6), OR of all packets
    end_reason: int = 0  # flowEndReason (136), END_* constants
    src_mask: int = 0  # sourceIPv4PrefixLength (9) / sourceIPv6PrefixLength (29); 0 = unknown
    dst_mask: int = 0  # destinationIPv4PrefixLength (13) / destinationIPv6PrefixLength (30)
    next_hop: bytes = b""  # ipNextHopIPv4Address (15) / ipNextHopIPv6Address (62); b"" = unknown

    def key(self) -> bytes:
        """The packed flow key of this record."""
        return make_key(
            self.ip_version,
            self.protocol,
            self.src_addr,
            self.dst_addr,
            self.src_port,
            self.dst_port,
            self.tos,
            self.in_if,
            self.direction,
        )

    def to_dict(self) -> dict[str, object]:
        """A JSON-friendly view with printable addresses (logs, debug export, tests)."""
        out: dict[str, object] = {name: getattr(self, name) for name in self.__slots__}
        out["src_addr"] = str(ipaddress.ip_address(self.src_addr))
        out["dst_addr"] = str(ipaddress.ip_address(self.dst_addr))
        out["next_hop"] = str(ipaddress.ip_address(self.next_hop)) if self.next_hop else ""
        return out


# --- packet sampling -----------------------------------------------------------------------

# samplingAlgorithm (35) / NetFlow v9 SAMPLING_ALGORITHM values (RFC 3954, Cisco); the v5
# header's 2-bit sampling mode uses the same numbers (01 deterministic, 10 random).
SAMPLING_DETERMINISTIC = 1  # 1 in N, every N-th packet (count-based)
SAMPLING_RANDOM = 2  # 1 in N on average, each packet chosen at random
SAMPLING_HASH = 3  # flows chosen by a hash of their key (ipt_NETFLOW's v5 mode 3, sampler=hash)


@dataclass(frozen=True, slots=True)
class Sampling:
    """How an ingest chooses the packets it accounts: one in ``interval``.

    Counters of sampled flows are not scaled: exporters announce the sampling so collectors
    can multiply (``RunContext.declare_sampling``, docs/hooks.md).

    :param interval: samplingInterval (34): account 1 packet in N; 1 = every packet.
    :param algorithm: samplingAlgorithm (35): :data:`SAMPLING_DETERMINISTIC`,
        :data:`SAMPLING_RANDOM`, or :data:`SAMPLING_HASH` (flow sampling only).
    :param flows: ``True`` when whole flows are selected (the cache's ``sampler``, RFC 7014
        flow sampling), ``False`` when packets are (an ingest's packet sampling).
    """

    interval: int
    algorithm: int = SAMPLING_RANDOM
    flows: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.interval, int) or not 1 <= self.interval <= 0xFFFFFFFF:
            raise ValueError(f"sampling interval {self.interval!r} outside 1..2**32-1")
        if self.algorithm not in (SAMPLING_DETERMINISTIC, SAMPLING_RANDOM, SAMPLING_HASH):
            raise ValueError(f"sampling algorithm {self.algorithm!r}: expected "
                             f"{SAMPLING_DETERMINISTIC} (deterministic), {SAMPLING_RANDOM} "
                             f"(random) or {SAMPLING_HASH} (hash)")

    @property
    def sampled(self) -> bool:
        """Whether packets are left out (``interval`` > 1)."""
        return self.interval > 1

    def __str__(self) -> str:
        kind = {SAMPLING_DETERMINISTIC: "deterministic", SAMPLING_HASH: "hash"}.get(
            self.algorithm, "random")
        return f"{kind} 1/{self.interval}{' flows' if self.flows else ''}"


# --- NAT events -----------------------------------------------------------------------------

NAT_START = 1  # translation created (conntrack NEW)
NAT_STOP = 2  # translation deleted (conntrack DESTROY)


@dataclass(slots=True)
class NatEvent:
    """A NAT translation start or stop (RFC 8158 / ipt_NETFLOW ``natevents``).

    The pre-NAT tuple is conntrack's ORIGINAL direction; the post-NAT tuple is the REPLY
    direction reversed. Exporters choose the natEvent (230) value set (legacy 1/2 or RFC 8158).
    """

    event: int  # NAT_START or NAT_STOP
    time_ns: int  # observationTimeMilliseconds (323), wall-clock ns
    ip_version: int  # 4 or 6 (of the pre-NAT tuple)
    protocol: int  # protocolIdentifier (4)
    src_addr: bytes  # sourceIPv4Address (8), pre-NAT
    dst_addr: bytes  # destinationIPv4Address (12), pre-NAT
    src_port: int  # sourceTransportPort (7), pre-NAT; ICMP: id
    dst_port: int  # destinationTransportPort (11), pre-NAT
    post_src_addr: bytes  # postNATSourceIPv4Address (225) / IPv6 (281)
    post_dst_addr: bytes  # postNATDestinationIPv4Address (226) / IPv6 (282)
    post_src_port: int  # postNAPTSourceTransportPort (227)
    post_dst_port: int  # postNAPTDestinationTransportPort (228)
    snat: bool = False  # source translated (SNAT / MASQUERADE)
    dnat: bool = False  # destination translated (DNAT / port forward)
    conntrack_id: int = 0  # CTA_ID, to pair start and stop
    packets_orig: int = 0  # initiator packets, DESTROY only with nf_conntrack_acct
    octets_orig: int = 0  # initiatorOctets (231)
    packets_reply: int = 0
    octets_reply: int = 0  # responderOctets (232)

    def to_dict(self) -> dict[str, object]:
        """A JSON-friendly view with printable addresses."""
        out: dict[str, object] = {name: getattr(self, name) for name in self.__slots__}
        for name in ("src_addr", "dst_addr", "post_src_addr", "post_dst_addr"):
            out[name] = str(ipaddress.ip_address(getattr(self, name)))
        return out
