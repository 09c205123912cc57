"""Decoding of the loader's drained records into columnar :class:`~agent.model.FlowBatch` rows.

Owns the Python mirror of ``bpf/flow.h`` (``struct flow_record`` and ``enum flow_counter``):
:data:`RECORD` must match the C layout byte for byte, which
``tests/ingest_ebpf/test_layout.py`` checks against the ``sizeof``/``offsetof`` constants the
extension exports. Kernel times are CLOCK_MONOTONIC (``bpf_ktime_get_ns``); they become
wall-clock ns here, at the boundary, as :mod:`agent.model` requires.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import numpy as np

from netflow_agent.api import flow_schema

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


#: :data:`RECORD` as a NumPy dtype: the drained bytes viewed as columns without a copy per flow
RECORD_DTYPE = np.dtype([
    ("saddr", "V16"), ("daddr", "V16"), ("ifindex", "=u4"), ("sport", "=u2"), ("dport", "=u2"),
    ("version", "u1"), ("proto", "u1"), ("tos", "u1"), ("direction", "u1"), ("_pad", "V4"),
    ("packets", "=u8"), ("bytes", "=u8"), ("first_ns", "=u8"), ("last_ns", "=u8"),
    ("tcp_flags", "=u4"), ("_pad2", "V4"),
])
assert RECORD_DTYPE.itemsize == RECORD.size


def decode_records(data: bytes, wall_offset_ns: int) -> np.ndarray:
    """Turn drained ``flow_record`` rows into a FlowBatch record array (columns, vectorized).

    The key's interface is the observation interface for both directions (see
    :func:`agent.model.make_key`); the cache reports it as egressInterface for egress flows.
    Rows with equal keys (the overflow ring carries one per packet) stay separate rows: the
    cache adds them up.

    :param data: the bytes returned by ``Loader.drain()``; a multiple of :data:`RECORD` size.
    :param wall_offset_ns: from :func:`monotonic_to_wall_offset`, taken at drain time.
    :raises ValueError: when ``data`` is not made of whole records.
    """
    if len(data) % RECORD.size:
        raise ValueError(f"drained {len(data)} bytes, not a multiple of {RECORD.size}")
    raw = np.frombuffer(data, RECORD_DTYPE)
    out = flow_schema().empty(len(raw))
    for src, dst in (("version", "ip_version"), ("proto", "protocol"), ("tos", "tos"),
                     ("direction", "direction"), ("ifindex", "in_if"), ("sport", "src_port"),
                     ("dport", "dst_port"), ("saddr", "src_addr"), ("daddr", "dst_addr"),
                     ("packets", "packets"), ("bytes", "octets")):
        out[dst] = raw[src]
    v4 = out["ip_version"] == 4
    if v4.any():  # IPv4 addresses: the first 4 bytes; the key pads them with zeros
        for name in ("src_addr", "dst_addr"):
            addresses = np.ascontiguousarray(out[name]).view(np.uint8).reshape(-1, 16).copy()
            addresses[v4, 4:] = 0
            out[name] = addresses.view("V16").reshape(-1)
    out["start_ns"] = raw["first_ns"].astype(np.int64) + wall_offset_ns
    out["end_ns"] = raw["last_ns"].astype(np.int64) + wall_offset_ns
    out["tcp_flags"] = raw["tcp_flags"] & 0xFF
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
