"""Receive buffer -> pipeline batch: the Python decoder or the C extension, one interface.

A reader thread owns one of these per group. Both turn the ``NFULNL_MSG_PACKET`` messages of
a receive buffer into one batch for the cache, with the same accounting:

* :class:`PythonBatcher` (``decoder = "python"``): :class:`~.netlink.NflogDecoder` and
  :class:`~agent.packet.PacketParser`, one :data:`~agent.model.Packet` per packet in a
  :class:`~agent.model.PacketBatch` (``agent_cache_packets``).
* :class:`CBatcher` (``decoder = "c"``): ``netflow_agent.plugins.ingest_nflog._nflog`` (``_nflog.c``) walks
  the buffer, parses the IP headers and sums the packets per flow key in C, with the GIL
  released; the buffer becomes one :class:`~agent.model.FlowDelta` per flow in a
  :class:`~agent.model.FlowBatch` (``agent_cache_flows``). Same keys, packets, bytes, TCP
  flags (so FIN/RST still end flows), output interface, times and counters.

Cache counters: ``traffic`` and ``drop`` count packets either way. ``agent_cache_flows`` does
not add a batch's ``trunc`` to ``drop`` (``agent_cache_packets`` does), so :class:`CBatcher`
puts truncated packets into ``dropped_packets`` itself; ``search``/``found``/``new`` count
cache lookups, which are one per flow and buffer with the C decoder.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from netflow_agent.model import FlowBatch, FlowDelta, Packet, PacketBatch

from .netlink import NflogDecoder

DECODERS = ("auto", "c", "python")
_EXTENSION = "netflow_agent.plugins.ingest_nflog._nflog"


class Batcher(Protocol):
    """What a reader needs from a decoder: feed every waiting buffer, then take one batch."""

    name: str

    def feed(self, buf: bytearray | bytes, n: int, recv_ns: int) -> int:
        """Decode ``buf[:n]`` (one datagram) into the pending batch; returns its packets."""
        ...

    def take(self, source: str) -> PacketBatch | FlowBatch | None:
        """The pending batch (``None`` when there is nothing to emit), then start over."""
        ...

    def stats(self) -> dict[str, int]:
        """Cumulative decoder counters."""
        ...


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


def make_batcher(choice: str) -> Batcher:
    """A fresh batcher for one group; ``choice`` as in :func:`resolve`."""
    return CBatcher() if resolve(choice) == "c" else PythonBatcher()


class PythonBatcher:
    """One packet tuple per packet (:class:`~.netlink.NflogDecoder`)."""

    name = "python"

    def __init__(self) -> None:
        self.decoder = NflogDecoder()
        self.packets: list[Packet] = []
        self._reported_gaps = 0

    def feed(self, buf: bytearray | bytes, n: int, recv_ns: int) -> int:
        """See :class:`Batcher`."""
        before = len(self.packets)
        self.decoder.decode(buf, n, recv_ns, self.packets)
        return len(self.packets) - before

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

    def stats(self) -> dict[str, int]:
        """See :class:`Batcher`."""
        return self.decoder.stats()


class CBatcher:
    """One flow delta per flow and burst of datagrams (``_nflog.Aggregator``)."""

    name = "c"

    def __init__(self) -> None:
        ext = c_extension()
        if ext is None:
            raise RuntimeError(c_unavailable_reason())
        self.aggregator = ext.Aggregator()

    def feed(self, buf: bytearray | bytes, n: int, recv_ns: int) -> int:
        """See :class:`Batcher`."""
        return int(self.aggregator.feed(buf, n, recv_ns))

    def take(self, source: str) -> FlowBatch | None:
        """See :class:`Batcher`."""
        rows, _packets, trunc, frag, trunc_bytes, gaps = self.aggregator.take()
        if not (rows or trunc or frag or gaps):
            return None
        return FlowBatch(source, [FlowDelta(*row) for row in rows],
                         dropped_packets=gaps + trunc, dropped_bytes=trunc_bytes,
                         trunc=trunc, frag=frag)

    def stats(self) -> dict[str, int]:
        """See :class:`Batcher`; the same names as :meth:`.NflogDecoder.stats`."""
        agg = self.aggregator
        return {"messages": agg.messages, "seq_gaps": agg.seq_gaps,
                "seq_resets": agg.seq_resets, "malformed": agg.malformed}
