"""The flow cache: ipt_NETFLOW's flow table, as the built-in ``[cache]`` component.

Semantics follow the ipt_NETFLOW README: a flow is keyed by IP version, addresses, protocol,
ports (ICMP type/code in the destination port), TOS, input interface (and direction); it
holds packets, bytes, first/last time, the OR of TCP flags and the output interface. A flow is
exported when it has been idle for ``inactive_timeout`` seconds, when it has lived for
``active_timeout`` seconds, or at the next scan after a TCP FIN or RST. Idle is judged only up
to what the ingests have surely delivered: a live ingest that hands packets over late (the
eBPF drain period, NFLOG batching) declares how late (``RunContext.declare_delivery_lag``),
and a flow leaves as idle only ``inactive_timeout`` plus the largest such lag after its last
packet, so a packet still on its way joins its flow instead of starting a second record
(ipt_NETFLOW, in the kernel, has no lag). The active timeout and FIN/RST do not wait for it,
nor does a table that is full or refused flows since the last scan (holding idle flows longer
would refuse new ones); a flow due by both timeouts that is idle by the timeout leaves as idle.
When ``maxflows`` flows exist, packets of new flows are dropped and counted (``maxflows`` and
``drop`` counters); existing flows keep being updated. The ``aggregation`` rules (ipt_NETFLOW's
option, :mod:`agent.keyrules`) rewrite every key before the lookup, in every entry path
(packets, kernel deltas, restored flows), so the table, ``maxflows`` and the statistics count
aggregated flows; a flow's masks are those its first packet was cut to.

A scan takes at most as many due flows as the exporters can take now (the core's ``limit``,
from their paced backlogs): the most overdue leave first, the others stay in the table, due,
and leave in the next scans (ipt_NETFLOW's expiry spread over scans; ``expiry_deferred`` in
the counters). A packet for a deferred flow is counted in it, as for any flow in the table.
The wait is bounded: a flow due for longer than :data:`MAX_DEFER_S` (or ``inactive_timeout``
if longer) leaves anyway, and so does everything due once the deferred flows would fill half
of ``maxflows``; an exporter still without room then counts those records lost. So a slow
or stuck exporter cannot hold the table for the others, nor make records arbitrarily late.

Layout (chosen for speed and memory, docs/performance.md "Flow cache and flow index"): the
storage is a :class:`~agent.stages.flowtable.FlowTable`: a C hash index (``agent/_flowindex.c``)
maps the fixed-width packed key to a slot number, and the counters live in NumPy columns indexed
by slot, so a flow costs about 100 bytes (98 at 1M flows) and no Python object. Every batch, of
packets or of flow deltas, is one index lookup plus a few column operations; timeout scans and
the export hand-off work on whole columns.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import mmap
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from netflow_agent import heap, hookimpl
from netflow_agent._flowindex import MAX_SWAPS, finish_rows
from netflow_agent.config.schema import option
from netflow_agent.errors import ConfigIssue
from netflow_agent.fragments import FragmentPolicy
from netflow_agent.keyrules import KeyRules, rule_issues, split_rules
from netflow_agent.libc import libc
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
    concat,
)
from netflow_agent.roles import Cache, CacheStats, FlowRow
from netflow_agent.runtime import RunContext
from netflow_agent.sampler import FlowSampler, hash_select_rows, key_ops, parse_sampler
from netflow_agent.schema import FlowSchema, active
from netflow_agent.stages.flowtable import (
    FREE_NS,
    FlowTable,
    RecordLayout,
    record_layout,
    value_fields,
)

__all__ = ["CacheConfig", "CacheStats", "FlowCache"]

log = logging.getLogger("agent.cache")

FREE_SLOT_NS = FREE_NS  # first/last time of an unused slot: never expires
_NS = 1_000_000_000
#: the longest a due flow waits for room in the exporters' backlog (expiry spread over scans)
MAX_DEFER_S = 60
_END_FLAGS = TCP_FIN | TCP_RST
#: most rows whose packed keys go through the reused buffer (at most ~1 MB with 64-byte keys)
_KEY_BUFFER_ROWS = 1 << 14
#: madvise(2) advice (Linux 5.14+): fault a range's pages in, writable, in one call
_MADV_POPULATE_WRITE = 23
#: batches at least this large are their own mmap (the agent's M_MMAP_THRESHOLD, agent/heap.py)
_POPULATE_BYTES = 128 << 10


def _rekey(key: bytes, size: int) -> bytes:
    """A saved key in today's layout: 20-byte IPv4 keys of older versions get 16-byte
    addresses; the optional fields are cut or zero-filled to ``size``."""
    if key[0] == 4 and len(key) == 20:
        key = key[:12] + key[12:16].ljust(16, b"\0") + key[16:20].ljust(16, b"\0")
    return key[:size].ljust(size, b"\0")


def _packet_dtype(key_size: int) -> np.dtype:
    """A :data:`~agent.model.Packet` tuple as one structured row (NumPy zero-fills a key
    shorter than ``key_size``: an ingest that cannot see the schema's optional fields)."""
    return np.dtype([("key", f"V{key_size}"), ("length", np.uint64), ("flags", np.uint8),
                     ("ts", np.int64), ("out_if", np.uint32)])


@functools.lru_cache(maxsize=8)
def _key_fields(rows: np.dtype, key: np.dtype) -> np.dtype:
    """``rows`` (a :func:`_packet_dtype`: the packed key first) seen as the fields of its
    packed key."""
    fields: dict[str, tuple] = dict(key.fields or {})
    return np.dtype({"names": list(fields), "formats": [f[0] for f in fields.values()],
                     "offsets": [f[1] for f in fields.values()], "itemsize": rows.itemsize})


def _kept(masks: np.ndarray | None, discard: np.ndarray) -> np.ndarray | None:
    """The aggregation ``masks`` of the rows ``discard`` leaves (``None``: no rules)."""
    return None if masks is None else masks[~discard]


def _raw(keys: bytes | np.ndarray) -> bytes:
    """Packed keys (bytes, or an array of ``V<key_size>``) as one bytes object."""
    return keys if isinstance(keys, bytes) else np.ascontiguousarray(keys).tobytes()


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
        "flow of their own, as ipt_NETFLOW). Applies to every ingest (pcap, NFLOG, eBPF).")
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

    aggregation: str | list[str] = option(
        default_factory=list,
        doc='ipt_NETFLOW\'s aggregation=: rules like "192.0.0.0/8=16,80-89=80" (a string or '
        "a list), applied to every packet before the flow lookup: PREFIX/LEN=NEWLEN cuts "
        "matching addresses to NEWLEN bits (exported as the flow's mask), LOW-HIGH=PORT "
        "replaces ports in the range; first match of each kind wins, both directions. "
        "maxflows and statistics count aggregated flows.")

    def check(self) -> list[ConfigIssue]:
        """``sampler`` must be ``mode:N``; every ``aggregation`` rule must parse."""
        issues = [ConfigIssue(f"aggregation{where}", message)
                  for where, message in rule_issues(self.aggregation)]
        try:
            parse_sampler(self.sampler)
        except ValueError as e:
            issues.append(ConfigIssue("sampler", str(e)))
        return issues

    def flow_sampler(self) -> FlowSampler | None:
        """The sampler ``sampler`` describes, or ``None``."""
        parsed = parse_sampler(self.sampler)
        return FlowSampler(*parsed) if parsed else None

    def fragment_policy(self) -> FragmentPolicy:
        """The fragment options as the packet parsers take them."""
        return FragmentPolicy(self.fragments, self.fragment_timeout, self.fragment_table,
                              self.fragment_held)


def _populated(out: np.ndarray) -> np.ndarray:
    """``out`` (a fresh zeroed array) with its pages faulted in by one ``madvise`` instead
    of one page fault each as its rows are first written: a part of a timed scan (8192 rows,
    ~0.8 MB) is a fresh mmap, and its ~200 faults were a fifth of the take's CPU. In the
    stop's final scan parts are reused heap blocks (agent.heap.reuse_parts): their pages are
    already in after the first part, and the advice (which still walks every page, ~120 µs
    a part) is skipped for a block the window populated before (agent.heap.faulted_in).
    The pages hold zeros either way and are written right after (no RSS added); a kernel
    without the advice leaves it to the faults."""
    if out.nbytes >= _POPULATE_BYTES:
        start = out.ctypes.data & ~(mmap.PAGESIZE - 1)
        end = -(-(out.ctypes.data + out.nbytes) // mmap.PAGESIZE) * mmap.PAGESIZE
        if heap.faulted_in(start, end):
            return out
        if libc().madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start),
                          _MADV_POPULATE_WRITE) == 0:  # refused: not known to be in
            heap.note_faulted_in(start, end)
    return out


@functools.cache
def _key_swaps(key: np.dtype, record: np.dtype) -> tuple[str, ...] | None:
    """The key fields to byteswap once the packed keys are copied as they are into a record
    array's rows (its key columns lie where the packed key has them, native order where the
    key is big-endian), or None when the record's key columns lie otherwise (a field of
    another width): then the keys take a structured cast. The cast cost ~40 ns per flow
    with its buffer's page faults; the copy into the rows plus the swaps ~5."""
    swaps: list[str] = []
    if key.fields is None or record.fields is None:
        return None
    for name, (kind, offset, *_) in key.fields.items():
        column, at, *_ = record.fields[name]
        if at != offset or column != kind.newbyteorder("="):
            return None
        if not kind.isnative:
            swaps.append(name)
    return tuple(swaps)


#: what :func:`finish_rows` does to a taken row: (offset, width) of each key field to swap,
#: the src and dst mask bytes' offsets, the end reason's offset
_Finish = tuple[tuple[tuple[int, int], ...], tuple[int, int], int]


@functools.cache
def _finish_layout(record: np.dtype, swaps: tuple[str, ...]) -> _Finish | None:
    """Where :func:`finish_rows` finds a taken row's fields in ``record`` (the key fields
    ``swaps`` of 2, 4 or 8 bytes; one-byte masks and end reason), or None (NumPy then).
    In C, one pass over the rows does what six NumPy passes over strided fields did
    (three byteswaps, the masks split and cast, the reasons): ~40 of ~90 ns a flow of a
    timed take at 1M flows."""
    fields: dict[str, tuple] = dict(record.fields or {})
    byte = np.dtype(np.uint8)
    if any(fields.get(name, (None,))[0] != byte for name in ("src_mask", "dst_mask",
                                                              "end_reason")):
        return None
    pairs = tuple((int(fields[name][1]), fields[name][0].itemsize) for name in swaps)
    if len(pairs) > MAX_SWAPS or any(width not in (2, 4, 8) for _at, width in pairs):
        return None
    return (pairs, (int(fields["src_mask"][1]), int(fields["dst_mask"][1])),
            int(fields["end_reason"][1]))


def _set_interfaces(out: np.ndarray, other: np.ndarray | None) -> None:
    """Turn the key's observation interface (``in_if``) and the other one (``None``: already
    in ``out_if``) into ingressInterface/egressInterface: an egress flow left through its
    key's interface."""
    egress = out["direction"] == DIRECTION_EGRESS
    if not egress.any():  # the usual batch: ingress flows only
        if other is not None:
            out["out_if"] = other
        return
    if other is None:
        other = out["out_if"].copy()
    observed = out["in_if"].copy()
    out["out_if"] = np.where(egress, observed, other)
    out["in_if"] = np.where(egress, np.where(other != observed, other, 0), observed)


@dataclass(frozen=True, slots=True)
class Columns:
    """The flow table as columns for :mod:`agent.flowtop`: slot ``i`` holds a flow when
    ``first[i]`` is not :data:`FREE_SLOT_NS`; its key comes from :meth:`keys`."""

    table: FlowTable
    packets: np.ndarray  # uint64, packetDeltaCount so far
    octets: np.ndarray  # uint64, octetDeltaCount so far
    first: np.ndarray  # int64, flow start (ns); FREE_SLOT_NS when the slot is free

    def occupied(self) -> np.ndarray:
        """Slot numbers that hold a flow, ascending."""
        return self.table.occupied()

    def keys(self, slots: np.ndarray) -> np.ndarray:
        """The packed keys of ``slots`` as a ``(len(slots), key_size)`` uint8 matrix."""
        raw = self.table.keys(slots)
        return np.frombuffer(raw, np.uint8).reshape(len(slots), self.table.key_size)

    def key(self, slot: int) -> bytes:
        """The packed key of one slot."""
        return self.table.keys(np.array([slot], np.int64))


class FlowCache(Cache):
    """The default cache stage (``[cache]``, type ``memory``)."""

    stage = "cache"
    type_name = "memory"

    def __init__(self, config: CacheConfig, name: str = "cache"):
        super().__init__(config, name)
        self.stats = CacheStats()
        #: the key layout of this run (fixed at start: every key has its width)
        self.schema: FlowSchema = active()
        self.table = FlowTable(self.schema.key_size, config.hashsize)
        self.ending: set[int] = set()
        #: flows the last scan found due but left in the table (the exporters' backlog was
        #: full), and since when (ns) the oldest of them has been due; 0 when none
        self.deferred = 0
        self.deferred_since_ns = 0
        #: ``stats.maxflows`` at the last scan: refusals since then drop the delivery lag
        self._maxflows_at_scan = 0
        self.context: RunContext | None = None
        self.sampler = config.flow_sampler()
        #: the slots of the flows ``hash:N`` did not select (restored, or held at a sampler
        #: change) still in the table, and how many: while any is, a key the hash refuses is
        #: looked up before it is discarded (:meth:`_hold`, :meth:`_release`)
        self._held = np.zeros(0, np.bool_)
        self._held_count = 0
        self.rules = KeyRules(config.aggregation)
        self._key_buffer = np.empty(0, self.schema.key_dtype)  # reused by _keys_of
        self._rows_buffer = np.empty(0, self.schema.record_dtype)  # reused by _rows_copy
        #: the record dtype, schema and layout _record_layout last answered (~4 us a batch
        #: less than building the schema's key dtype and looking the layout up every time)
        self._last_layout: tuple[np.dtype | None, FlowSchema | None, RecordLayout | None] = (
            None, None, None)

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        """Keep the context (its ``debug`` decides per-flow debug lines); declare the sampler."""
        self.context = context
        self.schema = active()
        if self.schema.key_size != self.table.key_size and not len(self.table):
            self.table = FlowTable(self.schema.key_size, self.config.hashsize)
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

    def reconfigure(self, config: CacheConfig) -> None:
        """Take new timeouts, maxflows and aggregation rules on reload; every flow in the
        table is kept under its key (new rules apply to packets from now on)."""
        self.config = config
        if split_rules(config.aggregation) != self.rules.texts:
            self.rules = KeyRules(config.aggregation)
        sampler = config.flow_sampler()
        if str(sampler) != str(self.sampler):
            self.sampler = sampler
            self._hold(self.table.occupied())
            self._declare_sampler()
        self.table.reserve(config.hashsize)

    @property
    def _unsampled(self) -> bool:
        """The table holds flows ``hash:N`` did not select: refused keys are looked up."""
        return self._held_count > 0

    def _hold(self, slots: np.ndarray) -> None:
        """Mark the flows at ``slots`` as not selected by this run's ``hash:N``."""
        if not len(slots):
            return
        if len(self._held) <= int(slots.max()):
            grown = np.zeros(int(slots.max()) + 1, np.bool_)
            grown[:len(self._held)] = self._held
            self._held = grown
        fresh = np.unique(slots[~self._held[slots]])
        self._held[fresh] = True
        self._held_count += len(fresh)

    def _release(self, slots: np.ndarray) -> None:
        """``slots`` leave the table: forget those held; once none is, refused keys are
        discarded without a lookup (a busy table that never empties stops paying for it)."""
        inside = slots[slots < len(self._held)]
        gone = inside[self._held[inside]]
        self._held[gone] = False
        self._held_count -= len(gone)
        if not self._held_count:
            self._held = np.zeros(0, np.bool_)

    @property
    def active_flows(self) -> int:
        """Flows currently in the table."""
        return len(self.table)

    # --- ingest -> cache -------------------------------------------------------------------

    @hookimpl
    def agent_cache_packets(self, batch: PacketBatch, now_ns: int) -> None:
        """Account every packet of the batch: one key lookup and a few column operations per
        batch (:class:`~agent.stages.flowtable.FlowTable`), no Python work per packet."""
        st = self.stats
        st.trunc += batch.trunc
        st.frag += batch.frag
        st.drop_packets += batch.dropped_packets + batch.trunc
        st.drop_bytes += batch.dropped_bytes
        packets = batch.packets
        if not packets:
            return
        rows = np.array(packets, _packet_dtype(self.table.key_size))
        masks = None
        if self.rules:  # the key column's fields rewritten in place
            masks = self.rules.apply(rows.view(_key_fields(rows.dtype, self.schema.key_dtype)))
        rows, masks = self._sample_packets(rows, masks)
        keys = np.ascontiguousarray(rows["key"])
        slots, new = self.table.lookup(keys, limit=self.config.maxflows)
        refused = slots < 0
        n, dropped = len(slots), int(refused.sum())
        if dropped:
            st.maxflows += dropped
            st.drop_packets += dropped
            st.drop_bytes += int(rows["length"][refused].sum())
            rows, keys, slots, new = rows[~refused], keys[~refused], slots[~refused], new[~refused]
            masks = None if masks is None else masks[~refused]
        self.table.add_packets(slots, new, rows["length"], rows["flags"], rows["ts"],
                               rows["out_if"])
        self._mark_ending(slots, rows["flags"])
        created = self._count_new(keys, slots, new, rows["ts"], masks)
        st.search += n
        st.found += n - dropped - created
        st.traffic_packets += n - dropped
        st.traffic_bytes += int(rows["length"].sum())

    def _sample_packets(self, rows: np.ndarray, masks: np.ndarray | None
                        ) -> tuple[np.ndarray, np.ndarray | None]:
        """``rows`` (and their ``masks``) without the packets ``hash:N`` discards (counted)."""
        discard = self._hash_discards(rows, key_ops(0, self.table.key_size))  # key first
        if discard is None:
            return rows, masks
        self.stats.sampler_discarded_packets += int(discard.sum())
        self.stats.sampler_discarded_bytes += int(rows["length"][discard].sum())
        return rows[~discard], None if masks is None else masks[~discard]

    def _hash_discards(self, rows: np.ndarray, ops: bytes) -> np.ndarray | None:
        """Rows of ``rows`` (C-contiguous, each holding a key ``ops`` packs) whose flow
        ``hash:N`` does not select; ``None``: none. The whole batch is hashed at once in C
        (:func:`~agent.sampler.hash_select_rows`).

        Decided on a key's miss only, as ipt_NETFLOW: every key the table holds is selected
        (the hash of a key never changes), unless it was restored or came in before a
        sampler change (:attr:`_unsampled`); only then are refused keys looked up.
        """
        sampler = self.sampler
        if sampler is None or sampler.mode != "hash":
            return None
        discard = ~hash_select_rows(rows, ops, sampler.interval)
        if not discard.any():
            return None
        if self._unsampled:
            self._keep_held(rows, discard)
        return discard if discard.any() else None

    def _keep_held(self, rows: np.ndarray, discard: np.ndarray) -> None:
        """Clear ``discard`` for the rows whose flow the table holds (packed keys, records
        or packet rows)."""
        at = np.flatnonzero(discard)
        part = rows[at]
        if "key" in (part.dtype.names or ()):
            keys = np.ascontiguousarray(part["key"])
        elif part.dtype.names:
            keys = self.schema.keys_of(part)
        else:
            keys = part
        found, _ = self.table.lookup(keys, insert=False)
        discard[at[found >= 0]] = False

    def _mark_ending(self, slots: np.ndarray, flags: np.ndarray) -> None:
        """Remember flows that saw FIN or RST (exported at the next scan)."""
        ending = (flags & _END_FLAGS) != 0
        if ending.any():
            self.ending.update(slots[ending].tolist())

    def _count_new(self, keys: np.ndarray | None, slots: np.ndarray, new: np.ndarray,
                   ts: np.ndarray, masks: np.ndarray | None = None) -> int:
        """Count the flows ``new`` marks (``keys``, ``slots``: the rows' packed keys and
        slots) as created at ``ts``: ``new``, the peak, their aggregation ``masks`` (those of
        the row that created each flow; ``None``: no rules), and a debug line each at
        ``debug >= FLOW_DEBUG``. ``keys`` is ``None`` from the C merge, which runs only
        below ``FLOW_DEBUG`` (nothing here reads keys then)."""
        rows = np.flatnonzero(new)
        if not len(rows):
            return 0
        self.stats.new += len(rows)
        self._note_peak(ts, rows)
        if masks is not None:
            if len(masks) != len(slots):  # a refusal or discard left one of them unfiltered
                raise ValueError(f"{len(masks)} masks for {len(slots)} rows")
            self.table.masks[slots[rows]] = masks[rows]
        if keys is None:
            return len(rows)
        if self.context is not None and self.context.debug >= FLOW_DEBUG:
            ks = self.table.key_size
            raw = _raw(keys)
            for r in rows.tolist():
                log_created(raw[r * ks:(r + 1) * ks])
        return len(rows)

    def _note_peak(self, ts: np.ndarray, rows: np.ndarray) -> None:
        """A new peak of flows in the table, at the time of the last new row."""
        st = self.stats
        if len(self.table) > st.peak_flows:
            st.peak_flows = len(self.table)
            st.peak_ns = int(ts[rows[-1]])

    @hookimpl
    def agent_cache_flows(self, batch: FlowBatch, now_ns: int) -> None:
        """Merge flow deltas drained from a kernel map or the NFLOG C aggregator (columns):
        in C (:meth:`FlowTable.merge_records`) unless the run has per-flow debug lines or the
        batch's layout is one C cannot read; then with packed keys and NumPy. Both give the
        same table and statistics. Aggregation rules rewrite the batch's key columns first
        (on a copy, :meth:`KeyRules.apply`) and ``hash:N`` drops the rows it does not select
        (the batch hashed in C), so neither costs Python per row."""
        st = self.stats
        st.trunc += batch.trunc
        st.frag += batch.frag
        st.drop_packets += batch.dropped_packets
        st.drop_bytes += batch.dropped_bytes
        flows = batch.flows
        if not len(flows):
            return
        layout = self._record_layout(flows)
        if layout is not None:
            masks = None
            if self.rules:  # on a copy: the ingest's rows stay as they were
                flows = self._rows_copy(flows)
                masks = self.rules.apply(flows)
            discard = self._hash_discards(flows, layout.ops)
            if discard is not None:
                flows, masks = self._discard(flows, discard), _kept(masks, discard)
            if len(flows):
                self._merge_records(flows, layout, masks)
            return
        keys = self._keys_of(flows)
        masks = self.rules.apply(keys.view(self.schema.key_dtype)) if self.rules else None
        discard = self._hash_discards(keys, key_ops(0, self.table.key_size))
        if discard is not None:
            flows, keys, masks = self._discard(flows, discard), keys[~discard], _kept(masks,
                                                                                   discard)
        slots, new = self.table.lookup(keys, limit=self.config.maxflows)
        st.search += len(slots)
        refused = slots < 0
        if refused.any():
            kept = self._refuse(flows, refused)
            flows, slots, new, keys = flows[kept], slots[kept], new[kept], keys[kept]
            masks = None if masks is None else masks[kept]
        self.table.add_deltas(slots, new, flows["packets"], flows["octets"], flows["start_ns"],
                              flows["end_ns"], flows["tcp_flags"], flows["out_if"])
        self._mark_ending(slots, flows["tcp_flags"])
        st.found += len(slots) - self._count_new(keys, slots, new, flows["start_ns"], masks)
        st.traffic_packets += int(flows["packets"].sum())
        st.traffic_bytes += int(flows["octets"].sum())

    def _discard(self, flows: np.ndarray, discard: np.ndarray) -> np.ndarray:
        """``flows`` without the rows ``hash:N`` discards, whose traffic is counted."""
        self.stats.sampler_discarded_packets += int(flows["packets"][discard].sum())
        self.stats.sampler_discarded_bytes += int(flows["octets"][discard].sum())
        return flows[~discard]

    def _merge_records(self, flows: np.ndarray, layout: RecordLayout,
                       masks: np.ndarray | None = None) -> None:
        """:meth:`agent_cache_flows` in C: the same table and counters as the NumPy merge,
        the batch's traffic and TCP flags totalled by the merge's own pass over the rows
        (:class:`~agent.stages.flowtable.Merged`) instead of NumPy passes over their strided
        fields (~7 ns per row at 4,096-row batches). No keys: this path runs only where
        :meth:`_count_new` does not read them. ``masks``: the rows' aggregation masks."""
        st = self.stats
        slots, new, merged = self.table.merge_records(flows, layout, self.config.maxflows)
        st.search += len(slots)
        if merged.rows < len(slots):
            kept = self._refuse(flows, slots < 0)
            flows, slots, new = flows[kept], slots[kept], new[kept]
            masks = None if masks is None else masks[kept]
        if merged.flags & _END_FLAGS:
            self._mark_ending(slots, flows["tcp_flags"])
        st.found += len(slots) - self._count_new(None, slots, new, flows["start_ns"], masks)
        st.traffic_packets += merged.packets
        st.traffic_bytes += merged.octets

    def _refuse(self, flows: np.ndarray, refused: np.ndarray) -> np.ndarray:
        """Count the packets of the rows ``maxflows`` refused as lost; the rows kept."""
        st = self.stats
        lost = int(flows["packets"][refused].sum())
        st.maxflows += lost
        st.drop_packets += lost
        st.drop_bytes += int(flows["octets"][refused].sum())
        return ~refused

    def _record_layout(self, flows: np.ndarray) -> RecordLayout | None:
        """The layout for the C merge of ``flows``; ``None`` where the NumPy merge must run:
        debug logs keys, or the array is not a contiguous record array C can read."""
        if self.context is not None and self.context.debug >= FLOW_DEBUG:
            return None
        if not flows.flags.c_contiguous:
            return None
        dtype, (seen, schema, layout) = flows.dtype, self._last_layout
        if dtype is not seen or schema is not self.schema:  # (a batch's dtype is an ingest's)
            layout = record_layout(dtype, self.schema.key_dtype)
            self._last_layout = (dtype, self.schema, layout)
        return layout

    def _rows_copy(self, flows: np.ndarray) -> np.ndarray:
        """A copy of the C-contiguous record array ``flows`` for the rules to rewrite, in a
        buffer kept between batches (as :meth:`_keys_of`'s) up to :data:`_KEY_BUFFER_ROWS`
        rows: no fresh mmap to fault in at every drain step."""
        n = len(flows)
        if n > _KEY_BUFFER_ROWS:
            return flows.copy()
        if len(self._rows_buffer) < n or self._rows_buffer.dtype != flows.dtype:
            self._rows_buffer = np.empty(max(n, 4096), flows.dtype)
        rows = self._rows_buffer[:n]
        rows.view(np.uint8)[...] = flows.view(np.uint8)  # one memcpy, not a per-field cast
        return rows

    def _keys_of(self, flows: np.ndarray) -> np.ndarray:
        """:meth:`FlowSchema.keys_of` into a buffer kept between batches (the index copies
        the keys; nothing keeps them after the merge): a drain step's keys (4,096 x 44 bytes)
        would otherwise be a fresh mmap, faulted in and unmapped at every batch."""
        schema, n = self.schema, len(flows)
        if n > _KEY_BUFFER_ROWS:  # a rare large batch (a restore): its own array
            return schema.keys_of(flows)
        if len(self._key_buffer) < n or self._key_buffer.dtype != schema.key_dtype:
            self._key_buffer = np.empty(max(n, 4096), schema.key_dtype)
        keys = self._key_buffer[:n]
        keys[...] = flows[list(schema.key_names)]  # one structured cast, by position
        return keys.view(f"V{schema.key_size}")

    # --- cache -> aggregate ----------------------------------------------------------------

    @hookimpl
    def agent_cache_expire(self, now_ns: int, force: bool, limit: int = 0) -> FlowBatch:
        """Return flows that are idle, too old, ended by FIN/RST, or all of them (``force``).

        ``limit`` > 0: at most that many per call (forced: the core calls again until fewer
        come; a scan: the exporters' free backlog, the most overdue flows first, the rest stay
        due for the next scans); < 0 (a scan only): none now, every due flow stays.
        """
        if not force:
            self.table.settle()  # a forced scan's drain ends before the columns are read
            return self._sampled(self._take(*self._due(now_ns, limit)))
        self.deferred, self.deferred_since_ns = 0, 0  # every flow leaves now
        if self.sampler is None or limit <= 0:
            return self._sampled(self._forced(limit))
        # the sampler keeps fewer than it is given: take until `limit` flows are selected or
        # the table is empty, so that a part of exactly `limit` still means "more remain"
        parts, room = [], limit
        while room and len(self.table):
            parts.append(self._sampled(self._forced(room)))
            room -= len(parts[-1])
        return concat(parts, "cache") if parts else self._sampled(self._forced(limit))

    def _forced(self, limit: int) -> FlowBatch:
        """Take up to ``limit`` (0: all) cached flows, lowest slots first, whatever their
        times: flowEndReason forced, or end of flow for those that saw FIN or RST.

        A forced scan empties the table part after part (the core calls until a part is
        short), so the parts are a drain (:meth:`FlowTable.drain_slots`): copied out as any
        take, but their slots are freed all at once when the table is next used (never at
        the stop: the process exits), not one index removal and column reset per flow."""
        slots = self.table.drain_slots(max(limit, 0))
        reasons = np.full(len(slots), END_FORCED, np.uint8)
        if self.ending:  # a marked flow is one whose flags hold FIN or RST: read them
            ended = (self.table.flags[slots] & _END_FLAGS) != 0  # (per part, not per set)
            reasons[ended] = END_OF_FLOW
        batch = self._take(slots, reasons, drained=True)
        if not len(self.table):
            # the taken slots stay in the set until the table is empty (a Python set
            # update per part cost ~75 ns per FIN flow): _due reads a mark only where the
            # slot's flags hold FIN or RST, so a mark left on a freed slot is never read
            self.ending.clear()
        return batch

    def _sampled(self, batch: FlowBatch) -> FlowBatch:
        """The flows of ``batch`` the flow sampler selects (all without one), counted."""
        if self.sampler is not None:
            before = len(batch)
            batch = self.sampler.select_batch(batch)
            self.stats.sampler_unselected_flows += before - len(batch)
        self.stats.exported_flows += len(batch)
        return batch

    def _due(self, now_ns: int, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Slots to export (ascending) and their flowEndReason; with ``limit`` (see
        :meth:`agent_cache_expire`) the due flows beyond it are deferred (:meth:`_defer`)."""
        was_deferred, self.deferred, self.deferred_since_ns = self.deferred, 0, 0
        if not len(self.table):  # nothing cached: no pass over the table's capacity
            self.ending.clear()
            return np.zeros(0, np.int64), np.zeros(0, np.uint8)
        lag = self._delivery_lag()
        idle_ns = now_ns - self.config.inactive_timeout * _NS
        slots, idle = self.table.due(now_ns - self.config.active_timeout * _NS, idle_ns - lag)
        if lag:  # an active-timeout flow idle by ipt_NETFLOW's rule leaves as idle
            idle |= self.table.last[slots] <= idle_ns
        reasons = np.where(idle, np.uint8(END_IDLE), np.uint8(END_ACTIVE))
        if self.ending:
            ended = np.fromiter(self.ending, np.int64, len(self.ending))
            # a mark counts where the slot's flow holds FIN or RST (a free slot holds no
            # flags; a mark a forced take left on a slot since reused is not the new flow's)
            # and the flow is not due by its times already
            ended = ended[(self.table.flags[ended] & _END_FLAGS) != 0]
            ended = ended[~np.isin(ended, slots)]
            if len(ended):
                slots = np.concatenate((slots, ended))
                reasons = np.concatenate((reasons, np.full(len(ended), END_OF_FLOW, np.uint8)))
                order = np.argsort(slots, kind="stable")
                slots, reasons = slots[order], reasons[order]
        # exactly once: each slot at most once (a FIN flow due by its times is left out of
        # `ended` above), ascending (the take's order); one vector pass over the due slots
        assert len(slots) < 2 or bool((slots[1:] > slots[:-1]).all()), "due slots repeat"
        if limit and len(slots) > limit:
            slots, reasons = self._defer(slots, reasons, limit, now_ns, lag)
        if self.deferred:
            if not was_deferred:
                log.info("expiry spread over scans: %d flows due, %d leave now, the rest "
                         "wait for room in the exporters' backlog", len(slots) + self.deferred,
                         len(slots))
        else:
            self.ending.clear()
            if was_deferred:
                log.info("expiry spread over scans: done, the %d flows due now all leave",
                         len(slots))
        return slots, reasons

    def _delivery_lag(self) -> int:
        """ns the idle cutoff waits for packets still on their way (module docstring); none
        while the table is full or refused flows since the last scan: a flow idle by the
        timeout then leaves at once, as before the lag, so new flows are not refused for
        one lag longer (a packet still on its way may then start a second record)."""
        refused = self.stats.maxflows != self._maxflows_at_scan
        self._maxflows_at_scan = self.stats.maxflows
        if self.context is None or self.config.maxflows and (
                refused or len(self.table) >= self.config.maxflows):
            return 0
        return self.context.delivery_lag_ns()

    def _defer(self, slots: np.ndarray, reasons: np.ndarray, limit: int,
               now_ns: int, lag: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The ``limit`` (< 0: none) most overdue of the due ``slots``, ascending, and every
        one due for longer than the wait allows (module docstring; an idle flow is due
        ``lag`` after its inactive timeout, as :meth:`_due` found it); the others stay in the
        table, due, with their times and counters (ipt_NETFLOW's expiry spread over scans):
        counted in :attr:`deferred`, their FIN/RST mark kept for the next scan. Returns the
        slots that leave and their ``reasons``."""
        t, config = self.table, self.config
        due_at = np.minimum(t.last[slots] + (config.inactive_timeout * _NS + lag),
                            t.first[slots] + config.active_timeout * _NS)
        ended = reasons == END_OF_FLOW
        due_at[ended] = np.minimum(due_at[ended], t.last[slots[ended]])
        if config.maxflows and len(slots) - max(limit, 0) > config.maxflows // 2:
            return slots, reasons  # deferring more would soon refuse new flows: all leave
        taken = due_at <= now_ns - max(MAX_DEFER_S, config.inactive_timeout) * _NS
        if limit > 0:
            taken[np.argpartition(due_at, limit - 1)[:limit]] = True
        left = slots[~taken]
        if not len(left):
            return slots, reasons
        if self.ending:
            self.ending.intersection_update(left.tolist())
        self.deferred = len(left)
        self.deferred_since_ns = int(due_at[~taken].min())
        self.stats.deferred_scans += 1
        return slots[taken], reasons[taken]

    def _take(self, slots: np.ndarray, reasons: np.ndarray, drained: bool = False) -> FlowBatch:
        """Copy ``slots`` out as a batch (columns, no object per flow) and free them (with
        ``drained``: the part :meth:`FlowTable.drain_slots` handed out, freed later)."""
        schema = self.schema
        if not len(slots):
            return FlowBatch("cache", schema.empty(0), schema=schema)
        out = _populated(schema.empty(len(slots)))
        swaps = _key_swaps(schema.key_dtype, schema.record_dtype)
        fields = value_fields(schema.record_dtype)
        if self._held_count:  # held flows leaving (every take path)
            self._release(slots)
        if swaps is not None and fields is not None:
            # keys and counters straight into the rows (a scan's take frees the slots; a
            # drain's part leaves them to FlowTable.settle)
            take_rows = self.table.take_drained_records if drained else self.table.take_records
            finish = _finish_layout(schema.record_dtype, swaps)  # before the take frees slots
            masks = take_rows(slots, out, fields)
            if finish is not None:  # key fields to native order, masks, reasons: one pass
                finish_rows(out, out.itemsize, finish[0], np.ascontiguousarray(masks, np.uint16),
                            finish[1], np.ascontiguousarray(reasons, np.uint8), finish[2])
            else:
                for name in swaps:
                    out[name].byteswap(inplace=True)
                out["src_mask"], out["dst_mask"] = masks >> 8, masks & 0xFF
                out["end_reason"] = reasons
            _set_interfaces(out, None)
            return FlowBatch("cache", out, schema=schema)
        take = self.table.take_drained if drained else self.table.take
        if swaps is not None:  # the packed keys straight into the rows, then native order
            taken = take(slots, out, out.itemsize)
            for name in swaps:
                out[name].byteswap(inplace=True)
        else:  # one structured cast (by position, big-endian key to native columns)
            taken = take(slots, np.empty(len(slots), schema.key_dtype))
            out[list(schema.key_names)] = taken.keys
        out["packets"] = taken.packets
        out["octets"] = taken.octets
        out["start_ns"] = taken.first
        out["end_ns"] = taken.last
        out["tcp_flags"] = taken.flags
        out["src_mask"], out["dst_mask"] = taken.masks >> 8, taken.masks & 0xFF
        out["end_reason"] = reasons
        _set_interfaces(out, taken.out_if)
        return FlowBatch("cache", out, schema=schema)

    # --- saved state (agent/state.py) ------------------------------------------------------

    def dump(self) -> list[FlowRow]:
        """Take every flow out of the table, for saving across a restart.

        :return: ``(key, packets, octets, first_ns, last_ns, tcp_flags, out_if)`` per flow;
            the table is empty afterwards (put them back with :meth:`restore`).
        """
        slots = self.table.occupied()
        self._release(slots)
        t = self.table.take(slots)
        ks = self.table.key_size
        keys = [t.keys[i:i + ks] for i in range(0, len(t.keys), ks)]
        self.ending.clear()
        return list(zip(keys, t.packets.tolist(), t.octets.tolist(), t.first.tolist(),
                        t.last.tolist(), t.flags.tolist(), t.out_if.tolist(), strict=True))

    def restore(self, rows: list[FlowRow]) -> int:
        """Put flows from :meth:`dump` back; a key already present gets the counters added.

        ``maxflows`` is not applied: these packets were already accounted once.

        :return: the number of rows restored.
        """
        if not rows:
            return 0
        size = self.schema.key_size  # a key saved before the schema changed is re-laid out
        key_list = [k if len(k) == size else _rekey(k, size) for k, *_ in rows]
        keys = np.frombuffer(b"".join(key_list), f"V{size}")
        masks = None
        if self.rules:  # saved without these rules: merged into aggregated flows
            keys = keys.copy()
            masks = self.rules.apply(keys.view(self.schema.key_dtype))
        _k, packets, octets, first, last, flags, out_if = (
            np.array(c) for c in zip(*rows, strict=True))
        slots, new = self.table.lookup(keys)
        self.table.add_deltas(slots, new, packets, octets, first, last, flags, out_if)
        self._mark_ending(slots, flags.astype(np.uint8))
        self._hold(slots)  # not selected by this run's hash:N
        if masks is not None:
            created = np.flatnonzero(new)
            self.table.masks[slots[created]] = masks[created]
        if len(self.table) > self.stats.peak_flows:  # not lookup misses of this run: no `new`
            self.stats.peak_flows = len(self.table)
            self.stats.peak_ns = int(first[np.flatnonzero(new)[-1]])
        return len(rows)

    def memory_usage(self) -> tuple[int, int]:
        """Bytes of the flow index (the "hash": keys, hashes, buckets) and of the whole
        table (the index plus the counter columns), as allocated.

        :return: ``(index_bytes, table_bytes)``; table includes the index.
        """
        return self.table.memory_bytes()

    # --- observability ---------------------------------------------------------------------

    def columns(self) -> Columns:
        """The counter columns and the keys, for :mod:`agent.flowtop`.

        Pipeline thread only; the columns are the table's own arrays, read them before the
        table changes (a new flow may replace them with larger ones).
        """
        t = self.table
        t.settle()
        return Columns(t, t.packets, t.octets, t.first)

    def mem_traffic(self) -> tuple[int, int]:
        """Packets and bytes held by flows in the table (the seed's ``MemTraf``); read
        only: a forced scan's drain stays unsettled (:meth:`FlowTable.traffic`)."""
        return self.table.traffic()

    def counters(self) -> dict[str, Any]:
        """Cache counters plus active/peak flows, MemTraf, timeouts, memory, and the ingests'
        delivery lag (``delivery_lag_s``: how much longer than ``inactive_timeout`` an idle
        flow stays, while the table has room)."""
        out: dict[str, Any] = self.stats.as_dict()
        mem_pkts, mem_bytes = self.mem_traffic()
        index_mem, table_mem = self.memory_usage()
        out.update(active_flows=len(self.table), maxflows_limit=self.config.maxflows,
                   memtraf_packets=mem_pkts, memtraf_bytes=mem_bytes,
                   slots=self.table.rows, active_timeout=self.config.active_timeout,
                   inactive_timeout=self.config.inactive_timeout,
                   hash_mem_bytes=index_mem, flows_mem_bytes=table_mem,
                   expiry_deferred=self.deferred, expiry_deferred_since_ns=self.deferred_since_ns,
                   delivery_lag_s=self.context.delivery_lag_ns() / 1e9 if self.context else 0.0)
        return out

    @hookimpl
    def agent_collect_stats(self) -> dict[str, Any]:
        """:meth:`counters`, plus the aggregation rules in use (``rule_list``, the report's
        ``aggrN`` lines)."""
        return {**self.counters(), "rule_list": list(self.rules.texts)}
