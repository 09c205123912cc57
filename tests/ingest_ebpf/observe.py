"""Helpers for the privileged eBPF ingest tests: run the component, collect what it emitted.

:class:`Observed` is the eBPF ingest's view in the shape of
:class:`tests.support.truth.GroundTruth` tables (``FlowId -> (packets, bytes)``), so tests
compare it with traffic ground truth exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from netflow_agent.fragments import DEFAULT_POLICY, FragmentPolicy
from netflow_agent.model import FlowBatch
from netflow_agent.plugins.ingest_ebpf.component import EbpfIngest
from netflow_agent.plugins.ingest_ebpf.config import Config
from netflow_agent.runtime import RunContext
from tests.support.truth import FlowId, ip_text

#: the columns of a delta row :meth:`Observed.add` reads, in its unpacking order
_COLUMNS = ("ip_version", "protocol", "src_addr", "dst_addr", "src_port", "dst_port",
            "packets", "octets", "tcp_flags", "direction", "start_ns", "end_ns")


@dataclass
class Observed:
    """Everything one eBPF ingest emitted: per-flow totals and the batch counters."""

    flows: dict[FlowId, list[int]] = field(default_factory=dict)  # packets, bytes, flags
    directions: dict[FlowId, set[int]] = field(default_factory=dict)
    times: dict[FlowId, list[int]] = field(default_factory=dict)  # first start, last end (ns)
    dropped_packets: int = 0
    dropped_bytes: int = 0
    trunc: int = 0
    frag: int = 0
    stats: dict = field(default_factory=dict)
    component: EbpfIngest | None = None
    batches: list[FlowBatch] = field(default_factory=list)  # as emitted (every column)

    def add(self, batch: FlowBatch) -> None:
        self.batches.append(batch)
        self.dropped_packets += batch.dropped_packets
        self.dropped_bytes += batch.dropped_bytes
        self.trunc += batch.trunc
        self.frag += batch.frag
        # the delta rows' columns, not a FlowRecord per row: the scale tests add 300k rows
        columns = [batch.flows[name].tolist() for name in _COLUMNS]
        for version, proto, src, dst, sport, dport, pkts, octets, flags, direction, start, \
                end in zip(*columns, strict=True):
            if version == 4:  # IPv4 addresses are zero-padded to 16 bytes in the columns
                src, dst = src[:4], dst[:4]
            fid = FlowId(version, proto, ip_text(src), ip_text(dst), sport, dport)
            acc = self.flows.setdefault(fid, [0, 0, 0])
            acc[0] += pkts
            acc[1] += octets
            acc[2] |= flags
            self.directions.setdefault(fid, set()).add(direction)
            span = self.times.setdefault(fid, [start, end])
            span[0], span[1] = min(span[0], start), max(span[1], end)

    def table(self) -> dict[FlowId, tuple[int, int]]:
        """``FlowId -> (packets, bytes)``, like ``GroundTruth.table()``."""
        return {fid: (p, b) for fid, (p, b, _) in self.flows.items()}

    @property
    def packets(self) -> int:
        return sum(p for p, _, _ in self.flows.values())

    @property
    def bytes(self) -> int:
        return sum(b for _, b, _ in self.flows.values())


@contextlib.contextmanager
def ebpf_ingest(fragments: FragmentPolicy = DEFAULT_POLICY,
                **config: object) -> Iterator[Observed]:
    """Start an ``ingest.ebpf`` instance; on exit stop it and fill the yielded :class:`Observed`.

    :param fragments: the ``[cache] fragment*`` options the agent would hand it.
    :param config: ``Config`` keys (``interfaces``, ``netns``, ``mode``...).
    """
    context = RunContext(fragments=fragments)
    comp = EbpfIngest(Config(**config), "ingest.ebpf[0]")  # type: ignore[arg-type]
    comp.agent_start(context)
    observed = Observed(component=comp)
    try:
        yield observed
    finally:
        comp.agent_stop()
        observed.stats = comp.agent_collect_stats()
        while not context.inbox.empty():
            kind, batch = context.inbox.get()
            if isinstance(batch, FlowBatch):
                observed.add(batch)
