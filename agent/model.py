"""The records that travel through the pipeline: packet observations, flow batches, NAT events.

This module owns the one layout every stage agrees on (the fields themselves are declared in
:mod:`agent.schema`):

* a **flow key** is a compact ``bytes`` object of one width per run (:data:`KEY`, 44 bytes
  with the default fields, more when ``[flow]`` adds MAC/VLAN/MPLS fields), built by the
  ingest side with :func:`make_key`; the cache hashes it as is;
* a **packet observation** is a plain tuple ``(key, length, tcp_flags, ts_ns, out_if)``
  (:data:`Packet`); ingest plugins emit lists of them in a :class:`PacketBatch`;
* a **flow batch** (:class:`FlowBatch`) is flows as columns (a NumPy structured array of the
  schema's :attr:`~agent.schema.FlowSchema.record_dtype`): kernel deltas on their way into the
  cache, expired flows on their way to aggregators and exporters;
* a **flow record** (:class:`FlowRecord`) is one row of a batch as a Python object: a
  convenience view for plugins that iterate, not the carrier;
* a **NAT event** (:class:`NatEvent`) is a translation start or stop, from conntrack;
* a :class:`Sampling` says that an ingest accounts one packet in N (declared once per
  ingest, never per record).

Addresses are packed network-order ``bytes`` (4 or 16) in records, and 16-byte columns (IPv4
zero-padded) in keys and batches. Times are wall-clock nanoseconds since the Unix epoch;
ingests convert kernel clocks at the boundary. Field comments name the IANA IPFIX Information
Element each field feeds (https://www.iana.org/assignments/ipfix/ipfix.xhtml).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, overload

import numpy as np

from netflow_agent import schema as _schema
from netflow_agent.schema import FlowSchema

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
# bytes 12 src_addr       sourceIPv4Address (8) / sourceIPv6Address (27), 16 bytes, IPv4
#                         zero-padded
# bytes 28 dst_addr       destinationIPv4Address (12) / destinationIPv6Address (28)
# bytes 44 ...            the schema's optional key fields (agent.schema), when configured
KEY = struct.Struct("!BBBBIHH16s16s")  # 44 bytes: the base key of both IP versions
KEY4 = KEY6 = KEY  # the names of the version-specific layouts before keys had one width

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
    ext: bytes = b"",
) -> bytes:
    """Pack a flow key; the one constructor third-party ingest plugins need.

    :param ip_version: 4 or 6.
    :param src_addr: packed source address, 4 or 16 bytes to match ``ip_version``.
    :param dst_port: destination port, or ``type << 8 | code`` for ICMP/ICMPv6.
    :param in_if: the observation interface: where an ingress flow entered, or where an
        egress flow left (``direction=DIRECTION_EGRESS``). Keying egress flows on their
        interface keeps two egress interfaces with the same 5-tuple apart.
    :param ext: the optional key fields, packed by
        :meth:`agent.schema.FlowSchema.pack_ext`; a key without them is zero-filled by the
        cache (the ingest could not see those fields).
    """
    return KEY.pack(ip_version, protocol, tos, direction, in_if, src_port, dst_port,
                    src_addr, dst_addr) + ext


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
    """Decode the base of a key built by :func:`make_key` (addresses 4 or 16 bytes)."""
    v, proto, tos, direction, in_if, sport, dport, src, dst = KEY.unpack_from(key)
    if v == 4:
        src, dst = src[:4], dst[:4]
    return FlowKey(v, proto, tos, direction, in_if, sport, dport, src, dst)


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
    """Counters already aggregated for one key since the last drain (a row of a
    :class:`FlowBatch` as an object; ``FlowBatch(source, [FlowDelta, ...])`` converts)."""

    key: bytes
    packets: int
    octets: int
    start_ns: int
    end_ns: int
    tcp_flags: int = 0
    out_if: int = 0  # the other interface (see Packet), 0 when unknown


# --- flow records ---------------------------------------------------------------------------

_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


@dataclass(slots=True)
class FlowRecord:
    """One flow as a Python object. Counters are deltas since the previous export.

    The view of one :class:`FlowBatch` row for plugins that iterate (``for r in batch``);
    edits made to it while iterating are kept (see :class:`FlowBatch`).
    """

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
    # optional fields ([flow], agent.schema); 0 / b"" when not configured or not seen
    src_mac: bytes = b""  # sourceMacAddress (56)
    dst_mac: bytes = b""  # destinationMacAddress (80)
    ethernet_type: int = 0  # ethernetType (256)
    vlan_id: int = 0  # vlanId (58): the outer tag
    vlan_priority: int = 0  # dot1qPriority (244)
    inner_vlan_id: int = 0  # dot1qCustomerVlanId (245)
    inner_vlan_priority: int = 0  # dot1qCustomerPriority (246)
    mpls_labels: tuple[int, ...] = ()  # mplsTopLabelStackSection (70), 71-79: 3-byte entries
    in_physdev: int = 0  # ingressPhysicalInterface (252)
    out_physdev: int = 0  # egressPhysicalInterface (253)
    tunnel_id: int = 0  # layer2SegmentId (351)
    extra: Mapping[str, Any] = field(default_factory=lambda: _NO_EXTRA)  # plugin fields

    def key(self) -> bytes:
        """The packed flow key of this record (base and optional fields of the active
        schema)."""
        return FlowBatch.from_records([self]).keys()[0]

    def to_dict(self) -> dict[str, object]:
        """A JSON-friendly view with printable addresses (logs, debug export, tests)."""
        out: dict[str, object] = {name: getattr(self, name) for name in _BASE_SLOTS}
        out["src_addr"] = str(ipaddress.ip_address(self.src_addr))
        out["dst_addr"] = str(ipaddress.ip_address(self.dst_addr))
        out["next_hop"] = str(ipaddress.ip_address(self.next_hop)) if self.next_hop else ""
        for name in _OPTIONAL_SLOTS:
            value = getattr(self, name)
            if value:
                out[name] = (value.hex(":") if isinstance(value, bytes)
                             else list(value) if isinstance(value, tuple) else value)
        out.update(self.extra)
        return out


_OPTIONAL_SLOTS = ("src_mac", "dst_mac", "ethernet_type", "vlan_id", "vlan_priority",
                   "inner_vlan_id", "inner_vlan_priority", "mpls_labels", "in_physdev",
                   "out_physdev", "tunnel_id")
_BASE_SLOTS = tuple(n for n in FlowRecord.__slots__  # type: ignore[attr-defined]
                    if n not in _OPTIONAL_SLOTS and n != "extra")
_ADDRESSES = ("src_addr", "dst_addr", "next_hop")


# --- flow batches -----------------------------------------------------------------------------


class FlowBatch:
    """Flows as columns: one NumPy structured array (``batch.flows``), a row per flow delta
    (a flow may have several rows in one batch, e.g. one per packet from the NFLOG C
    aggregator while it appends: rows with equal keys are added up by the cache).

    What ingests that aggregate before the agent (eBPF maps, the NFLOG C aggregator) hand the
    cache (``agent_cache_flows``: key columns plus ``packets octets start_ns end_ns tcp_flags
    out_if``, where ``in_if`` is the observation interface and ``out_if`` the other one), and
    what the cache hands aggregators and exporters (every column; ``in_if``/``out_if`` are then
    ingressInterface/egressInterface). The dtype is the active schema's
    :attr:`~agent.schema.FlowSchema.record_dtype`.

    Two ways to read it:

    * **columns**: ``batch.flows["octets"]``, ``batch.keys()``: the fast path built-in
      stages use (no Python object per flow);
    * **records**: ``for rec in batch``, ``batch[i]``, ``len(batch)``: :class:`FlowRecord`
      views, made once per batch on first use. Edits to those records (an aggregator filling
      ``dst_mask``) are kept: the next reader of :attr:`flows` gets the columns rebuilt from
      them. Assigning ``batch[:] = records`` replaces the content.

    :param flows: a record array, or a list of :class:`FlowDelta` or :class:`FlowRecord`.
    """

    __slots__ = ("source", "_flows", "_records", "schema", "dropped_packets", "dropped_bytes",
                 "trunc", "frag")

    def __init__(self, source: str = "",
                 flows: np.ndarray | Sequence[FlowDelta] | Sequence[FlowRecord] | None = None,
                 dropped_packets: int = 0, dropped_bytes: int = 0, trunc: int = 0,
                 frag: int = 0, schema: FlowSchema | None = None):
        self.source = source
        self.schema = schema or _schema.active()
        self.dropped_packets = dropped_packets  # packets the ingest could not account
        self.dropped_bytes = dropped_bytes
        self.trunc = trunc  # truncated or malformed packets (already in dropped_*)
        self.frag = frag  # fragments seen
        self._records: list[FlowRecord] | None = None
        if flows is None:
            self._flows = self.schema.empty()
        elif isinstance(flows, np.ndarray):
            self._flows = flows
        else:
            self._flows = self._from_objects(list(flows))

    def _from_objects(self, items: list[Any]) -> np.ndarray:
        if items and isinstance(items[0], FlowDelta):
            return deltas_to_array(items, self.schema)
        return records_to_array(items, self.schema)

    @classmethod
    def from_records(cls, records: Iterable[FlowRecord], source: str = "",
                     schema: FlowSchema | None = None) -> FlowBatch:
        """A batch holding ``records`` (e.g. what an aggregator returned)."""
        schema = schema or _schema.active()
        return cls(source, records_to_array(list(records), schema), schema=schema)

    # --- columns ----------------------------------------------------------------------------

    @property
    def flows(self) -> np.ndarray:
        """The record array (rebuilt from the records if someone iterated and edited)."""
        if self._records is not None:
            self._flows = records_to_array(self._records, self.schema)
            self._records = None
        return self._flows

    @flows.setter
    def flows(self, value: np.ndarray) -> None:
        self._flows, self._records = value, None

    def keys(self) -> list[bytes]:
        """The packed key of every row."""
        return self.schema.keys_of(self.flows).tolist()

    # --- records ----------------------------------------------------------------------------

    def records(self) -> list[FlowRecord]:
        """Every row as a :class:`FlowRecord` (made once; edits are kept)."""
        if self._records is None:
            self._records = array_to_records(self._flows, self.schema)
        return self._records

    def __len__(self) -> int:
        return len(self._records) if self._records is not None else len(self._flows)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[FlowRecord]:
        return iter(self.records())

    @overload
    def __getitem__(self, i: int) -> FlowRecord: ...
    @overload
    def __getitem__(self, i: slice) -> list[FlowRecord]: ...

    def __getitem__(self, i: int | slice) -> FlowRecord | list[FlowRecord]:
        return self.records()[i]

    def __setitem__(self, i: slice, value: Iterable[FlowRecord] | FlowBatch) -> None:
        """``batch[:] = other``: replace the content (the aggregation chain)."""
        if i != slice(None):
            raise TypeError("only batch[:] = ... replaces a FlowBatch's content")
        if isinstance(value, FlowBatch):
            self.flows = value.flows.copy()
        else:
            self._records = list(value)

    def __eq__(self, other: object) -> bool:
        """Row-wise equality with another batch, or with a list of records."""
        if isinstance(other, FlowBatch):
            return bool(np.array_equal(self.flows, other.flows))
        if isinstance(other, list):
            return self.records() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: FlowBatch | list[FlowRecord]) -> Any:
        """``batch + batch`` is a batch; ``batch + list`` a list of records."""
        if isinstance(other, FlowBatch):
            return concat([self, other], self.source)
        return self.records() + list(other)

    def __radd__(self, other: list[FlowRecord]) -> list[FlowRecord]:
        return list(other) + self.records()

    def __repr__(self) -> str:
        return f"FlowBatch({self.source!r}, {len(self)} flows)"


def concat(batches: Sequence[FlowBatch], source: str = "") -> FlowBatch:
    """One batch with the rows of all of ``batches`` (same schema)."""
    if len(batches) == 1:
        return batches[0]
    schema = batches[0].schema if batches else _schema.active()
    if not batches:
        return FlowBatch(source, schema=schema)
    return FlowBatch(source, np.concatenate([b.flows for b in batches]), schema=schema)


def _pad16(addr: bytes) -> bytes:
    return addr if len(addr) == 16 else addr.ljust(16, b"\0")


def deltas_to_array(deltas: Sequence[FlowDelta], schema: FlowSchema) -> np.ndarray:
    """:class:`FlowDelta` objects as a record array (keys shorter than the schema's are
    zero-filled: the ingest could not see the optional fields)."""
    size = schema.key_size
    keys = [d.key if len(d.key) == size else d.key.ljust(size, b"\0") for d in deltas]
    out = schema.empty(len(deltas))
    decoded = schema.decode_keys(keys)
    for f in schema.key_fields:
        out[f.name] = decoded[f.name]
    for name in ("packets", "octets", "start_ns", "end_ns", "tcp_flags", "out_if"):
        out[name] = [getattr(d, name) for d in deltas]
    return out


def records_to_array(records: Sequence[FlowRecord], schema: FlowSchema) -> np.ndarray:
    """:class:`FlowRecord` objects as a record array."""
    out = schema.empty(len(records))
    if not records:
        return out
    for f in schema.fields:
        name = f.name
        if name in _ADDRESSES:
            out[name] = [_pad16(getattr(r, name)) for r in records]
        elif name.startswith("mpls_label_"):
            n = int(name[11:]) - 1
            out[name] = [r.mpls_labels[n] if n < len(r.mpls_labels) else 0 for r in records]
        elif name in _RECORD_SLOTS:
            out[name] = [getattr(r, name) for r in records]
        else:
            out[name] = [r.extra.get(name, 0) for r in records]
    return out


_RECORD_SLOTS = frozenset(FlowRecord.__slots__)  # type: ignore[attr-defined]


def array_to_records(flows: np.ndarray, schema: FlowSchema) -> list[FlowRecord]:
    """One :class:`FlowRecord` per row (the slow path for plugins that iterate)."""
    names = flows.dtype.names or ()
    base = [n for n in _BASE_SLOTS if n in names]
    optional = [n for n in _OPTIONAL_SLOTS if n in names]
    labels = [n for n in names if n.startswith("mpls_label_")]
    plugin = [n for n in names if n not in _RECORD_SLOTS and not n.startswith("mpls_label_")]
    out = []
    columns = {n: flows[n].tolist() for n in names}
    for i in range(len(flows)):
        rec = FlowRecord(**{n: columns[n][i] for n in base})
        if rec.ip_version == 4:
            rec.src_addr, rec.dst_addr = rec.src_addr[:4], rec.dst_addr[:4]
            rec.next_hop = rec.next_hop[:4]
        if not any(rec.next_hop):
            rec.next_hop = b""
        for n in optional:
            setattr(rec, n, columns[n][i])
        if labels:
            stack = [columns[n][i] for n in labels]
            while stack and not stack[-1]:
                stack.pop()
            rec.mpls_labels = tuple(stack)
        if plugin:
            rec.extra = {n: columns[n][i] for n in plugin}
        out.append(rec)
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
