"""Built-in stages, registered like any plugin: the flow cache and aggregation rules."""

from __future__ import annotations

from netflow_agent import hookimpl
from netflow_agent.registry import ComponentRegistry

CACHE_SAMPLE = """\
[cache]
## Export a flow after it has been idle this many seconds.
inactive_timeout = 15
## Export a long-lived flow after this many seconds.
active_timeout = 1800
## Most flows kept at once; 0 = unlimited. Packets of new flows beyond it are counted as dropped.
maxflows = 2000000
## Flows to allocate room for at start; 0 = grow automatically.
# hashsize = 0
## Non-first IP fragments (pcap, NFLOG and eBPF ingests): "track" gives them the ports of
## their first fragment (one flow per 5-tuple); "ports0" accounts them as a flow with ports 0,
## as ipt_NETFLOW does. The eBPF program holds no fragment: one that comes before its first
## keeps ports 0 (frag_unmatched).
# fragments = "track"
## Seconds a first fragment's ports are kept, and an early fragment waits for its first one.
# fragment_timeout = 30
## First fragments remembered, and fragments waiting for theirs, per ingest thread (eBPF:
## fragment_table sizes its kernel map, fragment_held does not apply).
# fragment_table = 4096
# fragment_held = 256
## Flow sampling, ipt_NETFLOW's sampler=: "deterministic:N" exports every N-th flow,
## "random:N" each flow with probability 1/N, "hash:N" keeps the flows a hash of their key
## selects (the same flows on every agent; other packets are discarded on entry and counted
## as sampler_discarded_packets). N 2..16383, announced to collectors. Not together with an
## ingest's packet sampling (ebpf sampling = N).
# sampler = "hash:100"
## ipt_NETFLOW's aggregation=, applied to every packet before the flow lookup (so maxflows
## and the statistics count aggregated flows): PREFIX/LEN=NEWLEN cuts matching addresses to
## NEWLEN bits (exported as the flow's mask), LOW-HIGH=PORT replaces ports in the range.
## First match of each kind wins, source and destination alike.
aggregation = ["192.0.0.0/8=16", "10.0.0.0/8=16", "80-89=80", "3128=80"]
"""

AGGREGATE_SAMPLE = """\
[aggregate]
## ipt_NETFLOW aggregation rules: PREFIX/LEN=NEWLEN and LOW-HIGH=PORT, first match wins.
## The same as [cache] aggregation (the cache applies them per packet); set one of the two.
rules = ["192.0.0.0/8=16", "10.0.0.0/8=16", "80-89=80", "3128=80"]
"""


@hookimpl
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register the default cache and aggregation components."""
    from netflow_agent.stages.aggregate import AggregateConfig, Aggregator
    from netflow_agent.stages.cache import CacheConfig, FlowCache

    registry.add("cache", "memory", FlowCache, CacheConfig, sample=CACHE_SAMPLE,
                 doc="In-memory flow table with ipt_NETFLOW timeouts and maxflows")
    registry.add("aggregate", "rules", Aggregator, AggregateConfig, sample=AGGREGATE_SAMPLE,
                 doc="ipt_NETFLOW netmask and port aggregation rules (run in the cache, as "
                 "[cache] aggregation)")
