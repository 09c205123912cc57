"""Helpers for the privileged eBPF ingest tests: run the component, collect what it emitted.

:class:`Observed` is the eBPF ingest's view in the shape of
:class:`tests.support.truth.GroundTruth` tables (``FlowId -> (packets, bytes)``), so tests
compare it with traffic ground truth exactly.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field

from netflow_agent.fragments import DEFAULT_POLICY, FragmentPolicy
from netflow_agent.model import FlowBatch
from netflow_agent.plugins.ingest_ebpf.component import EbpfIngest
from netflow_agent.plugins.ingest_ebpf.config import Config
from netflow_agent.runtime import RunContext
from tests.support.truth import FlowId


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
        for d in batch:  # FlowRecord views of the delta rows
            fid = FlowId.make(d.protocol, str(ipaddress.ip_address(d.src_addr)),
                              str(ipaddress.ip_address(d.dst_addr)), d.src_port, d.dst_port)
            acc = self.flows.setdefault(fid, [0, 0, 0])
            acc[0] += d.packets
            acc[1] += d.octets
            acc[2] |= d.tcp_flags
            self.directions.setdefault(fid, set()).add(d.direction)
            span = self.times.setdefault(fid, [d.start_ns, d.end_ns])
            span[0], span[1] = min(span[0], d.start_ns), max(span[1], d.end_ns)

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
