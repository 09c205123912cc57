"""NetFlow v5 export packets (Cisco; no RFC), as ipt_NETFLOW writes them, with its bugs fixed.

This module owns the v5 wire layout and is a pure function of records plus an
:class:`~.state.ExportState`. Reference: ``shared/PROTOCOLS.md`` section 6.1; Cisco "NetFlow
Export Datagram Format" (v5); ipt_NETFLOW ``ipt_NETFLOW.h`` ``struct netflow5_*``.

Differences from ipt_NETFLOW: ``unix_nsecs`` carries nanoseconds (ipt_NETFLOW wrote µs), and
sysUpTime counts from the agent's start.

* At most :data:`MAX_RECORDS` (30) records per packet: 24 + 30 x 48 = 1464 bytes.
* ``flow_sequence`` = flows exported before this packet (v5 counts flows, not packets).
* IPv6 flows cannot be carried: they are skipped and counted (``Tally.skipped``).
* Counters are 32-bit: a flow with more than 2**32-1 packets or octets is exported as several
  records that share its key and times (:func:`split_rows`), as ipt_NETFLOW exports and
  restarts a flow before its counters wrap.
* The record has a fixed layout: the optional flow fields of ``[flow]`` (MAC, VLAN, MPLS,
  physdev, plugin fields) are not exported (a dry run warns).
* Records are written from the batch columns in bulk (:data:`RECORD_FIELDS`: one C pass
  over the IPv4 rows, ``agent/wire.py``), never one Python object per flow.
* ICMP type/code travel in the destination port (``type << 8 | code``).
* First/Last of a time before the uptime origin (a start of 0 from a crafted capture, an end
  before the agent's start) are 0, never after the header's sysUpTime (as v9's, RFC 3954).
* ``sampling_interval`` (header): mode in the top 2 bits (01 deterministic, 10 random, 11 hash
  flow sampling as ipt_NETFLOW), the
  interval in the low 14 bits (:func:`sampling_field`); 0 when every packet is accounted.
  NAT pseudo-flows are never sampled and always carry 0.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from netflow_agent.api import (
    SAMPLING_DETERMINISTIC,
    SAMPLING_HASH,
    EncodeError,
    FlowBatch,
    FlowRecord,
    PackedRecords,
    RowClasses,
    Sampling,
    UptimeMs,
    classify_rows,
    flow_columns,
    frame_packets,
    join_records,
    pack_template,
    template_dtype,
)

from .state import UINT32_MASK, ExportState

VERSION = 5
MAX_RECORDS = 30
COUNTER_MAX = UINT32_MASK
#: the most records one flow is split into (:func:`split_rows`): 2**16 x (2**32 - 1) packets
#: or octets; a larger counter is refused, not made into billions of rows
MAX_SPLIT = 65_536

# Header, 24 bytes:
# version(2) count(2) sys_uptime(4, ms) unix_secs(4) unix_nsecs(4) flow_sequence(4)
# engine_type(1) engine_id(1) sampling_interval(2: mode 2 bits, interval 14 bits)
HEADER = struct.Struct("!HHIIIIBBH")
_SEQUENCE_AT = 16  # flow_sequence's offset in HEADER

# Record, 48 bytes:
# srcaddr(4) dstaddr(4) nexthop(4) input(2) output(2) dPkts(4) dOctets(4) First(4) Last(4)
# srcport(2) dstport(2) pad1(1) tcp_flags(1) prot(1) tos(1) src_as(2) dst_as(2)
# src_mask(1) dst_mask(1) pad2(2)
RECORD = struct.Struct("!4s4s4sHHIIIIHHxBBBHHBB2x")

_NO_ADDR = b"\0\0\0\0"

#: the largest interval the header's 14 bits hold (ipt_NETFLOW's sampler limit too)
SAMPLING_INTERVAL_MAX = 0x3FFF  # also in __init__.py (dry-run check)
_MODE_DETERMINISTIC = 0b01
_MODE_RANDOM = 0b10
_MODE_HASH = 0b11  # ipt_NETFLOW's sampler=hash


def sampling_field(sampling: Sampling | None) -> int:
    """The header's ``sampling_interval`` for ``sampling``: mode << 14 | interval.

    :param sampling: the agent's sampling, or ``None`` (every packet: 0).
    :raises EncodeError: the interval exceeds :data:`SAMPLING_INTERVAL_MAX`; scaling by a
        clamped value would be wrong, so the caller must decide (the exporter sends 0 and
        says so).
    """
    if sampling is None or not sampling.sampled:
        return 0
    if sampling.interval > SAMPLING_INTERVAL_MAX:
        raise EncodeError(f"sampling 1/{sampling.interval} does not fit the NetFlow v5 header "
                          f"(14 bits, at most 1/{SAMPLING_INTERVAL_MAX})")
    mode = {SAMPLING_DETERMINISTIC: _MODE_DETERMINISTIC, SAMPLING_HASH: _MODE_HASH}.get(
        sampling.algorithm, _MODE_RANDOM)
    return mode << 14 | sampling.interval


@dataclass(slots=True)
class Tally:
    """What an encoder call produced besides the bytes (filled by the encoder).

    :ivar records: data records per returned datagram (lost-record accounting).
    :ivar skipped: input records that cannot be carried (IPv6 in v5).
    :ivar split: extra records created by splitting oversized counters.
    """

    records: list[int] = field(default_factory=list)
    skipped: int = 0
    split: int = 0


def split_rows(flows: np.ndarray, tally: Tally, limit: int = COUNTER_MAX) -> np.ndarray:
    """Split the rows whose packets or octets exceed ``limit`` into rows within it.

    A flow becomes ``max(ceil(packets / limit), ceil(octets / limit))`` consecutive rows with
    its key and times; packets and octets are spread evenly, the first rows taking the
    remainder, so the parts sum to the flow's counters exactly. Rows that fit are kept as
    they are (the usual case costs one comparison per row).

    :param flows: a record array (not modified).
    :param tally: ``split`` grows by the rows added.
    :return: ``flows`` itself when nothing overflows, else the expanded copy.
    :raise EncodeError: a flow would need more than :data:`MAX_SPLIT` records (a counter
        near 2**64 made 2**32 rows: MemoryError, the flows neither exported nor counted);
        the exporter drops it and counts it as an encode error.
    """
    packets, octets = flows["packets"], flows["octets"]
    if not len(flows) or max(int(packets.max()), int(octets.max())) <= limit:
        return flows
    lim = np.uint64(limit)
    parts = np.maximum(np.maximum(packets // lim + (packets % lim != 0),
                                  octets // lim + (octets % lim != 0)), 1).astype(np.int64)
    if int(parts.max()) > MAX_SPLIT:
        raise EncodeError(f"a flow's counters ({int(packets[parts.argmax()])} packets,"
                          f" {int(octets[parts.argmax()])} octets) need more than {MAX_SPLIT}"
                          f" records of {limit}")
    rows = np.repeat(np.arange(len(flows)), parts)
    nth = (np.arange(len(rows)) - np.repeat(np.cumsum(parts) - parts, parts)).astype(np.uint64)
    n = parts[rows].astype(np.uint64)
    out = flows[rows]
    out["packets"] = packets[rows] // n + (nth < packets[rows] % n)
    out["octets"] = octets[rows] // n + (nth < octets[rows] % n)
    tally.split += len(rows) - len(flows)
    return out


#: the record as template fields, (IE, length) in wire order, written from the columns in
#: one C pass (:func:`~agent.wire.pack_template`); IE 0: zero bytes (pad1, src_as and
#: dst_as, which the agent does not know, pad2)
RECORD_FIELDS = (
    (8, 4), (12, 4), (15, 4),  # srcaddr, dstaddr, nexthop: the addresses' first 4 bytes
    (10, 2), (14, 2),  # input, output: the ifIndexes' low 16 bits
    (2, 4), (1, 4),  # dPkts, dOctets (split to fit first)
    (22, 4), (21, 4),  # First, Last: sysUpTime ms (_DERIVED)
    (7, 2), (11, 2), (0, 1), (6, 1), (4, 1), (5, 1),  # ports, pad1, tcp_flags, prot, tos
    (0, 4), (9, 1), (13, 1), (0, 2),  # src_as, dst_as, src_mask, dst_mask, pad2
)
_DERIVED = {22: UptimeMs("start_ns"), 21: UptimeMs("end_ns")}
assert template_dtype(RECORD_FIELDS).itemsize == RECORD.size


def flow_bodies(flows: np.ndarray, state: ExportState, tally: Tally,
                classes: RowClasses | None = None) -> PackedRecords:
    """The 48-byte records of the IPv4 rows; IPv6 ones are counted as skipped, oversized
    counters split (:func:`split_rows`).

    :param classes: :func:`flow_classes` of ``flows`` when the caller has them.
    """
    classes = classes if classes is not None else flow_classes(flows)
    v4 = classes.rows.get(0, np.zeros(0, np.int64))
    tally.skipped += len(flows) - (len(flows) if v4 is None else len(v4))
    if classes.largest > COUNTER_MAX:  # the IPv4 rows' copy, split
        flows, v4 = split_rows(flows if v4 is None else flows[v4], tally), None
    # First/Last: the ms since boot_ns's whole ms (ExportState.uptime_ms: each rounded down;
    # rounding the difference would put a collector's absolute time 1 ms late)
    origin = state.boot_ns // 1_000_000 * 1_000_000
    return pack_template(flows, RECORD_FIELDS, rows=v4, derived=_DERIVED, base_ns=origin)


def flow_classes(flows: np.ndarray) -> RowClasses:
    """Class 0: the IPv4 rows (the rest are skipped), with the batch's times and largest
    counter, in one pass (:func:`~agent.wire.classify_rows`)."""
    return classify_rows(flows, v6=1)


def packets_from_bodies(
    bodies: Sequence[bytes], state: ExportState, now_ns: int, tally: Tally, sampling: int = 0
) -> list[bytes]:
    """Cut packed records into packets of at most :data:`MAX_RECORDS`, with headers.

    Advances ``state.flows`` (flow_sequence) and ``state.packets``.

    :param sampling: the header's ``sampling_interval`` (:func:`sampling_field`).
    """
    uptime = state.uptime_ms(now_ns)
    secs, nsecs = divmod(now_ns, 1_000_000_000)

    def header(count: int) -> bytes:
        return HEADER.pack(VERSION, count, uptime, secs & UINT32_MASK, nsecs,
                           state.flows & UINT32_MASK, state.engine_type,
                           state.source_id & 0xFF, sampling)

    full = len(bodies) // MAX_RECORDS
    block = join_records(bodies)
    # the full packets in C, one bytes object each, flow_sequence stepping by 30
    datagrams = frame_packets(block, 0, MAX_RECORDS * RECORD.size, full, header(MAX_RECORDS),
                              _SEQUENCE_AT, state.flows, b"", b"", seq_step=MAX_RECORDS)
    state.flows += full * MAX_RECORDS
    state.packets += full
    tally.records += [MAX_RECORDS] * full
    rest = len(bodies) - full * MAX_RECORDS
    if rest:
        datagrams.append(header(rest) + block[full * MAX_RECORDS * RECORD.size:])
        state.flows += rest
        state.packets += 1
        tally.records.append(rest)
    return datagrams


def encode_flows(
    records: FlowBatch | Sequence[FlowRecord], state: ExportState, now_ns: int,
    tally: Tally | None = None,
) -> list[bytes]:
    """Encode flow records as NetFlow v5 export packets.

    :param records: expired flows, a batch or records (IPv6 ones are skipped and counted).
    :param state: this exporter's state; sequence and uptime origin are updated.
    :param now_ns: the export clock (wall-clock ns; the capture clock during replay); the
        header says the later of it and the latest record time (:meth:`.ExportState.stamp`).
    :param tally: optional; receives per-packet record counts and the skipped count.
    :return: the datagrams, in order; their headers carry ``state.sampling_interval``.
    """
    tally = tally if tally is not None else Tally()
    flows = flow_columns(records)
    classes = flow_classes(flows)
    export_ns = state.stamp(now_ns, classes.latest)
    state.observe(export_ns, classes.earliest)
    return packets_from_bodies(flow_bodies(flows, state, tally, classes), state, export_ns,
                               tally, state.sampling_interval)
