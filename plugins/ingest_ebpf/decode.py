"""Decoding of the loader's drained records into columnar :class:`~agent.model.FlowBatch` rows.

Owns the Python mirror of ``bpf/flow.h`` (``struct flow_record`` and ``enum flow_counter``)
and the choice of the ``[flow]`` optional key fields the kernel program fills
(:func:`kernel_fields`): :data:`RECORD` (the compact row of a run without them) and
:data:`RECORD_EXT_DTYPE` (the whole ``flow_record``) must match the C layout byte for byte, which
``tests/ingest_ebpf/test_layout.py`` checks against the ``sizeof``/``offsetof`` constants the
extension exports. Kernel times are CLOCK_MONOTONIC (``bpf_ktime_get_ns``); they become
wall-clock ns here, at the boundary, as :mod:`agent.model` requires.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import numpy as np

from netflow_agent.api import FlowSchema, flow_schema

#: ``struct flow_record``: flow_key (44 bytes), 4 pad bytes, flow_metrics (40 bytes).
#: Fields: saddr daddr ifindex sport dport ip_version proto tos direction | packets bytes
#: first_ns last_ns tcp_flags.
RECORD = struct.Struct("=16s16sIHHBBBB4xQQQQI4x")

#: ``enum flow_counter`` in order; the loader's ``counters()`` tuple has this shape.
COUNTER_NAMES = (
    "packets",
    "sampled_out",
    "non_ip",
    "trunc",
    "trunc_bytes",
    "frag",
    "full_packets",
    "full_bytes",
    "update_errors",
    "ring_packets",
    "slot_packets",
    "update_error_bytes",
    "hash_new",
    "frag_tracked",
    "frag_unmatched",
    "decapsulated",
    "decap_failed",
)


def monotonic_to_wall_offset() -> int:
    """ns to add to a CLOCK_MONOTONIC time to get wall-clock (CLOCK_REALTIME) ns."""
    before = time.monotonic_ns()
    wall = time.time_ns()
    after = time.monotonic_ns()
    return wall - (before + after) // 2


_BASE_KEY_COLUMNS = [
    ("saddr", "V16"), ("daddr", "V16"), ("ifindex", "=u4"), ("sport", "=u2"), ("dport", "=u2"),
    ("version", "u1"), ("proto", "u1"), ("tos", "u1"), ("direction", "u1"),
]
_METRIC_COLUMNS = [
    ("packets", "=u8"), ("bytes", "=u8"), ("first_ns", "=u8"), ("last_ns", "=u8"),
    ("tcp_flags", "=u4"), ("_pad2", "V4"),
]
#: :data:`RECORD` as a NumPy dtype: the drained bytes viewed as columns without a copy per flow
RECORD_DTYPE = np.dtype([*_BASE_KEY_COLUMNS, ("_pad", "V4"), *_METRIC_COLUMNS])
assert RECORD_DTYPE.itemsize == RECORD.size

#: ``struct flow_key_ext`` (68 bytes after the base key; host byte order).
KEY_EXT_COLUMNS = [
    ("src_mac", "V6"), ("dst_mac", "V6"), ("eth_type", "=u2"), ("vlan_id", "=u2"),
    ("inner_vlan_id", "=u2"), ("vlan_prio", "u1"), ("inner_vlan_prio", "u1"),
    ("tunnel_type", "=u4"), ("tunnel_id", "=u4"), ("mpls", "=u4", (10,)),
]
#: the whole ``struct flow_record`` (152 bytes): the rows of a run with optional key fields
RECORD_EXT_DTYPE = np.dtype([*_BASE_KEY_COLUMNS, *KEY_EXT_COLUMNS, *_METRIC_COLUMNS])

#: ``enum l2_field`` bits (bpf/flow.h) and the schema fields each one fills
L2_MAC, L2_VLAN, L2_TUNNEL_ID = 1, 2, 4
MPLS_MAX = 10
#: the optional key fields the kernel program can fill; the others (physdev) stay 0
KERNEL_FIELDS = frozenset({
    "src_mac", "dst_mac", "ethernet_type", "vlan_id", "vlan_priority", "inner_vlan_id",
    "inner_vlan_priority", "tunnel_id", *(f"mpls_label_{n}" for n in range(1, MPLS_MAX + 1)),
})
#: schema column <- RECORD_EXT_DTYPE column, for the fields copied as they are
_EXT_COPY = {"src_mac": "src_mac", "dst_mac": "dst_mac", "ethernet_type": "eth_type",
             "vlan_id": "vlan_id", "vlan_priority": "vlan_prio",
             "inner_vlan_id": "inner_vlan_id", "inner_vlan_priority": "inner_vlan_prio"}


def kernel_fields(schema: FlowSchema) -> tuple[int, int]:
    """The loader's ``(l2_fields, mpls_labels)`` for ``schema``: which optional key fields the
    program fills (``enum l2_field`` bits) and how many MPLS label stack entries. ``(0, 0)``
    keeps today's 44-byte kernel key and compact rows."""
    names = set(schema.ext_names)
    bits = (L2_MAC if names & {"src_mac", "dst_mac"} else 0) | (
        L2_VLAN if names & {"vlan_id", "vlan_priority", "inner_vlan_id",
                            "inner_vlan_priority"} else 0) | (
        L2_TUNNEL_ID if "tunnel_id" in names else 0)
    if "ethernet_type" in names and not bits & (L2_MAC | L2_VLAN):
        bits |= L2_MAC  # ethernetType comes with the MAC addresses (agent.schema)
    return bits, sum(1 for n in names if n.startswith("mpls_label_"))


def _fill_ext(raw: np.ndarray, out: np.ndarray, names: tuple[str, ...]) -> None:
    """Copy the kernel-filled optional key columns of ``raw`` (RECORD_EXT_DTYPE rows)."""
    for name in names:
        if name in _EXT_COPY:
            out[name] = raw[_EXT_COPY[name]]
        elif name.startswith("mpls_label_"):
            out[name] = raw["mpls"][:, int(name.rsplit("_", 1)[1]) - 1]
        elif name == "tunnel_id":
            out[name] = (raw["tunnel_type"].astype(np.uint64) << np.uint64(56)) | raw[
                "tunnel_id"].astype(np.uint64)


def row_dtype(schema: FlowSchema | None = None) -> np.dtype:
    """The dtype of the rows the loader drains for ``schema`` (default: the active one):
    :data:`RECORD_DTYPE` when :func:`kernel_fields` is ``(0, 0)``, else
    :data:`RECORD_EXT_DTYPE`."""
    return RECORD_EXT_DTYPE if kernel_fields(schema or flow_schema()) != (0, 0) else RECORD_DTYPE


#: ``OP_*`` of ``struct layout_op`` (_loader.c): how one output column is written
OP_COPY, OP_INT, OP_TIME, OP_TUNNEL = 0, 1, 2, 3
#: ``struct layout_head`` then ``struct layout_op`` (8 bytes each)
_LAYOUT_HEAD = struct.Struct("=II")
_LAYOUT_OP = struct.Struct("=HHBBBx")
#: FlowBatch column <- ``struct flow_record`` field, for the base key and the metrics
_BASE_SOURCES = {"ip_version": "version", "protocol": "proto", "tos": "tos",
                 "direction": "direction", "in_if": "ifindex", "src_port": "sport",
                 "dst_port": "dport", "src_addr": "saddr", "dst_addr": "daddr",
                 "packets": "packets", "octets": "bytes", "tcp_flags": "tcp_flags"}


def record_layout(schema: FlowSchema | None = None) -> bytes:
    """The loader's layout (``struct layout_head`` + ops) that writes a drained flow straight
    into a row of ``schema``'s record dtype (default: the active one), as :func:`decode_rows`
    does column by column: the key and metrics, the kernel-filled optional key fields, start
    and end in wall-clock ns; every other column zero. Pass it to ``drain_next`` with
    :func:`monotonic_to_wall_offset`."""
    schema = schema or flow_schema()
    out = schema.record_dtype
    ops = []
    for name in (*_BASE_SOURCES, *(n for n in schema.ext_names if n in KERNEL_FIELDS)):
        dst_type, dst = _field(out, name)
        if name == "tunnel_id":
            ops.append((dst, _field(RECORD_EXT_DTYPE, "tunnel_type")[1], 8, 8, OP_TUNNEL))
            continue
        if name.startswith("mpls_label_"):
            entry = 4 * (int(name.rsplit("_", 1)[1]) - 1)
            src_type, src = np.dtype("=u4"), _field(RECORD_EXT_DTYPE, "mpls")[1] + entry
        else:
            src_type, src = _field(RECORD_EXT_DTYPE, _BASE_SOURCES.get(name) or _EXT_COPY[name])
        kind = OP_COPY if dst_type.kind == "V" else OP_INT
        ops.append((dst, src, dst_type.itemsize, src_type.itemsize, kind))
    for name, kernel in (("start_ns", "first_ns"), ("end_ns", "last_ns")):
        ops.append((_field(out, name)[1], _field(RECORD_EXT_DTYPE, kernel)[1], 8, 8, OP_TIME))
    ops = _merged(ops)
    return _LAYOUT_HEAD.pack(out.itemsize, len(ops)) + b"".join(
        _LAYOUT_OP.pack(*op) for op in ops)


def _field(dtype: np.dtype, name: str) -> tuple[np.dtype, int]:
    """A structured dtype's field ``name``: its type and byte offset."""
    fields = dtype.fields
    assert fields is not None, dtype
    return fields[name][0], fields[name][1]


def _merged(ops: list[tuple[int, int, int, int, int]]) -> list[tuple[int, int, int, int, int]]:
    """``ops`` with same-width integers as byte copies, and copies that continue each other
    in both rows as one (the base key's 14 columns become 5 copies: half the loader's work
    per row)."""
    out: list[tuple[int, int, int, int, int]] = []
    for dst, src, dst_width, src_width, kind in ops:
        if kind == OP_INT and dst_width == src_width:
            kind = OP_COPY
        if out and kind == OP_COPY and out[-1][4] == OP_COPY:
            last = out[-1]
            if last[0] + last[2] == dst and last[1] + last[2] == src:
                width = last[2] + dst_width
                out[-1] = (last[0], last[1], width, width, OP_COPY)
                continue
        out.append((dst, src, dst_width, src_width, kind))
    return out


def decode_records(data: bytes, wall_offset_ns: int,
                   schema: FlowSchema | None = None) -> np.ndarray:
    """:func:`decode_rows` over bytes of drained rows (``Loader.consume()``).

    :raises ValueError: when ``data`` is not made of whole records.
    """
    schema = schema or flow_schema()
    dtype = row_dtype(schema)
    if len(data) % dtype.itemsize:
        raise ValueError(f"drained {len(data)} bytes, not a multiple of {dtype.itemsize}")
    return decode_rows(np.frombuffer(data, dtype), wall_offset_ns, schema)


def decode_rows(raw: np.ndarray, wall_offset_ns: int,
                schema: FlowSchema | None = None) -> np.ndarray:
    """Turn drained ``flow_record`` rows into a new FlowBatch record array (columns,
    vectorized: one strided copy per column, no temporary the size of the drain).

    The key's interface is the observation interface for both directions (see
    :func:`agent.model.make_key`); the cache reports it as egressInterface for egress flows.
    Rows with equal keys (the overflow ring carries one per packet) stay separate rows: the
    cache adds them up. IPv4 addresses arrive zero-padded to 16 bytes (the loader writes them
    so), which is the cache key's form.

    :param raw: rows of :func:`row_dtype` of ``schema`` (a view of the loader's chunk buffer
        is fine: nothing of it is kept).
    :param wall_offset_ns: from :func:`monotonic_to_wall_offset`, taken at drain time.
    :param schema: the schema the loader was configured for (default: the active one).
    """
    schema = schema or flow_schema()
    out = schema.empty(len(raw))
    if raw.dtype == RECORD_EXT_DTYPE:
        _fill_ext(raw, out, tuple(n for n in schema.ext_names if n in KERNEL_FIELDS))
    for src, dst in (("version", "ip_version"), ("proto", "protocol"), ("tos", "tos"),
                     ("direction", "direction"), ("ifindex", "in_if"), ("sport", "src_port"),
                     ("dport", "dst_port"), ("saddr", "src_addr"), ("daddr", "dst_addr"),
                     ("packets", "packets"), ("bytes", "octets"), ("tcp_flags", "tcp_flags")):
        out[dst] = raw[src]  # tcp_flags: the kernel ORs 8-bit flags into a u32 (no carry)
    # CLOCK_MONOTONIC ns (u64, far below 2**63) -> wall-clock ns, straight into the column
    np.add(raw["first_ns"].view(np.int64), wall_offset_ns, out=out["start_ns"])
    np.add(raw["last_ns"].view(np.int64), wall_offset_ns, out=out["end_ns"])
    return out


@dataclass(frozen=True, slots=True)
class CounterDelta:
    """What the kernel counted between two reads of the counters map."""

    values: dict[str, int]

    def __getitem__(self, name: str) -> int:
        return self.values[name]


class CounterTracker:
    """Turns the cumulative kernel counters into per-drain deltas (one per loader)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[int, ...] = (0,) * len(COUNTER_NAMES)

    def delta(self, current: tuple[int, ...]) -> CounterDelta:
        """The increase since the previous call.

        :param current: ``Loader.counters()``.
        """
        if len(current) != len(COUNTER_NAMES):
            raise ValueError(f"expected {len(COUNTER_NAMES)} counters, got {len(current)}")
        diff = {n: c - p for n, c, p in zip(COUNTER_NAMES, current, self._last, strict=True)}
        self._last = tuple(current)
        return CounterDelta(diff)
