"""The flow cache: ipt_NETFLOW's flow table, as the built-in ``[cache]`` component.

Semantics follow the ipt_NETFLOW README: a flow is keyed by IP version, addresses, protocol,
ports (ICMP type/code in the destination port), TOS, input interface (and direction); it
holds packets, bytes, first/last time, the OR of TCP flags and the output interface. A flow is
exported when it has been idle for ``inactive_timeout`` seconds, when it has lived for
``active_timeout`` seconds, or at the next scan after a TCP FIN or RST. When ``maxflows``
flows exist, packets of new flows are dropped and counted (``maxflows`` and ``drop``
counters); existing flows keep being updated.

Layout (chosen for speed and memory, see docs/performance.md): a dict maps the packed key to a
slot number; the counters live in typed columns (``array``), so a flow costs about 160 bytes
instead of the ~350 of a Python object per flow. Timeout scans view the time columns as NumPy
arrays and find expired slots without a Python loop.
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from netflow_agent import hookimpl
from netflow_agent.config.schema import option
from netflow_agent.errors import ConfigIssue
from netflow_agent.fragments import FragmentPolicy
from netflow_agent.logutil import FLOW_DEBUG, log_created
from netflow_agent.model import (
    DIRECTION_EGRESS,
    END_ACTIVE,
    END_FORCED,
    END_IDLE,
    END_OF_FLOW,
    TCP_FIN,
    TCP_RST,
    FlowBatch,
    PacketBatch,
)
from netflow_agent.roles import Cache, CacheStats, FlowRow
from netflow_agent.runtime import RunContext
from netflow_agent.sampler import FlowSampler, hash_selects, parse_sampler
from netflow_agent.schema import FlowSchema, active

__all__ = ["CacheConfig", "CacheStats", "FlowCache"]

_FREE = 2**63 - 1  # first/last time of an unused slot: never expires
FREE_SLOT_NS = _FREE
_NS = 1_000_000_000
_END_FLAGS = TCP_FIN | TCP_RST
#: keys ``hash:N`` refused, remembered to skip the hash on their next packets (then forgotten)
_UNSELECTED_MAX = 1 << 16
_REFUSED = -1  # slot of a delta maxflows refused
_DISCARDED = -2  # slot of a delta the hash sampler discarded


def _rekey(key: bytes, size: int) -> bytes:
    """A saved key in today's layout: 20-byte IPv4 keys of older versions get 16-byte
    addresses; the optional fields are cut or zero-filled to ``size``."""
    if key[0] == 4 and len(key) == 20:
        key = key[:12] + key[12:16].ljust(16, b"\0") + key[16:20].ljust(16, b"\0")
    return key[:size].ljust(size, b"\0")


def _full_width(packets: list, size: int) -> list:
    """``packets`` with keys shorter than ``size`` zero-filled (an ingest that cannot see
    the schema's optional fields)."""
    return [p if len(p[0]) == size else (p[0].ljust(size, b"\0"), *p[1:]) for p in packets]


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheConfig:
    """``[cache]``: the flow table (ipt_NETFLOW's module options of the same names)."""

    inactive_timeout: int = option(15, doc="Export a flow after it has been idle this many "
                                   "seconds.", min=1, max=86400)
    active_timeout: int = option(1800, doc="Export a long-lived flow after this many seconds "
                                 "(it continues as a new flow).", min=1, max=604800)
    maxflows: int = option(2000000, doc="Most flows kept at once; packets of new flows beyond "
                           "it are dropped and counted. 0 = unlimited.", min=0)
    hashsize: int = option(0, doc="Flows to allocate room for at start (a sizing hint); "
                           "0 = grow automatically.", min=0, max=1 << 28)
    fragments: Literal["track", "ports0"] = option(
        "track", doc='Non-first IP fragments: "track" gives them the ports of their first '
        'fragment (one flow per 5-tuple, as pmacct); "ports0" accounts them with ports 0 (a '
        "flow of their own, as ipt_NETFLOW). Applies to the packet ingests (pcap, NFLOG).")
    fragment_timeout: int = option(
        30, doc="Seconds a first fragment's ports are kept, and a fragment that arrived "
        "before its first one waits (then it is accounted with ports 0).", min=1, max=3600)
    fragment_table: int = option(
        4096, doc="First fragments remembered at once per ingest thread (the oldest is "
        "forgotten beyond).", min=1, max=1 << 20)
    fragment_held: int = option(
        256, doc="Fragments waiting for their first fragment at once per ingest thread (more "
        "are accounted with ports 0 at once).", min=0, max=65536)

    sampler: str = option(
        "", doc='Flow sampling, ipt_NETFLOW\'s sampler: "deterministic:N" exports every N-th '
        'flow, "random:N" each flow with probability 1/N, "hash:N" keeps only flows whose '
        "key hash selects them (the same flows on every agent; unselected packets are "
        "discarded on entry and counted as sampler_discarded). N 2..16383; announced to "
        'collectors. "" = every flow. Not combined with an ingest\'s packet sampling.')

    def check(self) -> list[ConfigIssue]:
        """``sampler`` must be ``mode:N``."""
        try:
            parse_sampler(self.sampler)
        except ValueError as e:
            return [ConfigIssue("sampler", str(e))]
        return []

    def flow_sampler(self) -> FlowSampler | None:
        """The sampler ``sampler`` describes, or ``None``."""
        parsed = parse_sampler(self.sampler)
        return FlowSampler(*parsed) if parsed else None

    def fragment_policy(self) -> FragmentPolicy:
        """The fragment options as the packet parsers take them."""
        return FragmentPolicy(self.fragments, self.fragment_timeout, self.fragment_table,
                              self.fragment_held)


def _set_interfaces(out: np.ndarray, other: np.ndarray) -> None:
    """Turn the key's observation interface (``in_if``) and the other one into
    ingressInterface/egressInterface: an egress flow left through its key's interface."""
    observed = out["in_if"].copy()
    egress = out["direction"] == DIRECTION_EGRESS
    out["out_if"] = np.where(egress, observed, other)
    out["in_if"] = np.where(egress, np.where(other != observed, other, 0), observed)


@dataclass(frozen=True, slots=True)
class Columns:
    """The flow table as columns: slot ``i`` holds ``keys[i]`` (``None`` when free) and its
    cumulative counters; a free slot's ``first`` is :data:`FREE_SLOT_NS`."""

    keys: list[bytes | None]
    packets: np.ndarray  # uint64, packetDeltaCount so far
    octets: np.ndarray  # uint64, octetDeltaCount so far
    first: np.ndarray  # int64, flow start (ns); FREE_SLOT_NS when the slot is free

    def occupied(self) -> np.ndarray:
        """Slot numbers that hold a flow, ascending (the order of ``filter(None, keys)``)."""
        return np.flatnonzero(self.first != FREE_SLOT_NS)


class FlowCache(Cache):
    """The default cache stage (``[cache]``, type ``memory``)."""

    stage = "cache"
    type_name = "memory"

    def __init__(self, config: CacheConfig, name: str = "cache"):
        super().__init__(config, name)
        self.stats = CacheStats()
        self.index: dict[bytes, int] = {}
        self.keys: list[bytes | None] = []
        self.free: list[int] = []
        self.ending: set[int] = set()
        self._packets = array("Q")
        self._octets = array("Q")
        self._first = array("q")
        self._last = array("q")
        self._flags = array("B")
        self._out_if = array("I")
        self._grow(max(config.hashsize, 1024))
        self.context: RunContext | None = None
        self.sampler = config.flow_sampler()
        self._unselected: set[bytes] = set()
        #: the key layout of this run (fixed at start: every key has its width)
        self.schema: FlowSchema = active()

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        """Keep the context (its ``debug`` decides per-flow debug lines); declare the sampler."""
        self.context = context
        self.schema = active()
        self._declare_sampler()

    def _declare_sampler(self) -> None:
        """Tell exporters the flow sampling (``declare_sampling`` as source ``cache``)."""
        if self.context is None:
            return
        if self.sampler is None:
            self.context.forget_sampling("cache")
        else:
            self.context.declare_sampling("cache", self.sampler.interval,
                                          self.sampler.algorithm, flows=True)

    # --- sizing ----------------------------------------------------------------------------

    def _grow(self, extra: int) -> None:
        start = len(self.keys)
        self.keys.extend([None] * extra)
        self._packets.extend(array("Q", bytes(8 * extra)))
        self._octets.extend(array("Q", bytes(8 * extra)))
        self._first.extend(array("q", [_FREE]) * extra)
        self._last.extend(array("q", [_FREE]) * extra)
        self._flags.extend(array("B", bytes(extra)))
        self._out_if.extend(array("I", bytes(4 * extra)))
        self.free.extend(range(start + extra - 1, start - 1, -1))  # pop() hands out low first

    def _new_slot(self, key: bytes, ts: int) -> int:
        if not self.free:
            self._grow(len(self.keys))
        i = self.free.pop()
        self.index[key] = i
        self.keys[i] = key
        self._first[i] = ts
        self._last[i] = ts
        self.stats.new += 1
        if self.context is not None and self.context.debug >= FLOW_DEBUG:
            log_created(key)
        if len(self.index) > self.stats.peak_flows:
            self.stats.peak_flows = len(self.index)
            self.stats.peak_ns = ts
        return i

    def reconfigure(self, config: CacheConfig) -> None:
        """Take new timeouts and maxflows on reload; every flow in the table is kept."""
        self.config = config
        sampler = config.flow_sampler()
        if str(sampler) != str(self.sampler):
            self.sampler = sampler
            self._unselected.clear()
            self._declare_sampler()
        if config.hashsize > len(self.keys):
            self._grow(config.hashsize - len(self.keys))

    @property
    def active_flows(self) -> int:
        """Flows currently in the table."""
        return len(self.index)

    # --- ingest -> cache -------------------------------------------------------------------

    @hookimpl
    def agent_cache_packets(self, batch: PacketBatch, now_ns: int) -> None:
        """Account every packet of the batch (the per-packet hot loop; kept flat on purpose)."""
        st = self.stats
        st.trunc += batch.trunc
        st.frag += batch.frag
        st.drop_packets += batch.dropped_packets + batch.trunc
        st.drop_bytes += batch.dropped_bytes
        index, maxflows = self.index, self.config.maxflows
        pk, ob, la, fl, oi = self._packets, self._octets, self._last, self._flags, self._out_if
        ending = self.ending
        new_slot = self._new_slot
        dropped = dropped_bytes = 0
        total_bytes = 0
        new_before = st.new
        # hash:N decides on a key's first miss only (a selected key is then in the index)
        hash_n = self.sampler.interval if self.sampler and self.sampler.mode == "hash" else 0
        discarded = discarded_bytes = 0
        unselected = self._unselected
        if len(unselected) > _UNSELECTED_MAX:
            unselected.clear()
        packets = batch.packets
        if self.schema.ext_size:
            packets = _full_width(packets, self.schema.key_size)
        for key, length, flags, ts, out_if in packets:
            i = index.get(key)
            if i is None:
                if hash_n and (key in unselected or not hash_selects(key, hash_n)):
                    unselected.add(key)
                    discarded += 1
                    discarded_bytes += length
                    continue
                if maxflows and len(index) >= maxflows:
                    dropped += 1
                    dropped_bytes += length
                    continue
                i = new_slot(key, ts)
            pk[i] += 1
            ob[i] += length
            total_bytes += length
            if ts > la[i]:
                la[i] = ts
            if flags:
                fl[i] |= flags
                if flags & _END_FLAGS:
                    ending.add(i)
            if out_if:
                oi[i] = out_if
        n = len(batch.packets) - discarded
        st.sampler_discarded_packets += discarded
        st.sampler_discarded_bytes += discarded_bytes
        st.search += n
        st.maxflows += dropped
        st.found += n - dropped - (st.new - new_before)
        st.drop_packets += dropped
        st.drop_bytes += dropped_bytes
        st.traffic_packets += n - dropped
        st.traffic_bytes += total_bytes

    @hookimpl
    def agent_cache_flows(self, batch: FlowBatch, now_ns: int) -> None:
        """Merge flow deltas drained from a kernel map or the NFLOG C aggregator (columns)."""
        st = self.stats
        st.trunc += batch.trunc
        st.frag += batch.frag
        st.drop_packets += batch.dropped_packets
        st.drop_bytes += batch.dropped_bytes
        flows = batch.flows
        if not len(flows):
            return
        keys = batch.keys()
        slots = self._slots_for(keys, flows)
        refused = slots == _REFUSED
        if refused.any():
            st.maxflows += int(flows["packets"][refused].sum())
            st.drop_packets += int(flows["packets"][refused].sum())
            st.drop_bytes += int(flows["octets"][refused].sum())
        kept = slots >= 0
        if not kept.all():
            flows, slots = flows[kept], slots[kept]
        self._merge(slots, flows)

    def _slots_for(self, keys: list[bytes], flows: np.ndarray) -> np.ndarray:
        """The slot of every delta's flow (new flows get one); -1 where the sampler discards
        the flow (counted) or ``maxflows`` refuses it (the caller counts)."""
        st, index, maxflows, sampler = self.stats, self.index, self.config.maxflows, self.sampler
        slots = np.empty(len(keys), np.int64)
        starts = flows["start_ns"].tolist()
        for n, key in enumerate(keys):
            i = index.get(key)
            if i is None:
                if sampler is not None and not sampler.selects_key(key):
                    st.sampler_discarded_packets += int(flows["packets"][n])
                    st.sampler_discarded_bytes += int(flows["octets"][n])
                    slots[n] = _DISCARDED
                    continue
                if maxflows and len(index) >= maxflows:
                    slots[n] = _REFUSED
                    continue
                i = self._new_slot(key, starts[n])
            else:
                st.found += 1
            slots[n] = i
        st.search += int((slots != _DISCARDED).sum())
        return slots

    def _merge(self, slots: np.ndarray, flows: np.ndarray) -> None:
        """Add deltas to their slots, vectorized (a slot may repeat within one batch)."""
        st = self.stats
        packets = np.frombuffer(self._packets, dtype=np.uint64)
        octets = np.frombuffer(self._octets, dtype=np.uint64)
        first = np.frombuffer(self._first, dtype=np.int64)
        last = np.frombuffer(self._last, dtype=np.int64)
        tflags = np.frombuffer(self._flags, dtype=np.uint8)
        out_if = np.frombuffer(self._out_if, dtype=np.uint32)
        np.add.at(packets, slots, flows["packets"])
        np.add.at(octets, slots, flows["octets"])
        np.minimum.at(first, slots, flows["start_ns"])
        np.maximum.at(last, slots, flows["end_ns"])
        np.bitwise_or.at(tflags, slots, flows["tcp_flags"])
        known = flows["out_if"] != 0
        out_if[slots[known]] = flows["out_if"][known]  # the last non-zero wins
        del packets, octets, first, last, tflags, out_if  # the columns may grow again
        ending = (flows["tcp_flags"] & _END_FLAGS) != 0
        if ending.any():
            self.ending.update(slots[ending].tolist())
        st.traffic_packets += int(flows["packets"].sum())
        st.traffic_bytes += int(flows["octets"].sum())

    # --- cache -> aggregate ----------------------------------------------------------------

    @hookimpl
    def agent_cache_expire(self, now_ns: int, force: bool) -> FlowBatch:
        """Return flows that are idle, too old, ended by FIN/RST, or all of them (``force``)."""
        if force:
            slots = np.fromiter(self.index.values(), np.int64, len(self.index))
            slots.sort()
            ending = self.ending
            reasons = np.array([END_OF_FLOW if i in ending else END_FORCED
                                for i in slots.tolist()], np.uint8)
            ending.clear()
        else:
            slots, reasons = self._due(now_ns)
        batch = self._take(slots, reasons)
        if self.sampler is not None:
            before = len(batch)
            batch = self.sampler.select_batch(batch)
            self.stats.sampler_unselected_flows += before - len(batch)
        self.stats.exported_flows += len(batch)
        return batch

    def _due(self, now_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Slots to export (ascending) and their flowEndReason."""
        first = np.frombuffer(self._first, dtype=np.int64)
        last = np.frombuffer(self._last, dtype=np.int64)
        reasons = np.zeros(len(first), np.uint8)
        reasons[first <= now_ns - self.config.active_timeout * _NS] = END_ACTIVE
        reasons[last <= now_ns - self.config.inactive_timeout * _NS] = END_IDLE
        del first, last  # release the buffer views so the arrays may grow again
        for i in self.ending:
            if self.keys[i] is not None and not reasons[i]:
                reasons[i] = END_OF_FLOW
        self.ending.clear()
        slots = np.flatnonzero(reasons)
        return slots, reasons[slots]

    def _take(self, slots: np.ndarray, reasons: np.ndarray) -> FlowBatch:
        """Copy ``slots`` out as a batch (columns, no object per flow) and free them."""
        schema = self.schema
        out = schema.empty(len(slots))
        if not len(slots):
            return FlowBatch("cache", out, schema=schema)
        keys = [k for k in map(self.keys.__getitem__, slots.tolist()) if k is not None]
        decoded = schema.decode_keys(keys)
        for f in schema.key_fields:
            out[f.name] = decoded[f.name]
        out["packets"] = np.frombuffer(self._packets, np.uint64)[slots]
        out["octets"] = np.frombuffer(self._octets, np.uint64)[slots]
        out["start_ns"] = np.frombuffer(self._first, np.int64)[slots]
        out["end_ns"] = np.frombuffer(self._last, np.int64)[slots]
        out["tcp_flags"] = np.frombuffer(self._flags, np.uint8)[slots]
        other = np.frombuffer(self._out_if, np.uint32)[slots]
        out["end_reason"] = reasons
        _set_interfaces(out, other)
        self._free(slots, keys)
        return FlowBatch("cache", out, schema=schema)

    def _free(self, slots: np.ndarray, keys: list[bytes]) -> None:
        """Forget the flows in ``slots`` (their keys are ``keys``) and reuse the slots."""
        index, table_keys = self.index, self.keys
        for i, key in zip(slots.tolist(), keys, strict=True):
            del index[key]
            table_keys[i] = None
        for column, value in ((self._packets, 0), (self._octets, 0), (self._first, _FREE),
                              (self._last, _FREE), (self._flags, 0), (self._out_if, 0)):
            view = np.frombuffer(column, dtype=column.typecode)
            view[slots] = value
            del view
        self.free.extend(reversed(slots.tolist()))

    # --- saved state (agent/state.py) ------------------------------------------------------

    def dump(self) -> list[FlowRow]:
        """Take every flow out of the table, for saving across a restart.

        :return: ``(key, packets, octets, first_ns, last_ns, tcp_flags, out_if)`` per flow;
            the table is empty afterwards (put them back with :meth:`restore`).
        """
        rows = []
        for key, i in self.index.items():
            rows.append((key, self._packets[i], self._octets[i], self._first[i], self._last[i],
                         self._flags[i], self._out_if[i]))
        slots = np.fromiter(self.index.values(), np.int64, len(self.index))
        self._free(slots, [r[0] for r in rows])
        self.ending.clear()
        return rows

    def restore(self, rows: list[FlowRow]) -> int:
        """Put flows from :meth:`dump` back; a key already present gets the counters added.

        ``maxflows`` is not applied: these packets were already accounted once.

        :return: the number of rows restored.
        """
        size = self.schema.key_size
        for key, packets, octets, first, last, flags, out_if in rows:
            if len(key) != size:  # saved before the schema changed, or by an older version
                key = _rekey(key, size)
            i = self.index.get(key)
            if i is None:
                i = self._new_slot(key, first)
                self.stats.new -= 1  # not a lookup miss of this run
            self._packets[i] += packets
            self._octets[i] += octets
            self._first[i] = min(self._first[i], first)
            self._last[i] = max(self._last[i], last)
            self._flags[i] |= flags
            if flags & _END_FLAGS:
                self.ending.add(i)
            if out_if:
                self._out_if[i] = out_if
        return len(rows)

    def memory_usage(self) -> tuple[int, int]:
        """Approximate bytes of the flow index (the "hash") and of the whole table.

        O(1): the size of one key object is taken as typical for all.

        :return: ``(index_bytes, table_bytes)``; table includes the index.
        """
        index = sys.getsizeof(self.index)
        columns = sum(a.buffer_info()[1] * a.itemsize for a in (
            self._packets, self._octets, self._first, self._last, self._flags, self._out_if))
        key_size = sys.getsizeof(next(iter(self.index), b"")) if self.index else 0
        table = (index + sys.getsizeof(self.keys) + columns + key_size * len(self.index)
                 + sys.getsizeof(self.free))
        return index, table

    # --- observability ---------------------------------------------------------------------

    def columns(self) -> Columns:
        """Read-only NumPy views of the counter columns, for :mod:`agent.flowtop`.

        Pipeline thread only; drop the result before the table changes (a view pins the
        column's buffer, so the table could not grow).
        """
        return Columns(self.keys, np.frombuffer(self._packets, dtype=np.uint64),
                       np.frombuffer(self._octets, dtype=np.uint64),
                       np.frombuffer(self._first, dtype=np.int64))

    def mem_traffic(self) -> tuple[int, int]:
        """Packets and bytes held by flows in the table (the seed's ``MemTraf``)."""
        packets = np.frombuffer(self._packets, dtype=np.uint64).sum(dtype=np.uint64)
        octets = np.frombuffer(self._octets, dtype=np.uint64).sum(dtype=np.uint64)
        return int(packets), int(octets)  # free slots hold 0, so whole columns sum right

    def counters(self) -> dict[str, Any]:
        """Cache counters plus active/peak flows, MemTraf, timeouts and memory."""
        out: dict[str, Any] = self.stats.as_dict()
        mem_pkts, mem_bytes = self.mem_traffic()
        index_mem, table_mem = self.memory_usage()
        out.update(active_flows=len(self.index), maxflows_limit=self.config.maxflows,
                   memtraf_packets=mem_pkts, memtraf_bytes=mem_bytes,
                   slots=len(self.keys), active_timeout=self.config.active_timeout,
                   inactive_timeout=self.config.inactive_timeout,
                   hash_mem_bytes=index_mem, flows_mem_bytes=table_mem)
        return out

    @hookimpl
    def agent_collect_stats(self) -> dict[str, Any]:
        """:meth:`counters`."""
        return self.counters()
