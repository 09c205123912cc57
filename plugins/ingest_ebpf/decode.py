"""Decoding of the loader's drained records into :class:`~agent.model.FlowDelta` objects.

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

from netflow_agent.api import FlowDelta, make_key

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


def decode_records(data: bytes, wall_offset_ns: int) -> list[FlowDelta]:
    """Turn drained ``flow_record`` rows into flow deltas with agent keys.

    The key's interface is the observation interface for both directions (see
    :func:`agent.model.make_key`); the cache reports it as egressInterface for egress flows.

    :param data: the bytes returned by ``Loader.drain()``; a multiple of :data:`RECORD` size.
    :param wall_offset_ns: from :func:`monotonic_to_wall_offset`, taken at drain time.
    :raises ValueError: when ``data`` is not made of whole records.
    """
    if len(data) % RECORD.size:
        raise ValueError(f"drained {len(data)} bytes, not a multiple of {RECORD.size}")
    deltas = []
    for (
        saddr, daddr, ifindex, sport, dport, version, proto, tos, direction,
        packets, octets, first_ns, last_ns, tcp_flags,
    ) in RECORD.iter_unpack(data):  # fmt: skip
        alen = 4 if version == 4 else 16
        key = make_key(
            version, proto, saddr[:alen], daddr[:alen], sport, dport, tos, ifindex, direction,
        )  # fmt: skip
        deltas.append(
            FlowDelta(
                key=key,
                packets=packets,
                octets=octets,
                start_ns=first_ns + wall_offset_ns,
                end_ns=last_ns + wall_offset_ns,
                tcp_flags=tcp_flags & 0xFF,
            )
        )
    return deltas


def merge_deltas(deltas: list[FlowDelta]) -> list[FlowDelta]:
    """Sum deltas with equal keys (the overflow ring carries one row per packet).

    :param deltas: flow deltas, e.g. from :func:`decode_records` on ``Loader.consume()``.
    """
    merged: dict[bytes, FlowDelta] = {}
    for d in deltas:
        m = merged.get(d.key)
        if m is None:
            merged[d.key] = FlowDelta(d.key, d.packets, d.octets, d.start_ns, d.end_ns,
                                      d.tcp_flags, d.out_if)
            continue
        m.packets += d.packets
        m.octets += d.octets
        m.start_ns = min(m.start_ns, d.start_ns)
        m.end_ns = max(m.end_ns, d.end_ns)
        m.tcp_flags |= d.tcp_flags
    return list(merged.values())


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
