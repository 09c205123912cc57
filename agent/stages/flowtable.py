"""The flow table's storage: fixed-width keys in C, counters in NumPy columns, by slot.

:class:`FlowTable` owns what :class:`~agent.stages.cache.FlowCache` stores and nothing of what
it decides (timeouts, ``maxflows`` as a policy, the sampler, statistics): the key index
(:class:`netflow_agent._flowindex.FlowIndex`, ``agent/_flowindex.c``: keys stored back to back
in C, no Python object per flow) maps a packed key to a slot number, and slot ``i`` of every
column holds that flow's counters. Whole batches go in and out with a few NumPy operations:

* :meth:`FlowTable.lookup` finds or inserts a batch of keys (one C call);
* :meth:`FlowTable.add_packets` / :meth:`FlowTable.add_deltas` merge a batch's rows into
  their slots (a key may repeat within a batch);
* :meth:`FlowTable.merge_records` does lookup and :meth:`~FlowTable.add_deltas` of a record
  array (a :class:`~agent.model.FlowBatch`'s flows) in two C passes over its rows: keys packed
  from each row a few rows at a time, counters added straight from the row's fields (no key
  array, no contiguous column copies, no ``ufunc.at``), for every record layout
  :func:`record_layout` can describe; the second pass also totals the rows it merged
  (:class:`Merged`), which the cache counts without reading the rows again;
* :meth:`FlowTable.take` copies slots out (keys and counters) and frees them;
* :meth:`FlowTable.drain_slots` / :meth:`FlowTable.take_drained` (or
  :meth:`~FlowTable.take_drained_records`, straight into record rows) empty the whole table
  part after part (a forced scan: the stop, a cache hand-over): each part is copied out as
  :meth:`~FlowTable.take` (:meth:`~FlowTable.take_records`) copies it, lowest slots first,
  but its slots are not freed one by one: the index is cleared and the columns reset at
  once when the table is next used (:meth:`FlowTable.settle`, run by every method that
  reads or changes flows), or never when the process exits. The read-only statistics
  (:meth:`FlowTable.traffic`, :meth:`FlowTable.memory_bytes`, ``len``) answer without
  settling, mid-drain too.

A free slot holds zero counters and :data:`FREE_NS` as first and last time, so timeout scans
over whole columns never select it and column sums equal the table's totals.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from netflow_agent._flowindex import FlowIndex, merge_records, take_records

__all__ = ["FREE_NS", "FlowTable", "Merged", "RecordLayout", "Taken", "record_layout",
           "value_fields"]

FREE_NS = 2**63 - 1  # first/last time of an unused slot: never expires
_MIN_ROWS = 1024
#: columns grow by at least rows // 16: the new rows are zero-filled (touched) at once, so the
#: slack is resident; a sixteenth rather than an eighth keeps ~0.4 MB less of it at 200k
#: flows (docs/performance.md, "Agent memory at the flood's drain and the stop")
_GROW_DIV = 16
#: rows merged per step: a batch's contiguous copies of its columns (``_col``) stay a few MB
#: (the eBPF drain and the NFLOG aggregator may hand over 100k+ flows at once); as fast
_MERGE_ROWS = 1 << 16
#: slots compared per step of :meth:`FlowTable.due`: its two boolean buffers (64 KiB each)
#: are heap blocks below the agent's mmap threshold (agent/heap.py), reused step after step,
#: where whole-column comparisons at 1M slots were fresh mappings of 1 MB each, faulted in
#: at every scan
_DUE_ROWS = 1 << 16
_COLUMNS = (("packets", np.uint64, 0), ("octets", np.uint64, 0), ("first", np.int64, FREE_NS),
            ("last", np.int64, FREE_NS), ("flags", np.uint8, 0), ("out_if", np.uint32, 0),
            ("masks", np.uint16, 0))


#: the record fields :meth:`FlowTable.merge_records` adds, in ``merge_records``' order, and
#: the native type each must have
_VALUE_FIELDS = (("packets", "=u8"), ("octets", "=u8"), ("start_ns", "=i8"), ("end_ns", "=i8"),
                 ("tcp_flags", "u1"), ("out_if", "=u4"))


@dataclass(frozen=True, slots=True)
class RecordLayout:
    """Where a record array's key and values lie, for the C merge (:func:`record_layout`)."""

    stride: int  # bytes per row
    ops: bytes  # uint32 (src, dst, len, swap) per run of key bytes
    fields: tuple[int, ...]  # byte offsets of the _VALUE_FIELDS in a row


@lru_cache(maxsize=16)
def record_layout(records: np.dtype, key: np.dtype) -> RecordLayout | None:
    """How to pack ``key`` (the schema's big-endian key dtype) from a row of ``records`` and
    read its values in C; ``None`` when a field is missing or of another kind or width, or
    the two ports are in different byte orders (the caller merges with NumPy then).
    Adjacent fields copied as they are become one copy."""
    fields: dict[str, tuple] = dict(records.fields or {})
    ops: list[list[int]] = []
    for name, (kd, dst, *_rest) in (key.fields or {}).items():
        if name not in fields:
            return None
        rd, src = fields[name][0], fields[name][1]
        if rd.kind != kd.kind or rd.itemsize != kd.itemsize or rd.kind not in "iuV":
            return None
        swap = int(rd.kind in "iu" and rd.itemsize > 1 and rd.isnative != kd.isnative)
        last = ops[-1] if ops else None
        if last and not swap and not last[3] and last[0] + last[2] == src \
                and last[1] + last[2] == dst:
            last[2] += rd.itemsize
        else:
            ops.append([src, dst, rd.itemsize, swap])
    if not all(name in fields and fields[name][0] == np.dtype(code)
               for name, code in _VALUE_FIELDS):
        return None
    if len({fields[name][0].isnative for name in ("src_port", "dst_port") if name in fields}) > 1:
        return None  # the aggregation rewrite (KeyRules.apply) reads both ports in one order
    return RecordLayout(records.itemsize, np.array(ops, np.uint32).tobytes(),
                        tuple(int(fields[name][1]) for name, _code in _VALUE_FIELDS))


@lru_cache(maxsize=16)
def value_fields(records: np.dtype) -> tuple[int, ...] | None:
    """Byte offsets in a row of ``records`` (a record dtype) of the :data:`_VALUE_FIELDS`,
    for :meth:`FlowTable.take_records`; ``None`` when one is missing or of another type."""
    fields: dict[str, tuple] = dict(np.dtype(records).fields or {})
    if not all(name in fields and fields[name][0] == np.dtype(code)
               for name, code in _VALUE_FIELDS):
        return None
    return tuple(int(fields[name][1]) for name, _code in _VALUE_FIELDS)


class Merged(NamedTuple):
    """What :meth:`FlowTable.merge_records` added: the rows whose key has a slot, the sums of
    their packets and octets (modulo 2**64, as NumPy's ``sum`` of uint64) and the OR of their
    TCP flags."""

    rows: int
    packets: int
    octets: int
    flags: int


def _col(values: np.ndarray, dtype: type) -> np.ndarray:
    """``values`` as a contiguous array of ``dtype``: ``ufunc.at`` over a strided column (a
    record array's field) costs ~100x more per element than over a contiguous copy."""
    return np.ascontiguousarray(values, dtype)


def _chunks(rows: int) -> list[slice]:
    """``rows`` in order, as slices of at most :data:`_MERGE_ROWS` (rows of one key stay in
    order, so the merge is the same as in one step)."""
    return [slice(lo, lo + _MERGE_ROWS) for lo in range(0, rows, _MERGE_ROWS)]


@dataclass(frozen=True, slots=True)
class Taken:
    """Flows copied out of the table by :meth:`FlowTable.take`, in the order asked."""

    keys: bytes | np.ndarray  # the packed keys, back to back (len(slots) * key_size B)
    packets: np.ndarray  # uint64
    octets: np.ndarray  # uint64
    first: np.ndarray  # int64 ns
    last: np.ndarray  # int64 ns
    flags: np.ndarray  # uint8, OR of TCP flags
    out_if: np.ndarray  # uint32, the last non-zero other interface
    masks: np.ndarray  # uint16, src_mask << 8 | dst_mask (the cache's aggregation rules)


class FlowTable:
    """Flows by slot: the C key index plus one NumPy column per counter.

    :param key_size: bytes per packed key (the run's schema).
    :param capacity: flows to allocate room for at once (``[cache] hashsize``); grows as
        needed either way.
    """

    def __init__(self, key_size: int, capacity: int = 0):
        self.index = FlowIndex(key_size, capacity)
        rows = max(capacity, _MIN_ROWS)
        self.packets = np.zeros(rows, np.uint64)
        self.octets = np.zeros(rows, np.uint64)
        self.first = np.full(rows, FREE_NS, np.int64)
        self.last = np.full(rows, FREE_NS, np.int64)
        self.flags = np.zeros(rows, np.uint8)
        self.out_if = np.zeros(rows, np.uint32)
        self.masks = np.zeros(rows, np.uint16)  # set by the caller for new flows
        #: a drain (:meth:`drain_slots`): the lowest ``drained`` flows are copied out, not
        #: yet freed; the next part starts at slot ``_drain_from``
        self.drained = 0
        self._drain_from = 0
        self._window: tuple[int, int, int] | None = None  # the part drain_slots handed out

    @property
    def key_size(self) -> int:
        """Bytes per key."""
        return int(self.index.key_size)

    @property
    def rows(self) -> int:
        """Slots the columns have room for (at least :attr:`FlowIndex.slot_count`)."""
        return len(self.packets)

    def __len__(self) -> int:
        return len(self.index) - self.drained

    def settle(self) -> None:
        """Free the slots a drain copied out (:meth:`take_drained`), before anything else
        reads or changes the table: all of them at once when the drain emptied it (the
        index cleared, each column reset up to the highest slot used), else one by one."""
        if not self.drained and self._window is None:
            return
        drained, self.drained, self._drain_from, self._window = self.drained, 0, 0, None
        if drained == len(self.index):
            high = self.index.slot_count
            self.index.clear()
            for name, _dtype, fill in _COLUMNS:
                getattr(self, name)[:high] = fill
        elif drained:
            self._free(np.frombuffer(self.index.occupied(drained), np.int64))

    def reserve(self, rows: int) -> None:
        """Grow every column to at least ``rows`` slots (new ones free), by a sixteenth at a time.

        Each column is grown in place (``ndarray.resize``: ``realloc``, which glibc serves
        with ``mremap`` for a block this large), so the old and the new column are never
        both alive: growing 100k flows' worth of columns costs their size once, not three
        times (old + doubled copy). Growing costs a ``mremap`` and filling the new part, so
        small steps are cheap and keep the slack (touched, zero-filled rows ahead of the
        index's slot count) at most a sixteenth of the columns. A column something else still
        references (a view, a caller's reference) cannot move under it: that one is copied
        instead.
        """
        self.settle()
        if rows <= self.rows:
            return
        rows = max(rows, self.rows + self.rows // _GROW_DIV)
        for name, dtype, fill in _COLUMNS:
            old = len(getattr(self, name))
            try:  # refcheck: refuses (ValueError) while anything but self holds the array
                getattr(self, name).resize(rows)
            except ValueError:
                new = np.full(rows, fill, dtype)
                new[:old] = getattr(self, name)
                setattr(self, name, new)
                continue
            if fill:  # resize zero-fills the new part
                getattr(self, name)[old:] = fill

    # --- in --------------------------------------------------------------------------------

    def lookup(self, keys: bytes | np.ndarray, insert: bool = True,
               limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Slots of ``keys`` (n * key_size bytes, any C-contiguous buffer), inserting new ones.

        :param limit: with ``insert``, refuse new keys once the table holds this many (-1).
        :return: ``(slots, new)``: int64 slot per row (-1: absent and not inserted) and a
            bool per row, true on the row that inserted its key. New slots are free: the
            caller sets them with :meth:`add_packets` or :meth:`add_deltas`.
        """
        self.settle()
        slots, new = self.index.lookup(keys, insert, limit)
        self.reserve(self.index.slot_count)
        return np.frombuffer(slots, np.int64), np.frombuffer(new, np.bool_)

    def merge_records(self, flows: np.ndarray, layout: RecordLayout,
                      limit: int = 0) -> tuple[np.ndarray, np.ndarray, Merged]:
        """:meth:`lookup` of the keys of ``flows`` (a C-contiguous record array that
        ``layout`` describes), then :meth:`add_deltas` of its rows, both in C; the same
        table as those two. A row whose key ``limit`` refuses (slot -1) is not added.

        :return: ``(slots, new, merged)``: ``slots`` and ``new`` as :meth:`lookup`, and the
            totals of the rows added (:class:`Merged`).
        """
        self.settle()
        slots, new = self.index.lookup_records(flows, layout.stride, layout.ops, limit=limit)
        self.reserve(self.index.slot_count)
        merged = Merged(*merge_records(flows, layout.stride, layout.fields, slots, new,
                                       self.packets, self.octets, self.first, self.last,
                                       self.flags, self.out_if))
        return np.frombuffer(slots, np.int64), np.frombuffer(new, np.bool_), merged

    def add_packets(self, slots: np.ndarray, new: np.ndarray, lengths: np.ndarray,
                    flags: np.ndarray, ts: np.ndarray, out_if: np.ndarray) -> None:
        """Account one packet per row into its slot (every slot valid): a flow's first time
        is the earliest of its packets' and its last time the latest (a capture's timestamps
        are not always in order: ``tcpdump -i any`` across CPUs, merged files), as tshark and
        the RFCs' flowStart/flowEnd read them; flags are ORed; the last non-zero output
        interface wins."""
        self.settle()
        for part in _chunks(len(slots)):
            self._add_packets(slots[part], new[part], lengths[part], flags[part], ts[part],
                              out_if[part])

    def _add_packets(self, slots: np.ndarray, new: np.ndarray, lengths: np.ndarray,
                     flags: np.ndarray, ts: np.ndarray, out_if: np.ndarray) -> None:
        ts = _col(ts, np.int64)
        self._start(slots[new], ts[new], ts[new])
        np.add.at(self.packets, slots, np.uint64(1))
        np.add.at(self.octets, slots, _col(lengths, np.uint64))
        self._merge(slots, ts, ts, flags, out_if)  # ~4 ns a row for the earliest start

    def add_deltas(self, slots: np.ndarray, new: np.ndarray, packets: np.ndarray,
                   octets: np.ndarray, start: np.ndarray, end: np.ndarray,
                   flags: np.ndarray, out_if: np.ndarray) -> None:
        """Add pre-aggregated counters per row into its slot (every slot valid): counts
        summed, the earliest start and latest end kept, flags ORed, the last non-zero
        ``out_if`` wins."""
        self.settle()
        for part in _chunks(len(slots)):
            self._add_deltas(slots[part], new[part], packets[part], octets[part], start[part],
                             end[part], flags[part], out_if[part])

    def _add_deltas(self, slots: np.ndarray, new: np.ndarray, packets: np.ndarray,
                    octets: np.ndarray, start: np.ndarray, end: np.ndarray,
                    flags: np.ndarray, out_if: np.ndarray) -> None:
        start, end = _col(start, np.int64), _col(end, np.int64)
        self._start(slots[new], start[new], end[new])
        np.add.at(self.packets, slots, _col(packets, np.uint64))
        np.add.at(self.octets, slots, _col(octets, np.uint64))
        self._merge(slots, start, end, flags, out_if)

    def _start(self, slots: np.ndarray, first: np.ndarray, last: np.ndarray) -> None:
        self.first[slots] = first
        self.last[slots] = last

    def _merge(self, slots: np.ndarray, start: np.ndarray, end: np.ndarray,
               flags: np.ndarray, out_if: np.ndarray) -> None:
        np.minimum.at(self.first, slots, start)
        np.maximum.at(self.last, slots, end)
        flags, out_if = _col(flags, np.uint8), _col(out_if, np.uint32)
        if flags.any():
            np.bitwise_or.at(self.flags, slots, flags)
        known = out_if != 0
        if known.any():
            self.out_if[slots[known]] = out_if[known]  # repeated slots: the last row wins

    # --- out -------------------------------------------------------------------------------

    def due(self, first_cut: int, last_cut: int) -> tuple[np.ndarray, np.ndarray]:
        """Slots whose flow started at or before ``first_cut`` or was last seen at or before
        ``last_cut`` (ns), ascending, and for each whether it was last seen by then (free
        slots never qualify: :data:`FREE_NS`). Only slots below the index's slot count are
        read (every slot above is free), :data:`_DUE_ROWS` at a time into two reused
        buffers: no temporary the size of the columns.

        :return: ``(slots, idle)``: int64 slot numbers and a bool per slot.
        """
        self.settle()
        high = min(int(self.index.slot_count), self.rows)
        step = min(high, _DUE_ROWS)
        started, seen = np.empty(step, np.bool_), np.empty(step, np.bool_)
        found: list[np.ndarray] = []
        idle: list[np.ndarray] = []
        for lo in range(0, high, _DUE_ROWS):
            n = min(_DUE_ROWS, high - lo)
            a, b = started[:n], seen[:n]
            np.less_equal(self.first[lo:lo + n], first_cut, out=a)
            np.less_equal(self.last[lo:lo + n], last_cut, out=b)
            np.logical_or(a, b, out=a)
            hits = np.flatnonzero(a)
            if len(hits):
                idle.append(b[hits])
                hits += lo
                found.append(hits)
        if not found:
            return np.zeros(0, np.int64), np.zeros(0, np.bool_)
        return np.concatenate(found), np.concatenate(idle)

    def occupied(self, limit: int = 0) -> np.ndarray:
        """Slots holding a flow, ascending (with ``limit`` > 0: the lowest ``limit``)."""
        self.settle()
        return np.frombuffer(self.index.occupied(limit), np.int64)

    def keys(self, slots: np.ndarray) -> bytes:
        """The packed keys of ``slots``, back to back."""
        self.settle()
        return self.index.keys(np.ascontiguousarray(slots, np.int64))

    def drain_slots(self, limit: int = 0) -> np.ndarray:
        """The next part of a drain that empties the table: the lowest ``limit`` (0: all)
        flows not yet drained, ascending: the slots :meth:`occupied` would give if each part
        had been taken and freed. Copy them out with :meth:`take_drained` before anything
        else; a drain starts when none runs, and ends when the table is next used."""
        rest = len(self)  # a part handed out and not taken is handed out again
        n = rest if limit <= 0 else min(limit, rest)
        slots = (np.frombuffer(self.index.occupied(n, self._drain_from), np.int64) if n
                 else np.zeros(0, np.int64))
        self._window = (int(slots[0]), int(slots[-1]), len(slots)) if len(slots) else None
        return slots

    def take_drained(self, slots: np.ndarray, keys: np.ndarray, stride: int = 0) -> Taken:
        """Copy out the part :meth:`drain_slots` just handed out, as :meth:`take` does, without
        freeing its slots (:meth:`settle` frees them). The counters are views of the columns
        where the part's slots are consecutive: read them before the table is used again.

        :raise ValueError: ``slots`` is not that part.
        """
        n = len(slots)
        if not n:
            return self._gather(slots)
        self._check_part(slots, "take_drained")
        slots = np.ascontiguousarray(slots, np.int64)
        self.index.take(slots, keys, stride or self.key_size, True)
        out = self._gather(self._part_at(slots), keys)
        self._drained_part(slots)
        return out

    def take_drained_records(self, slots: np.ndarray, out: np.ndarray,
                             fields: tuple[int, ...]) -> np.ndarray:
        """:meth:`take_records` of the part :meth:`drain_slots` just handed out, without
        freeing its slots (:meth:`settle` frees them): keys and counters straight into the
        rows of ``out`` in one C pass each, where :meth:`take_drained`'s counters are
        copied into the rows' strided fields column after column by the caller.

        :return: the slots' masks (a view of the column where the part's slots are
            consecutive: read it before the table is used again).
        :raise ValueError: ``slots`` is not that part, or ``out`` and ``fields`` as
            :meth:`take_records` refuses them (nothing taken).
        """
        if not len(slots):
            return self.masks[:0].copy()
        self._check_part(slots, "take_drained_records")
        slots = np.ascontiguousarray(slots, np.int64)
        self._check_rows(slots, out, fields)
        self.index.take(slots, out, out.itemsize, True)
        take_records(out, out.itemsize, fields, slots, self.packets, self.octets, self.first,
                     self.last, self.flags, self.out_if, True)
        masks = self.masks[self._part_at(slots)]
        self._drained_part(slots)
        return masks

    def _check_part(self, slots: np.ndarray, what: str) -> None:
        """Refuse (ValueError) ``slots`` unless they are the part :meth:`drain_slots` handed
        out last (first, last and count)."""
        if self._window != (int(slots[0]), int(slots[-1]), len(slots)):
            raise ValueError(f"{what}: not the part drain_slots handed out")

    @staticmethod
    def _part_at(slots: np.ndarray) -> np.ndarray | slice:
        """A drain part's slots as a slice when they are consecutive (views), else as they
        are (copies)."""
        lo, hi = int(slots[0]), int(slots[-1]) + 1
        return slice(lo, hi) if hi - lo == len(slots) else slots

    def _drained_part(self, slots: np.ndarray) -> None:
        """Count a drain part as copied out: the next part starts after its last slot."""
        self.drained += len(slots)
        self._drain_from, self._window = int(slots[-1]) + 1, None

    def _gather(self, at: np.ndarray | slice, keys: bytes | np.ndarray = b"") -> Taken:
        """The counters of the slots ``at`` (a slice: views, else copies)."""
        return Taken(keys, self.packets[at], self.octets[at], self.first[at], self.last[at],
                     self.flags[at], self.out_if[at], self.masks[at])

    def _free(self, slots: np.ndarray) -> None:
        """Take ``slots`` out of the index and reset their columns."""
        self.index.remove(slots)
        for name, _dtype, fill in _COLUMNS:
            getattr(self, name)[slots] = fill

    def take(self, slots: np.ndarray, keys: np.ndarray | None = None,
             stride: int = 0) -> Taken:
        """Copy ``slots`` out (keys and counters, in that order) and free them.

        :param keys: where the keys go (writable, C-contiguous): key ``r`` at byte
            ``r * stride`` (0: the key size, keys back to back; a record array's itemsize:
            each key into its row, the packed bytes as they are). None: a new bytes object.
            Either way :attr:`Taken.keys` is where they went.
        """
        self.settle()
        slots = np.ascontiguousarray(slots, np.int64)
        out = self._gather(slots, self.index.keys(slots) if keys is None else keys)
        if keys is None:
            self.index.remove(slots)
        else:  # the keys copied and the slots freed in one pass (FlowIndex.take)
            self.index.take(slots, keys, stride or self.key_size)
        for name, _dtype, fill in _COLUMNS:
            getattr(self, name)[slots] = fill
        return out

    def take_records(self, slots: np.ndarray, out: np.ndarray,
                     fields: tuple[int, ...]) -> np.ndarray:
        """:meth:`take` straight into the rows of the record array ``out`` (C-contiguous, at
        least ``len(slots)`` rows): row ``r`` gets the packed key of ``slots[r]`` as it is
        (the caller swaps the key fields to native order) and its packets, octets, first,
        last, flags and out_if at the byte offsets ``fields`` (:func:`value_fields`), in one
        C pass with no array per column; the slots are freed.

        :return: the slots' masks (uint16, ``src_mask << 8 | dst_mask``).
        """
        self.settle()
        slots = np.ascontiguousarray(slots, np.int64)
        self._check_rows(slots, out, fields)  # before the index lets go of the keys
        masks = self.masks[slots]
        self.index.take(slots, out, out.itemsize)
        take_records(out, out.itemsize, fields, slots, self.packets, self.octets, self.first,
                     self.last, self.flags, self.out_if)
        self.masks[slots] = 0
        return masks

    def _check_rows(self, slots: np.ndarray, out: np.ndarray, fields: tuple[int, ...]) -> None:
        """What :func:`take_records` would refuse, refused before the index's take: the
        pair frees a slot's key and its counters together or neither (ValueError)."""
        stride = out.itemsize
        if not (out.flags.c_contiguous and out.flags.writeable and len(out) >= len(slots)):
            raise ValueError(f"out: need {len(slots)} writable C-contiguous rows")
        if len(fields) != len(_VALUE_FIELDS) or not all(
                0 <= off <= stride - np.dtype(code).itemsize
                for off, (_name, code) in zip(fields, _VALUE_FIELDS, strict=True)):
            raise ValueError(f"fields: {fields} are not value offsets in a {stride}-byte row")
        if slots.size and any(np.may_share_memory(slots, col) for col in (
                self.packets, self.octets, self.first, self.last, self.flags, self.out_if)):
            raise ValueError("slots: overlap a column")

    # --- read-only: no settle (a drain's stop or the stats between its parts free nothing)

    def traffic(self) -> tuple[int, int]:
        """``(packets, octets)`` of the flows in the table: what the column sums give after
        :meth:`settle`, without it. A drain has copied out every occupied slot below
        ``_drain_from`` and none from there on, and free slots hold 0: the sums from there."""
        if self.drained and self.drained == len(self.index):
            return 0, 0
        at = slice(self._drain_from, None)
        return (int(self.packets[at].sum(dtype=np.uint64)),
                int(self.octets[at].sum(dtype=np.uint64)))

    def memory_bytes(self) -> tuple[int, int]:
        """``(index, table)``: bytes of the key index, and of the index plus the columns,
        as allocated (freeing slots or clearing the index keeps them: no :meth:`settle`)."""
        index = int(self.index.memory_bytes())
        return index, index + sum(getattr(self, name).nbytes for name, _d, _f in _COLUMNS)
