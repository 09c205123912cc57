"""Flow columns as big-endian wire bytes: how the v5/v9/IPFIX encoders write a FlowBatch.

This module owns the conversion of :class:`~agent.model.FlowBatch` columns into the byte
layout of export records, in bulk (a few NumPy operations per template and batch, no Python
object per flow):

* :func:`flow_columns`: the record array of what an exporter was handed (a ``FlowBatch``, or
  a list of :class:`~agent.model.FlowRecord` from a plugin or a test);
* :func:`pack_template`: the data records of one template: a packed big-endian structured
  dtype with one field per template field, filled column by column, viewed as one block of
  bytes (:class:`PackedRecords`) that the packet assembly cuts into packets;
* the flow schema's optional and plugin fields (:meth:`agent.schema.FlowSchema.export_fields`)
  in their declared ``width``: 1, 2, 4 or 8 bytes as unsigned big-endian integers, any other
  width (an MPLS label stack entry: 3 bytes) as the low ``width`` bytes of the value
  (RFC 7011 section 6.2 reduced-size encoding), ``bytes`` fields (MAC addresses) as they are
  (:func:`wire_dtype`, :func:`wire_columns`);
* :func:`classify_rows`: each row's template class and the batch's times and counters, in
  one C pass (``_wirepack.classify``);
* the loops per record and per packet in C (``agent/_wirepack.c``): :func:`pack_template`'s
  plain fields (one pass over a template's rows, where they lie unless the template has
  schema fields; NumPy's structured cast where a field is not a copy, a reversed copy or a
  zero extension: a signed column narrower than its field, a big-endian host),
  :func:`frame_packets`; two fields computed from their row (:class:`UptimeMs`: ms since a
  base of a ns column, v9's FIRST/LAST_SWITCHED; :class:`IcmpTypeCode`: v9's ICMP_TYPE) in
  the same pass, NumPy computing them where the plain fields take the cast.

Addresses are ``V16`` columns with IPv4 zero-padded: a 4-byte template field takes the first
4 bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, overload

import numpy as np

from . import _wirepack
from .ie import BY_ID, FLOW_FIELDS
from .model import FlowBatch, FlowRecord
from .schema import FlowField

__all__ = [
    "IcmpTypeCode", "PackedRecords", "RowClasses", "UptimeMs", "address_column", "any_bytes",
    "classify_rows", "flow_columns", "frame_packets", "group_rows", "join_records",
    "pack_template", "rows_of",
    "template_dtype", "wire_code", "wire_columns", "wire_dtype",
]

_NATIVE_WIDTHS = (1, 2, 4, 8)
_BYTE_TYPES = frozenset({"ipv4Address", "ipv6Address", "macAddress", "octetArray", "string"})
#: IE id -> the record column it is written from as it is (addresses included)
_COLUMN_OF_IE = {ie: name for name, ids in FLOW_FIELDS.items() for ie in ids}


# --- the optional and plugin fields ----------------------------------------------------------


def wire_code(f: FlowField) -> str:
    """The NumPy type code of ``f`` on the wire: ``>u<width>`` or ``V<width>``."""
    if f.dtype != "bytes" and f.width in _NATIVE_WIDTHS:
        return f">u{f.width}"
    return f"V{f.width}"


def wire_dtype(fields: Sequence[FlowField]) -> np.dtype:
    """A packed (no padding) big-endian structured dtype, one field per :class:`FlowField`."""
    return np.dtype([(f.name, wire_code(f)) for f in fields])


def fill_fields(out: np.ndarray, flows: np.ndarray, fields: Iterable[FlowField]) -> None:
    """Write the ``fields`` columns of ``flows`` into the same-named fields of ``out``."""
    for f in fields:
        column = flows[f.name]
        if f.dtype == "bytes":
            out[f.name] = column
        elif f.width in _NATIVE_WIDTHS:
            out[f.name] = column.astype(np.uint64) & np.uint64((1 << 8 * f.width) - 1)
        else:  # the low ``width`` bytes of the big-endian 8-byte value
            be = column.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - f.width:]
            out[f.name] = np.ascontiguousarray(be).view(f"V{f.width}").ravel()


def wire_columns(flows: np.ndarray, fields: Sequence[FlowField]) -> np.ndarray:
    """The ``fields`` columns of the record array ``flows`` in wire layout.

    :return: a structured array of :func:`wire_dtype` with one row per flow.
    """
    out = np.zeros(len(flows), wire_dtype(fields))
    fill_fields(out, flows, fields)
    return out


# --- whole records ---------------------------------------------------------------------------


def flow_columns(records: FlowBatch | np.ndarray | Iterable[FlowRecord],
                 on_error: Callable[[FlowRecord, Exception], None] | None = None) -> np.ndarray:
    """The record array of what an exporter was handed.

    :param records: a :class:`FlowBatch` (its columns, no copy), a record array (as it is)
        or flow records.
    :param on_error: for records whose values do not fit their columns (a port over 65535):
        called for each, which is then left out. ``None``: the error propagates.
    :raises OverflowError: (without ``on_error``) a value does not fit its column.
    """
    if isinstance(records, FlowBatch):
        return records.flows
    if isinstance(records, np.ndarray):
        return records
    recs = list(records)
    try:
        return FlowBatch.from_records(recs).flows
    except (OverflowError, TypeError, ValueError):
        if on_error is None:
            raise
    good = []
    for r in recs:
        try:
            good.append(FlowBatch.from_records([r]).flows)
        except (OverflowError, TypeError, ValueError) as exc:
            on_error(r, exc)
    return np.concatenate(good) if good else FlowBatch.from_records([]).flows


def group_rows(classes: np.ndarray) -> dict[int, np.ndarray | None]:
    """The rows of each class, in one stable pass instead of a mask per class.

    :param classes: a small non-negative integer per row (a template's row class).
    :return: class -> ascending row numbers, in ascending class order; ``None`` when every
        row has that class (use the rows as they are, no copy).
    """
    if not len(classes):
        return {}
    low, high = int(classes.min()), int(classes.max())
    if low == high:
        return {low: None}
    small = (classes - low).astype(np.uint8 if high - low < 256 else np.int64)
    order = np.argsort(small, kind="stable")  # a radix sort for uint8: rows keep their order
    bounds = np.concatenate(([0], np.cumsum(np.bincount(small))))
    return {low + c: order[bounds[c]:bounds[c + 1]] for c in range(high - low + 1)
            if bounds[c + 1] > bounds[c]}


@dataclass(frozen=True, slots=True)
class RowClasses:
    """What one pass over a batch's rows tells the encoders (:func:`classify_rows`).

    :ivar rows: class -> its ascending row numbers, as :func:`group_rows` gives them
        (``None``: every row has that class).
    :ivar latest: the latest start or end time (0 without rows).
    :ivar earliest: the earliest start time that is not 0 (0: none).
    :ivar lowest: the earliest start or end time (0 without rows).
    :ivar largest: the largest packets or octets counter (0 without rows).
    """

    rows: dict[int, np.ndarray | None]
    latest: int
    earliest: int
    lowest: int
    largest: int


#: the columns :func:`classify_rows` reads in C, and their native types
_CLASSIFY_COLUMNS = {"ip_version": "u1", "next_hop": "V16", "src_mask": "u1",
                     "dst_mask": "u1", "protocol": "u1", "packets": "<u8", "octets": "<u8",
                     "start_ns": "<i8", "end_ns": "<i8"}


def classify_rows(flows: np.ndarray, *, v6: int = 0, routed: int = 0, icmp: int = 0,
                  v6_exact: bool = False) -> RowClasses:
    """Each row's template class, its rows grouped, and the batch's times and counters.

    A row's class is ``v6 * IPv6 + routed * routed + icmp * ICMP`` (below 8): IPv6 means an
    ``ip_version`` other than 4 (``v6_exact``: equal to 6), routed a next hop that is not
    all zeros or a prefix length that is not 0, ICMP protocol 1 or 58. One pass in C
    (``_wirepack.classify``) where NumPy made a dozen (the class's parts, a stable sort, the
    times' and counters' reductions); NumPy where the record array is not C-contiguous or
    its columns are not the native ones.

    :raise ValueError: a weight below 0, or weights whose sum exceeds 7 (both paths).
    """
    weights = (v6, routed, icmp)
    if not all(isinstance(w, int | np.integer) and 0 <= w <= 7 for w in weights) \
            or sum(int(w) for w in weights) > 7:
        raise ValueError(f"classify_rows: weights v6={v6}, routed={routed}, icmp={icmp}:"
                         " each 0..7, classes below 8")
    offsets = _classify_offsets(flows.dtype) if flows.flags.c_contiguous else None
    if offsets is None:
        return _classify_numpy(flows, v6, routed, icmp, v6_exact)
    rows, counts, latest, earliest, lowest, largest = _wirepack.classify(
        flows, flows.itemsize, **offsets, v6_exact=v6_exact, v6_weight=v6,
        routed_weight=routed, icmp_weight=icmp)
    if rows is None:
        return RowClasses({c: None for c, k in enumerate(counts) if k}, latest, earliest,
                          lowest, largest)
    order = np.frombuffer(rows, np.int64)
    groups: dict[int, np.ndarray | None] = {}
    at = 0
    for c, k in enumerate(counts):
        if k:
            groups[c] = order[at:at + k]
            at += k
    return RowClasses(groups, latest, earliest, lowest, largest)


@lru_cache(maxsize=16)  # a run has one record dtype or a few (schema changes)
def _classify_offsets(record: np.dtype) -> dict[str, int] | None:
    """``_wirepack.classify``'s column offsets in ``record``; ``None``: NumPy's path."""
    columns: Mapping[str, Any] = record.fields or {}
    names = {"ip_version": "version", "next_hop": "next_hop", "src_mask": "src_mask",
             "dst_mask": "dst_mask", "protocol": "protocol", "packets": "packets",
             "octets": "octets", "start_ns": "start", "end_ns": "end"}
    if not np.little_endian:
        return None
    out = {}
    for column, code in _CLASSIFY_COLUMNS.items():
        found = columns.get(column)
        if found is None or found[0] != np.dtype(code):
            return None
        out[names[column]] = found[1]
    return out


def _classify_numpy(flows: np.ndarray, v6: int, routed: int, icmp: int,
                    v6_exact: bool) -> RowClasses:
    """:func:`classify_rows` in NumPy (its reference)."""
    version = flows["ip_version"]
    is_v6 = (version == 6) if v6_exact else (version != 4)
    protocol = flows["protocol"]
    is_routed = (any_bytes(flows["next_hop"]) | (flows["src_mask"] != 0)
                 | (flows["dst_mask"] != 0))
    classes = (v6 * is_v6.astype(np.uint8) + routed * is_routed.astype(np.uint8)
               + icmp * ((protocol == 1) | (protocol == 58)).astype(np.uint8))
    if not len(flows):
        return RowClasses({}, 0, 0, 0, 0)
    starts, ends = flows["start_ns"], flows["end_ns"]
    known = starts[starts != 0]
    return RowClasses(
        group_rows(classes), max(int(starts.max()), int(ends.max())),
        int(known.min()) if len(known) else 0, min(int(starts.min()), int(ends.min())),
        max(int(flows["packets"].max()), int(flows["octets"].max())))


def rows_of(flows: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """``flows`` at ``rows`` (from :func:`group_rows`; ``None``: all of them, no copy)."""
    return flows if rows is None else flows.take(rows)


def any_bytes(column: np.ndarray) -> np.ndarray:
    """Whether each row of a 16-byte column (``V16``: an address) is not all zeros."""
    words = np.ascontiguousarray(column).view(np.uint64).reshape(-1, 2)
    return (words[:, 0] | words[:, 1]) != 0


def address_column(flows: np.ndarray, name: str, width: int) -> np.ndarray:
    """The first ``width`` bytes of the 16-byte address column ``name``, one row per flow."""
    return np.ascontiguousarray(flows[name]).view(np.uint8).reshape(-1, 16)[:, :width]


#: the IE id of a padding field (:func:`template_dtype`): zero bytes, no column
PADDING = 0


def _is_bytes(ie: int, length: int) -> bool:
    known = BY_ID.get(ie)
    return length not in _NATIVE_WIDTHS or (known is not None
                                            and known.data_type in _BYTE_TYPES)


def template_dtype(fields: Sequence[tuple[int, int]],
                   extra: Sequence[FlowField] = ()) -> np.dtype:
    """The packed big-endian record of a template: ``fields`` (named ``ie<id>``) then the
    schema fields ``extra`` (named as their columns).

    :param fields: ``(IE id, length)`` pairs before ``extra``, in wire order; IE 0
        (reserved by IANA) is ``length`` zero bytes (a fixed layout's padding: NetFlow v5),
        named ``pad0``, ``pad1``... in their order.
    """
    spec: list[tuple[Any, ...]] = []
    pads = 0
    for ie, length in fields:
        if ie == PADDING:
            spec.append((f"pad{pads}", "u1", (length,)))
            pads += 1
            continue
        spec.append((f"ie{ie}", "u1", (length,)) if _is_bytes(ie, length)
                    else (f"ie{ie}", f">u{length}"))
    spec += [(f.name, wire_code(f)) for f in extra]
    return np.dtype(spec)


@dataclass(frozen=True, slots=True)
class UptimeMs:
    """A 4-byte field of the milliseconds from ``pack_template``'s ``base_ns`` (an integer) to
    the ns column ``column``, rounded down, modulo 2**32 (sysUpTime ms of a wall-clock time:
    NetFlow v9's FIRST/LAST_SWITCHED): ``floor((ns - base_ns) / 10**6) mod 2**32``, exact
    for every int64 ``ns`` and ``base_ns`` (their difference is not wrapped to int64); 0 for
    a time before ``base_ns`` (a 0 start of a crafted capture, an end before the start): a
    record's uptime is then never after its header's sysUpTime (RFC 3954 section 5.2).

    The column is int64 (written in C), or another integer type whose values are taken as
    int64 (NumPy; a uint64 above 2**63 - 1 wraps as its bytes read as int64 would).
    """

    column: str

    def values(self, flows: np.ndarray, base_ns: int) -> np.ndarray:
        """The field's values for every row of ``flows`` (NumPy: the C op's reference).

        :raise TypeError: the column does not hold integers.
        """
        column = flows[self.column]
        if column.dtype.kind not in "iu":
            raise TypeError(f"UptimeMs: column {self.column!r} holds {column.dtype},"
                            " not integer ns")
        ns = column.astype(np.int64)
        base_ms, base_rest = divmod(int(base_ns), 1_000_000)  # base_ns may leave int64
        # floored ms of each, less one where ns's sub-ms rest is below base's: no int64
        # difference that could wrap (the C op's arithmetic)
        ms = ns // 1_000_000 - base_ms - (ns % 1_000_000 < base_rest)
        return np.maximum(ms, 0) & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class IcmpTypeCode:
    """A 2-byte field of ICMP type/code: the uint16 column ``port`` (``type << 8 | code``
    for ICMP) where the uint8 column ``protocol`` is ICMP (1) or ICMPv6 (58), else 0
    (NetFlow v9's ICMP_TYPE)."""

    port: str = "dst_port"
    protocol: str = "protocol"

    def values(self, flows: np.ndarray, base_ns: int) -> np.ndarray:
        """The field's values for every row of ``flows`` (NumPy: the C op's reference)."""
        protocol = flows[self.protocol]
        return np.where((protocol == 1) | (protocol == 58), flows[self.port], 0)


@dataclass(frozen=True, slots=True)
class EpochMs:
    """An 8-byte field of the whole milliseconds of the int64 ns column ``column``,
    ``floor(ns / 10**6)`` (IPFIX's dateTimeMilliseconds: flowStart/EndMilliseconds; the
    encoder keeps times before 1970 out)."""

    column: str

    def values(self, flows: np.ndarray, base_ns: int) -> np.ndarray:
        """The field's values for every row of ``flows`` (NumPy: the C op's reference)."""
        return flows[self.column] // 1_000_000


@dataclass(frozen=True, slots=True)
class Constant:
    """A 1-, 2- or 4-byte field of the same unsigned ``value`` in every record (IPFIX's
    selectorId while flow sampling is on)."""

    value: int

    def values(self, flows: np.ndarray, base_ns: int) -> np.ndarray:
        """The field's values for every row of ``flows``."""
        return np.full(len(flows), self.value, np.uint64)


#: a field :func:`pack_template` computes from its row (``derived``)
Derived = UptimeMs | IcmpTypeCode | EpochMs | Constant


def pack_template(flows: np.ndarray, fields: Sequence[tuple[int, int]],
                  extra: Sequence[FlowField] = (),
                  special: Mapping[int, Callable[[int], Any]] | None = None,
                  rows: np.ndarray | None = None, *,
                  derived: Mapping[int, Derived] | None = None,
                  base_ns: int = 0) -> PackedRecords:
    """The data records of one template for every row of ``flows`` (or the ``rows`` of it,
    in that order: :func:`group_rows`' rows of one template, no copy of them).

    :param fields: the template's ``(IE id, length)`` pairs before ``extra``. Each is written
        from the column :data:`agent.ie.FLOW_FIELDS` names (addresses: their first
        ``length`` bytes; integers: reduced to ``length`` bytes) unless ``special`` has it;
        IE 0 (:data:`PADDING`) is ``length`` zero bytes.
    :param extra: the schema fields at the end of the template.
    :param special: IE id -> ``f(length)`` returning its values (a column, or one value for
        every row; with ``rows``, for those rows): the format's own conversions (times,
        ICMP type/code, constants).
    :param rows: row numbers of ``flows`` to write (``None``: all, in order): integers
        (not bools) from 0 to ``len(flows) - 1``.
    :param derived: IE id -> a field computed from its row (:class:`UptimeMs`,
        :class:`IcmpTypeCode`, :class:`EpochMs`, :class:`Constant`), written in the same
        pass as the plain fields (C), or by NumPy where they take the cast; the bytes are
        the same either way. IEs that are not in ``fields`` (or that ``special`` has) are
        ignored, so one mapping serves every template of a format.
    :param base_ns: the base of the :class:`UptimeMs` fields (any integer: a whole-ms origin
        rounded down from a time near int64's minimum may lie below it).
    :raise ValueError: a row number that is not one of ``flows``' rows, or not an integer.
    """
    fields = tuple((ie, length) for ie, length in fields)  # a plugin's [ie, length] lists too
    base = divmod(int(base_ns), 1_000_000)  # C's (ms, rest): a base below int64's range too
    dtype = _template_dtype(fields, tuple(extra))
    special = special or {}
    present = {ie for ie, _ in fields}  # derived IEs the template lacks: ignored, as special's
    computed = tuple((ie, d) for ie, d in (derived or {}).items()
                     if ie in present and ie not in special)
    plain = tuple((ie, length) for ie, length in fields
                  if ie not in special and ie not in dict(computed))
    ops = (_pack_ops(flows.dtype, plain, dtype, computed) if flows.flags.c_contiguous
           else None)
    if ops is not None and not extra and len(plain) + len(computed) == len(fields):
        # every field in C, straight into the bytes of the records (no array, no copy)
        if rows is not None and not (isinstance(rows, np.ndarray) and rows.dtype == np.int64
                                     and rows.ndim == 1 and rows.flags.c_contiguous):
            rows = _checked_rows(rows, len(flows))  # C checks int64 rows' range itself
        return PackedRecords(_wirepack.pack_rows(flows, flows.itemsize, ops, None,
                                                 dtype.itemsize, rows, *base),
                             dtype.itemsize)
    if rows is not None:
        rows = _checked_rows(rows, len(flows))
        if ops is None or extra:  # NumPy writes from the rows' copy
            flows, rows = flows.take(rows), None
    padded = any(ie == PADDING for ie, _ in plain)
    out = (np.zeros if padded else np.empty)(len(flows) if rows is None else len(rows), dtype)
    if padded:
        plain = tuple((ie, length) for ie, length in plain if ie != PADDING)
    if (plain or (computed and ops is not None)) and len(out):
        # every plain (and computed) field in one pass: C, else one structured cast
        if ops is not None:
            _wirepack.pack_rows(flows, flows.itemsize, ops, out, out.itemsize, rows, *base)
        else:
            out[[f"ie{ie}" for ie, _ in plain]] = flows.view(_source_dtype(flows.dtype, plain))
    if ops is None and len(out):  # the C pass wrote them with the plain fields
        for ie, field in computed:
            out[f"ie{ie}"] = field.values(flows, base_ns)
    for ie, length in fields:
        if ie in special:
            out[f"ie{ie}"] = special[ie](length)
    fill_fields(out, flows, extra)
    return PackedRecords.from_array(out)


def _checked_rows(rows: np.ndarray, n: int) -> np.ndarray:
    """``rows`` as C-contiguous int64 row numbers of ``n`` rows, whichever path writes them.

    :raise ValueError: not integers (bools are not row numbers), or one outside ``0..n-1``.
    """
    rows = np.asarray(rows)
    if rows.dtype.kind not in "iu" or rows.ndim != 1:
        raise ValueError(f"rows: need a 1-D array of integer row numbers, not {rows.dtype}"
                         f" of {rows.ndim} dimensions")
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        bad = rows[(rows < 0) | (rows >= n)][0]
        raise ValueError(f"rows: row {bad} is not one of the {n} records")
    return np.ascontiguousarray(rows, np.int64)


#: templates (and their packers, their source views) kept built: a run has a few dozen
_CACHED = 256


@lru_cache(maxsize=_CACHED)
def _template_dtype(fields: tuple[tuple[int, int], ...],
                    extra: tuple[FlowField, ...]) -> np.dtype:
    """:func:`template_dtype`, built once per template (it cost ~11 µs per call)."""
    return template_dtype(fields, extra)


#: ``_wirepack.pack_rows`` op kinds: copy, copy reversed (byte swap), write zeros, ms since
#: a base (len 4), ICMP type/code (len 2; the protocol byte's offset in the kind's bits 8-31),
#: ms since the epoch (len 8), a constant (len 1, 2 or 4: the value in ``src``)
_COPY, _SWAP, _ZERO, _MS_SINCE, _ICMP, _EPOCH_MS, _CONST = 0, 1, 2, 3, 4, 5, 6


@lru_cache(maxsize=_CACHED)
def _pack_ops(record: np.dtype, fields: tuple[tuple[int, int], ...],
              out: np.dtype, derived: tuple[tuple[int, Derived], ...] = ()) -> bytes | None:
    """The field copies (uint32 src, dst, len, kind) of ``_wirepack.pack_rows`` that write
    the template fields ``fields`` of ``out`` from a row of ``record``: an address its
    column's first ``length`` bytes, an integer its native column's low ``length`` bytes in
    network order (the structured cast's value modulo 2**(8 * length)); an unsigned column
    narrower than its field its bytes in network order after leading zeros (the cast's
    zero extension); then the ``derived`` fields' ops (:func:`_derived_ops`). ``None``
    where a field is not that (a signed column narrower than its field, whose cast extends
    the sign; a derived field's column of another type; a big-endian host): the cast."""
    ops = _field_copies(record, fields, out)
    more = _derived_ops(record, derived, out)
    return None if ops is None or more is None else ops + more


def _derived_ops(record: np.dtype, derived: tuple[tuple[int, Derived], ...],
                 out: np.dtype) -> bytes | None:
    """The ``pack_rows`` ops of computed fields: :class:`UptimeMs` from a native int64
    column into a 4-byte field, :class:`EpochMs` into an 8-byte one, :class:`IcmpTypeCode`
    from a native uint16 port and a uint8 protocol into a 2-byte field, :class:`Constant`
    into an unsigned 1-, 2- or 4-byte field it fits; ``None`` for anything else."""
    columns: Mapping[str, Any] = record.fields or {}
    packed: Mapping[str, Any] = out.fields or {}
    ops: list[tuple[int, int, int, int]] = []
    for ie, field in derived:
        target = packed.get(f"ie{ie}")
        if target is None or not np.little_endian:
            return None
        if isinstance(field, UptimeMs):
            column = columns.get(field.column)
            if column is None or column[0] != np.dtype("<i8") or target[0] != np.dtype(">u4"):
                return None
            ops.append((column[1], target[1], 4, _MS_SINCE))
        elif isinstance(field, EpochMs):
            column = columns.get(field.column)
            if column is None or column[0] != np.dtype("<i8") or target[0] != np.dtype(">u8"):
                return None
            ops.append((column[1], target[1], 8, _EPOCH_MS))
        elif isinstance(field, Constant):
            width = target[0].itemsize
            if (target[0].kind != "u" or width not in (1, 2, 4)
                    or not 0 <= field.value < 1 << 8 * width):
                return None
            ops.append((field.value, target[1], width, _CONST))
        else:
            port, proto = columns.get(field.port), columns.get(field.protocol)
            if (port is None or proto is None or port[0] != np.dtype("<u2")
                    or proto[0] != np.dtype("u1") or target[0] != np.dtype(">u2")):
                return None
            ops.append((port[1], target[1], 2, _ICMP | proto[1] << 8))
    return np.array(ops, np.uint32).tobytes() if ops else b""


def _field_copies(record: np.dtype, fields: tuple[tuple[int, int], ...],
                  out: np.dtype) -> bytes | None:
    """:func:`_pack_ops`, built."""
    ops: list[tuple[int, int, int, int]] = []
    columns: Mapping[str, Any] = record.fields or {}
    packed: Mapping[str, Any] = out.fields or {}
    pads = 0
    for ie, length in fields:
        if ie == PADDING:
            ops.append((0, packed[f"pad{pads}"][1], length, _ZERO))
            pads += 1
            continue
        column, offset = columns[_COLUMN_OF_IE[ie]][:2]
        at = packed[f"ie{ie}"][1]
        if _is_bytes(ie, length):
            if column.itemsize < length:
                return None
            ops.append((offset, at, length, _COPY))
            continue
        if column.kind not in "iu" or not column.isnative or not np.little_endian:
            return None
        width = min(column.itemsize, length)
        if width < length:  # (6, 2) from a u1 column: zeros, then the value
            if column.kind != "u":
                return None
            ops.append((0, at, length - width, _ZERO))
        ops.append((offset, at + length - width, width, _SWAP if width > 1 else _COPY))
    return np.array(ops, np.uint32).tobytes()


@lru_cache(maxsize=_CACHED)
def _source_dtype(record: np.dtype, fields: tuple[tuple[int, int], ...]) -> np.dtype:
    """A view of a record row holding, in template order, the column each of ``fields``
    is written from: addresses as their first ``length`` bytes, integers as they are (the
    cast into the template reduces them); columns may repeat (overlapping fields)."""
    formats: list[Any] = []
    offsets = []
    columns = record.fields
    assert columns is not None, "a record array"
    for ie, length in fields:
        column, offset = columns[_COLUMN_OF_IE[ie]][:2]
        formats.append(("u1", (length,)) if _is_bytes(ie, length) else column)
        offsets.append(offset)
    return np.dtype({"names": [f"ie{ie}" for ie, _ in fields], "formats": formats,
                     "offsets": offsets, "itemsize": record.itemsize})


class PackedRecords(Sequence[bytes]):
    """Fixed-size data records held as one block of bytes.

    A sequence of records (``len``, ``records[i]`` is one record's bytes) whose slices are
    again blocks (no copy per record); :func:`join_records` gives a slice's bytes for a set or
    FlowSet without a ``b"".join`` over records.
    """

    __slots__ = ("data", "size", "n")

    def __init__(self, data: bytes, size: int):
        self.data, self.size = data, size
        self.n = len(data) // size if size else 0

    @classmethod
    def from_array(cls, rows: np.ndarray) -> PackedRecords:
        """The rows of a packed structured array."""
        return cls(rows.tobytes(), rows.dtype.itemsize)

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> PackedRecords: ...

    def __getitem__(self, i: int | slice) -> bytes | PackedRecords:
        s = self.size
        if isinstance(i, slice):
            start, stop, step = i.indices(self.n)
            if step != 1:
                raise ValueError("PackedRecords slices have step 1")
            return PackedRecords(self.data[start * s:max(stop, start) * s], s)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.data[i * s:(i + 1) * s]

    def __iter__(self) -> Iterator[bytes]:
        s = self.size
        return (self.data[k:k + s] for k in range(0, len(self.data), s))

    def __repr__(self) -> str:
        return f"PackedRecords({len(self)} x {self.size} bytes)"


def frame_packets(block: bytes | memoryview, start: int, body: int, count: int, head: bytes,
                  seq_at: int, seq: int, middle: bytes, tail: bytes,
                  seq_step: int = 1) -> list[bytes]:
    """``count`` export packets of ``body`` bytes of records each, cut from ``block`` from
    byte ``start`` on, one bytes object per packet, built in C (``agent/_wirepack.c``).

    Packet ``j`` is ``head`` with its 4-byte big-endian sequence number at ``seq_at`` set to
    ``(seq + j * seq_step) mod 2**32``, then ``middle`` (a set header), the records, ``tail``
    (padding): what a ``b"".join`` of those parts per packet gives.
    """
    return _wirepack.frame(block, start, body, count, head, seq_at, seq, seq_step, middle,
                           tail)


def join_records(records: Sequence[bytes]) -> bytes:
    """The records' bytes, back to back (a :class:`PackedRecords` block as it is)."""
    if isinstance(records, PackedRecords):
        return records.data
    return b"".join(records)
