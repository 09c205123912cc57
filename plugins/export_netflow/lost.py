"""What a lost NetFlow datagram carried: the packets and octets of its flow records.

The exporter's destinations count lost datagrams and records (``lost_records``); this module
reads a datagram that could not be sent (backlog full, send error, left at close) back into
the packets and octets of its flows, so the exporter can count ``lost_packets`` and
``lost_octets`` as IPFIX does (its notSentPackets/notSentOctets) and the agent's balance
*traffic = packets exported + packets counted lost* holds. Runs only for lost datagrams.

* v5: ``count`` records of 48 bytes after the 24-byte header; ``dPkts`` and ``dOctets`` at
  bytes 16 and 20 of each (NAT pseudo-flows carry 0 in both).
* v9: data FlowSets of the instance's own flow templates (IN_PKTS = 2, IN_BYTES = 1, 4 or 8
  bytes); template, options and NEL FlowSets carry no traffic and are skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from . import v5, v9

__all__ = ["datagram_totals"]

_IN_BYTES, _IN_PKTS = 1, 2
_V5_COUNTERS = np.dtype({"names": ["packets", "octets"], "formats": [">u4", ">u4"],
                         "offsets": [16, 20], "itemsize": v5.RECORD.size})


def datagram_totals(datagram: bytes, templates: Mapping[int, v9.Template]) -> tuple[int, int]:
    """``(packets, octets)`` of the flow records in one encoded v5 or v9 datagram.

    :param templates: the v9 flow templates by id (ignored for v5).
    """
    if len(datagram) < 2:
        return 0, 0
    version = int.from_bytes(datagram[:2], "big")
    if version == 5:
        return _v5_totals(datagram)
    if version == 9:
        return _v9_totals(datagram, templates)
    return 0, 0


def _v5_totals(datagram: bytes) -> tuple[int, int]:
    count = min(int.from_bytes(datagram[2:4], "big"),
                (len(datagram) - v5.HEADER.size) // v5.RECORD.size)
    rows = np.frombuffer(datagram, _V5_COUNTERS, max(0, count), v5.HEADER.size)
    return int(rows["packets"].sum()), int(rows["octets"].sum())


def _v9_totals(datagram: bytes, templates: Mapping[int, v9.Template]) -> tuple[int, int]:
    packets = octets = 0
    pos = v9.HEADER.size
    while pos + v9.FLOWSET_HEADER.size <= len(datagram):
        flowset_id, length = v9.FLOWSET_HEADER.unpack_from(datagram, pos)
        if length < v9.FLOWSET_HEADER.size:
            break
        tpl = templates.get(flowset_id)
        if tpl is not None:
            body = datagram[pos + v9.FLOWSET_HEADER.size:pos + length]
            p, o = _flowset_totals(body, tpl)
            packets, octets = packets + p, octets + o
        pos += length
    return packets, octets


def _flowset_totals(body: bytes, tpl: v9.Template) -> tuple[int, int]:
    """The packets and octets of a data FlowSet's records (padding ignored)."""
    dtype = _counters_of(tpl.fields, tpl.size) if not tpl.scope_fields else None
    if dtype is None:
        return 0, 0
    rows = np.frombuffer(body, dtype, len(body) // tpl.size)
    return int(rows["packets"].sum(dtype=np.uint64)), int(rows["octets"].sum(dtype=np.uint64))


@functools.cache
def _counters_of(fields: tuple[tuple[int, int], ...], size: int) -> np.dtype | None:
    """A record's IN_PKTS and IN_BYTES as a structured dtype (one per template, built once:
    a mass loss reads thousands of datagrams); ``None`` when it lacks either."""
    types = [ftype for ftype, _ in fields]
    if _IN_PKTS not in types or _IN_BYTES not in types:
        return None
    offsets = np.cumsum([0] + [length for _, length in fields])
    p, o = types.index(_IN_PKTS), types.index(_IN_BYTES)
    return np.dtype({"names": ["packets", "octets"],
                     "formats": [f">u{fields[p][1]}", f">u{fields[o][1]}"],
                     "offsets": [int(offsets[p]), int(offsets[o])], "itemsize": size})
