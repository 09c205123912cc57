"""Receive buffer -> pipeline batch: the Python decoder or the C extension, one interface.

A reader thread owns one of these per group. Both turn the ``NFULNL_MSG_PACKET`` messages of
the receive buffers into batches for the cache, with the same accounting:

* :class:`PythonBatcher` (``decoder = "python"``): :class:`~.netlink.NflogDecoder` and
  :class:`~agent.packet.PacketParser`, one :data:`~agent.model.Packet` per packet in a
  :class:`~agent.model.PacketBatch` (``agent_cache_packets``).
* :class:`CBatcher` (``decoder = "c"``): ``netflow_agent.plugins.ingest_nflog._nflog``
  (``_nflog.c``) waits for the socket and receives what arrives until the sums are due
  (:meth:`CBatcher.serve`), walks the datagrams, parses the IP headers and sums the packets
  per flow key in C, with the GIL released; ``take()`` hands back at most
  :data:`TAKE_LIMIT` flows at a time as the rows of a columnar
  :class:`~agent.model.FlowBatch`, without a Python object per flow (``agent_cache_flows``);
  the rest stays ``pending``. Same keys, packets, bytes, TCP
  flags (so FIN/RST still end flows), output interface, times and counters, and the same
  fragment tracking (``[cache] fragments``) and tunnel decapsulation (``decapsulate``).

Layer-2 key fields (``[flow]`` mac, vlan, physdev): both decoders read NFULA_HWHEADER,
NFULA_VLAN and NFULA_IFINDEX_PHYS* only when the active schema asks
(:class:`~.netlink.NflogL2`; the C aggregator's ``l2`` mask, :func:`l2_mask`), and give the
message's own packet the same fields.

Fragments that waited for their first fragment too long are released by
:meth:`Batcher.release`, which the reader calls before every take (and with ``None`` at stop).

Cache counters: ``traffic`` and ``drop`` count packets either way. ``agent_cache_flows`` does
not add a batch's ``trunc`` to ``drop`` (``agent_cache_packets`` does), so :class:`CBatcher`
puts truncated packets into ``dropped_packets`` itself; ``search``/``found``/``new`` count
cache lookups, which with the C decoder are one per row: one per flow and batch (or one per
packet while the aggregator appends, under a flood of new flows).
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple, Protocol

import numpy as np

from netflow_agent.api import (
    TUNNELS,
    FlowBatch,
    FlowSchema,
    FragmentPolicy,
    L2KeyPacker,
    Packet,
    PacketBatch,
    flow_schema,
    make_parser,
)

from .netlink import NflogDecoder, NflogL2

DECODERS = ("auto", "c", "python")
_EXTENSION = "netflow_agent.plugins.ingest_nflog._nflog"


class Batcher(Protocol):
    """What a reader needs from a decoder: feed every waiting buffer, then take batches."""

    name: str

    @property
    def pending(self) -> int:
        """Rows fed and not yet taken: flows (one per packet while the C aggregator appends;
        a bounded take leaves the rest for the next one)."""
        ...

    def feed(self, buf: bytearray | bytes, n: int, recv_ns: int) -> int:
        """Decode ``buf[:n]`` (one datagram) into the pending batch; returns its packets."""
        ...

    def take(self, source: str) -> PacketBatch | FlowBatch | None:
        """The pending batch (``None`` when there is nothing to emit), at most
        :data:`TAKE_LIMIT` flows of it with the C decoder (the rest stays ``pending``)."""
        ...

    def serve(self, fd: int, timeout_ms: float, due_ms: float, pause_ms: float, hold: int,
              max_datagrams: int, max_bytes: int, bufsize: int, euid: int = -1
              ) -> ServeResult | None:
        """Wait for the non-blocking socket ``fd``, receive and feed what arrives until the
        sums are due (:meth:`CBatcher.serve`); ``None``: this decoder cannot, the reader
        waits, receives and feeds in Python."""
        ...

    def read_counts(self) -> dict[str, int]:
        """What :meth:`serve` received so far, live while it runs (the reader's ``packets``,
        ``batches``, ``wakeups``, ``enobufs`` and ``datagrams_cut`` beyond its own)."""
        ...

    def release(self, now_ns: int | None) -> None:
        """Add the fragments that waited for their first fragment since before ``now_ns`` -
        timeout (all of them when ``None``: the reader stops) to the pending batch."""
        ...

    def stats(self) -> dict[str, int]:
        """Cumulative decoder counters."""
        ...

    def drop_buffers(self) -> None:
        """Give back the memory kept for the next batches (the reader is idle or stopping)."""
        ...


class ReadResult(NamedTuple):
    """What one ``_nflog.Aggregator.read`` did: one read round without the wait, the round
    :meth:`CBatcher.serve`'s C loop repeats (the reader calls ``serve``; ``read`` is for
    tests and benches)."""

    datagrams: int
    bytes: int
    packets: int
    enobufs: int  # ENOBUFS reads: the kernel dropped batches (sequence gaps count them)
    cut: int  # datagrams longer than the buffer (cannot happen with the reader's size)
    errno: int  # the receive error that ended the read, 0 when none
    full: bool  # stopped at a bound: more may be waiting


class ServeResult(NamedTuple):
    """What one :meth:`CBatcher.serve` did (``_nflog.Aggregator.serve``): the reads of its
    rounds summed, and why it returned."""

    datagrams: int
    bytes: int
    packets: int
    enobufs: int
    cut: int
    errno: int
    full: bool  # the last round stopped at a bound: more may be waiting
    rounds: int  # wakeups that read the socket
    timed_out: bool  # the socket stayed empty until the deadline
    poll_failed: bool  # errno is the wait's (ppoll), not a receive's
    euid_changed: bool  # the effective UID changed (root dropped): returned before reading


#: most flows in one batch taken from the C aggregator: bounds the transient arrays of a
#: burst of new flows (at 100k+ concurrent) while keeping the per-batch work shared
TAKE_LIMIT = 16384


def c_extension() -> Any | None:
    """The ``_nflog`` extension module, or ``None`` when it was not built."""
    try:
        return importlib.import_module(_EXTENSION)
    except ImportError:
        return None


def c_unavailable_reason() -> str | None:
    """Why ``decoder = "c"`` cannot work here, or ``None``."""
    if c_extension() is not None:
        return None
    return (f"the C decoder ({_EXTENSION}) is not built: install a C compiler and re-run "
            "`pip install -e .`, or set decoder = \"python\"")


def resolve(choice: str) -> str:
    """``"c"`` or ``"python"`` for a configured ``decoder`` (``auto``: C when built).

    :raise RuntimeError: ``"c"`` was asked for and the extension is missing.
    """
    if choice == "python":
        return "python"
    reason = c_unavailable_reason()
    if reason is None:
        return "c"
    if choice == "c":
        raise RuntimeError(reason)
    return "python"


def make_batcher(choice: str, fragments: FragmentPolicy | None = None,
                 decapsulate: list[str] | tuple[str, ...] = (), keep_outer: bool = False,
                 hold: int = 0) -> Batcher:
    """A fresh batcher for one group; ``choice`` as in :func:`resolve`; the other arguments
    as :func:`~agent.tunnels.make_parser` (the same accounting with either decoder), and
    ``hold`` as :class:`CBatcher`'s; the layer-2 fields are the active schema's."""
    if resolve(choice) == "c":
        return CBatcher(fragments, decapsulate, keep_outer, hold)
    return PythonBatcher(fragments, decapsulate, keep_outer)


#: ``_nflog.Aggregator``'s ``l2`` bits
L2_MAC, L2_VLAN, L2_PHYS, L2_OVERRIDE = 1, 2, 4, 8
L2_KEYED = L2_MAC | L2_VLAN | L2_PHYS  # the bits that add a block to the key


def l2_mask(schema: FlowSchema) -> int:
    """The C aggregator's ``l2`` mask for ``schema``: which layer-2 fields to key on."""
    names = set(schema.ext_names)
    return ((L2_MAC if "src_mac" in names else 0) | (L2_VLAN if "vlan_id" in names else 0)
            | (L2_PHYS if "in_physdev" in names else 0)
            | (L2_OVERRIDE if schema.options.physdev == "override" else 0))


def nflog_l2(schema: FlowSchema) -> NflogL2:
    """The Python decoder's layer-2 reading for ``schema`` (the same fields as
    :func:`l2_mask`: MPLS and inner tags never reach NFLOG)."""
    return NflogL2(L2KeyPacker(schema), schema.options.physdev == "override")


class PythonBatcher:
    """One packet tuple per packet (:class:`~.netlink.NflogDecoder`)."""

    name = "python"
    pending = 0  # packets are handed on at every take

    def __init__(self, fragments: FragmentPolicy | None = None,
                 decapsulate: list[str] | tuple[str, ...] = (), keep_outer: bool = False
                 ) -> None:
        self.decoder = NflogDecoder(make_parser(fragments, decapsulate, keep_outer),
                                    nflog_l2(flow_schema()))
        self.packets: list[Packet] = []
        self._reported_gaps = 0

    def feed(self, buf: bytearray | bytes, n: int, recv_ns: int) -> int:
        """See :class:`Batcher`."""
        before = len(self.packets)
        self.decoder.decode(buf, n, recv_ns, self.packets)
        return len(self.packets) - before

    def serve(self, fd: int, timeout_ms: float, due_ms: float, pause_ms: float, hold: int,
              max_datagrams: int, max_bytes: int, bufsize: int, euid: int = -1) -> None:
        """See :class:`Batcher`: the reader waits and receives for this decoder."""
        return None

    def read_counts(self) -> dict[str, int]:
        """See :class:`Batcher`: the reader counts what it receives itself."""
        return {}

    def take(self, source: str) -> PacketBatch | None:
        """See :class:`Batcher`."""
        packets, self.packets = self.packets, []
        trunc, frag, trunc_bytes = self.decoder.parser.take_counters()
        gaps = self.decoder.seq_gaps - self._reported_gaps
        self._reported_gaps = self.decoder.seq_gaps
        if not (packets or trunc or frag or gaps):
            return None
        return PacketBatch(source, packets, trunc=trunc, frag=frag, dropped_packets=gaps,
                           dropped_bytes=trunc_bytes)

    def release(self, now_ns: int | None) -> None:
        """See :class:`Batcher`."""
        parser = self.decoder.parser
        if now_ns is None:
            parser.flush()
        else:
            parser.expire(now_ns)
        if parser.extra:
            self.packets.extend(parser.extra)
            parser.extra.clear()

    def stats(self) -> dict[str, int]:
        """See :class:`Batcher`."""
        return {**self.decoder.stats(), **self.decoder.parser.stats()}

    def drop_buffers(self) -> None:
        """See :class:`Batcher`: nothing is kept."""


#: stats only the C decoder has (its reusable take buffers, its table's cycles that appended
#: each packet as a row or summed per flow); the rest match the Python one's
C_ONLY_STATS = ("row_buffers_reused", "row_buffers_new", "append_cycles", "hashed_cycles")


class CBatcher:
    """Rows of flow deltas per burst of datagrams (``_nflog.Aggregator``): one per flow, or
    one per packet while the aggregator appends (a flood of new flows, where summing does not
    pay: see ``hold``).

    With the default schema (no layer-2 key fields) the aggregator writes the FlowBatch's
    record array itself (``Aggregator(native=True)``, :data:`NATIVE_DTYPE`): no column
    copies; while appending it writes each packet's row straight into the buffer the batch
    then is (``take()`` hands it on without a copy). It writes the rows into buffers it
    reuses once no batch holds them (a fresh buffer is a fresh mmap whose pages fault as
    they are written), each with room for a whole :data:`TAKE_LIMIT` take; the reader lets
    go of them when idle and at stop (:meth:`drop_buffers`).

    :param hold: the reader's hold (the ``hold`` it gives :meth:`serve`): a table cycle of at
        least that many packets, fed in more than one round, in which almost no packet found
        its flow held switches the aggregator to append mode for the next cycles; 0: never.
    """

    name = "c"

    def __init__(self, fragments: FragmentPolicy | None = None,
                 decapsulate: list[str] | tuple[str, ...] = (), keep_outer: bool = False,
                 hold: int = 0) -> None:
        ext = c_extension()
        if ext is None:
            raise RuntimeError(c_unavailable_reason())
        schema = flow_schema()
        self.l2 = l2_mask(schema)
        self.native = schema.record_dtype == NATIVE_DTYPE and not self.l2 & L2_KEYED
        self.aggregator = ext.Aggregator(**c_options(fragments, decapsulate, keep_outer),
                                         l2=self.l2, hold=hold, native=self.native)

    @property
    def pending(self) -> int:
        """See :class:`Batcher`."""
        return int(self.aggregator.pending)

    def feed(self, buf: bytearray | bytes, n: int, recv_ns: int) -> int:
        """See :class:`Batcher`."""
        return int(self.aggregator.feed(buf, n, recv_ns))

    def serve(self, fd: int, timeout_ms: float, due_ms: float, pause_ms: float, hold: int,
              max_datagrams: int, max_bytes: int, bufsize: int, euid: int = -1
              ) -> ServeResult:
        """See :class:`Batcher`: the reader's wait-read-pause loop in C with the GIL
        released, until the sums are due (``due_ms`` from now with flows pending, or
        ``hold`` flows pending) or the socket stays empty that long (at most
        ``timeout_ms``): Python runs once per batch of sums, not once per wakeup
        (``_nflog.Aggregator.serve``). A read that emptied the socket makes the next one
        wait ``pause_ms``, also across calls; ``euid`` >= 0: returns before reading once
        the effective UID changed (the caller's thread follows the drop of root first)."""
        return ServeResult(*self.aggregator.serve(fd, timeout_ms, due_ms, pause_ms, hold,
                                                  max_datagrams, max_bytes, bufsize, euid))

    def read_counts(self) -> dict[str, int]:
        """See :class:`Batcher`: the aggregator's counts, updated per datagram in C."""
        agg = self.aggregator
        return {"packets": agg.read_packets, "batches": agg.read_datagrams,
                "wakeups": agg.read_rounds, "enobufs": agg.read_enobufs,
                "datagrams_cut": agg.read_cut}

    def take(self, source: str, limit: int = TAKE_LIMIT) -> FlowBatch | None:
        """See :class:`Batcher`."""
        # rows in the layout the aggregator was made with (native: the FlowBatch's own)
        records, _packets, trunc, frag, trunc_bytes, gaps = self.aggregator.take(limit)
        if not (records or trunc or frag or gaps):
            return None
        flows = (np.frombuffer(records, NATIVE_DTYPE) if self.native
                 else flows_of(records, self.l2))
        return FlowBatch(source, flows, dropped_packets=gaps + trunc,
                         dropped_bytes=trunc_bytes, trunc=trunc, frag=frag)

    def release(self, now_ns: int | None) -> None:
        """See :class:`Batcher`."""
        self.aggregator.release(-1 if now_ns is None else now_ns)

    def drop_buffers(self) -> None:
        """See :class:`Batcher`: the aggregator's reusable row buffers."""
        self.aggregator.drop_buffers()

    def stats(self) -> dict[str, int]:
        """See :class:`Batcher`; the same names as :meth:`.NflogDecoder.stats` and
        :meth:`~agent.packet.PacketParser.stats`."""
        agg = self.aggregator
        out = {"messages": agg.messages, "seq_gaps": agg.seq_gaps,
               "seq_resets": agg.seq_resets, "malformed": agg.malformed,
               "row_buffers_reused": agg.pool_reused, "row_buffers_new": agg.pool_fresh,
               "append_cycles": agg.append_cycles, "hashed_cycles": agg.hashed_cycles}
        if agg.frag_timeout_ns:
            out.update(frag_tracked=agg.frag_tracked, frag_held=agg.frag_held,
                       frag_unmatched=agg.frag_unmatched, frag_waiting=agg.frag_waiting,
                       frag_table=agg.frag_table)
        if agg.decapsulate:
            out.update(decapsulated=agg.decapsulated, decap_failed=agg.decap_failed)
        return out


#: the 44-byte base key the C aggregator packs (agent.model.KEY)
BASE_KEY_DTYPE = FlowSchema().key_dtype
#: the default schema's FlowBatch row, which ``take(native=True)`` writes (_nflog.c
#: flow_native); a schema with other fields takes the generic path (:func:`flows_of`)
NATIVE_DTYPE = FlowSchema().record_dtype
#: one record of ``_nflog.Aggregator.take()``'s buffer (see its docstring)
TAKE_DTYPE = np.dtype([("key", "V44"), ("packets", "u8"), ("octets", "u8"),
                       ("start_ns", "i8"), ("end_ns", "i8"), ("out_if", "u4"),
                       ("tcp_flags", "u1"), ("pad", "V3")])


#: the layer-2 block after each record with an ``l2`` mask (_nflog.c L2_LEN)
L2_DTYPE = np.dtype([("dst_mac", "V6"), ("src_mac", "V6"), ("tci", ">u2"),
                     ("ethernet_type", ">u2"), ("in_physdev", ">u4"), ("out_physdev", ">u4")])
TAKE_L2_DTYPE = np.dtype([("base", TAKE_DTYPE), ("l2", L2_DTYPE)])


def flows_of(records: bytes, l2: int = 0) -> np.ndarray:
    """The C aggregator's records as a FlowBatch record array of the active schema (the
    base key columns decoded from the packed keys; the layer-2 block's fields when ``l2``
    has key bits; other optional fields stay 0)."""
    block = None
    if l2 & L2_KEYED:
        both = np.frombuffer(records, TAKE_L2_DTYPE)
        raw, block = both["base"], both["l2"]
    else:
        raw = np.frombuffer(records, TAKE_DTYPE)
    schema = flow_schema()
    out = schema.empty(len(raw))
    keys = raw["key"].view(BASE_KEY_DTYPE)
    for name in BASE_KEY_DTYPE.names or ():
        out[name] = keys[name]
    for name in ("packets", "octets", "start_ns", "end_ns", "out_if", "tcp_flags"):
        out[name] = raw[name]
    if block is not None:
        _l2_columns(out, block, schema)
    return out


def _l2_columns(out: np.ndarray, block: np.ndarray, schema: FlowSchema) -> None:
    """The schema's layer-2 columns from the C blocks (as :class:`~.netlink.NflogL2`)."""
    names = set(schema.ext_names)
    for name in ("src_mac", "dst_mac", "ethernet_type", "in_physdev", "out_physdev"):
        if name in names:
            out[name] = block[name]
    if "vlan_id" in names:
        out["vlan_id"] = block["tci"] & 0x0FFF
        out["vlan_priority"] = block["tci"] >> 13


def rows_of(records: bytes) -> list[tuple[bytes, int, int, int, int, int, int]]:
    """The C aggregator's records as ``(key, packets, octets, first_ns, last_ns, tcp_flags,
    out_if)`` tuples (tests and tools; the pipeline uses :func:`flows_of`)."""
    raw = np.frombuffer(records, TAKE_DTYPE)
    return list(zip(raw["key"].tolist(), raw["packets"].tolist(), raw["octets"].tolist(),
                    raw["start_ns"].tolist(), raw["end_ns"].tolist(),
                    raw["tcp_flags"].tolist(), raw["out_if"].tolist(), strict=True))


def c_options(fragments: FragmentPolicy | None, decapsulate: list[str] | tuple[str, ...],
              keep_outer: bool) -> dict[str, int]:
    """The ``_nflog.Aggregator`` keywords for these options (tunnels as a bit mask in
    :data:`~agent.tunnels.TUNNELS` order)."""
    out = {"decapsulate": sum(1 << TUNNELS.index(t) for t in set(decapsulate)),
           "keep_outer": int(keep_outer)}
    if fragments is not None and fragments.tracking:
        out.update(frag_timeout_ns=fragments.timeout * 1_000_000_000,
                   frag_table=fragments.table, frag_held=fragments.held)
    return out
