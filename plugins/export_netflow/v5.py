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
  records that share its key and times (:func:`split_counters`), as ipt_NETFLOW exports and
  restarts a flow before its counters wrap.
* ICMP type/code travel in the destination port (``type << 8 | code``).
* ``sampling_interval`` (header): mode in the top 2 bits (01 deterministic, 10 random, 11 hash
  flow sampling as ipt_NETFLOW), the
  interval in the low 14 bits (:func:`sampling_field`); 0 when every packet is accounted.
  NAT pseudo-flows are never sampled and always carry 0.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from netflow_agent.api import (
    SAMPLING_DETERMINISTIC,
    SAMPLING_HASH,
    EncodeError,
    FlowRecord,
    Sampling,
)

from .state import UINT32_MASK, ExportState

VERSION = 5
MAX_RECORDS = 30
COUNTER_MAX = UINT32_MASK

# Header, 24 bytes:
# version(2) count(2) sys_uptime(4, ms) unix_secs(4) unix_nsecs(4) flow_sequence(4)
# engine_type(1) engine_id(1) sampling_interval(2: mode 2 bits, interval 14 bits)
HEADER = struct.Struct("!HHIIIIBBH")

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


def split_counters(record: FlowRecord, limit: int = COUNTER_MAX) -> list[FlowRecord]:
    """Split a record whose packets or octets exceed ``limit`` into records within it.

    Packets and octets are spread evenly; the parts sum to the original counters exactly.

    :param record: the flow record (not modified).
    :param limit: the largest counter value the format can carry.
    :return: ``[record]`` when it fits, else the parts.
    """
    parts = max(-(-record.packets // limit), -(-record.octets // limit), 1)
    if parts == 1:
        return [record]
    pk, pk_rest = divmod(record.packets, parts)
    oc, oc_rest = divmod(record.octets, parts)
    return [
        replace(record, packets=pk + (i < pk_rest), octets=oc + (i < oc_rest))
        for i in range(parts)
    ]


def pack_record(r: FlowRecord, state: ExportState) -> bytes:
    """One 48-byte v5 record for an IPv4 flow whose counters fit 32 bits."""
    boot = state.boot_ns
    return RECORD.pack(
        r.src_addr,
        r.dst_addr,
        r.next_hop or _NO_ADDR,
        r.in_if & 0xFFFF,
        r.out_if & 0xFFFF,
        r.packets,
        r.octets,
        ((r.start_ns - boot) // 1_000_000) & UINT32_MASK,
        ((r.end_ns - boot) // 1_000_000) & UINT32_MASK,
        r.src_port,
        r.dst_port,
        r.tcp_flags & 0xFF,
        r.protocol,
        r.tos,
        0,
        0,
        r.src_mask,
        r.dst_mask,
    )


def flow_bodies(
    records: Iterable[FlowRecord], state: ExportState, tally: Tally
) -> list[bytes]:
    """Pack the IPv4 records; count IPv6 ones as skipped and split oversized counters."""
    bodies: list[bytes] = []
    append = bodies.append
    for r in records:
        if r.ip_version != 4:
            tally.skipped += 1
            continue
        if r.packets > COUNTER_MAX or r.octets > COUNTER_MAX:
            parts = split_counters(r)
            tally.split += len(parts) - 1
            bodies.extend(pack_record(p, state) for p in parts)
            continue
        append(pack_record(r, state))
    return bodies


def packets_from_bodies(
    bodies: Sequence[bytes], state: ExportState, now_ns: int, tally: Tally, sampling: int = 0
) -> list[bytes]:
    """Cut packed records into packets of at most :data:`MAX_RECORDS`, with headers.

    Advances ``state.flows`` (flow_sequence) and ``state.packets``.

    :param sampling: the header's ``sampling_interval`` (:func:`sampling_field`).
    """
    uptime = state.uptime_ms(now_ns)
    secs, nsecs = divmod(now_ns, 1_000_000_000)
    datagrams = []
    for start in range(0, len(bodies), MAX_RECORDS):
        chunk = bodies[start : start + MAX_RECORDS]
        header = HEADER.pack(
            VERSION, len(chunk), uptime, secs & UINT32_MASK, nsecs,
            state.flows & UINT32_MASK, state.engine_type, state.source_id & 0xFF, sampling,
        )
        datagrams.append(header + b"".join(chunk))
        state.flows += len(chunk)
        state.packets += 1
        tally.records.append(len(chunk))
    return datagrams


def encode_flows(
    records: Sequence[FlowRecord], state: ExportState, now_ns: int, tally: Tally | None = None
) -> list[bytes]:
    """Encode flow records as NetFlow v5 export packets.

    :param records: expired flow records (IPv6 ones are skipped and counted).
    :param state: this exporter's state; sequence and uptime origin are updated.
    :param now_ns: the export clock (wall-clock ns; the capture clock during replay); the
        header says the later of it and the latest record time (:meth:`.ExportState.stamp`).
    :param tally: optional; receives per-packet record counts and the skipped count.
    :return: the datagrams, in order; their headers carry ``state.sampling_interval``.
    """
    tally = tally if tally is not None else Tally()
    earliest = min((r.start_ns for r in records if r.start_ns), default=0)
    export_ns = state.stamp(now_ns, latest_time(records))
    state.observe(export_ns, earliest)
    return packets_from_bodies(flow_bodies(records, state, tally), state, export_ns, tally,
                               state.sampling_interval)


def latest_time(records: Iterable[FlowRecord]) -> int:
    """The latest start or end time of ``records`` (0 = none): the header must not precede it."""
    return max((max(r.start_ns, r.end_ns) for r in records), default=0)
