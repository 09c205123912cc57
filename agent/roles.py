"""Typed roles of component instances: what the core expects of each stage.

A component type subclasses the role of its stage. The core checks the role when it builds
an instance and then calls a role's methods directly, never probing for attributes:

==================  ============  =====================================================
role                stage         the core relies on
==================  ============  =====================================================
:class:`Ingest`     ``ingest``    :attr:`~Ingest.finite`; hooks ``agent_start``/``_stop``
:class:`Cache`      ``cache``     :meth:`~Cache.restore`, :meth:`~Cache.dump`,
                                  :meth:`~Cache.reconfigure`, :meth:`~Cache.counters`,
                                  :attr:`~Cache.stats`; hooks ``agent_cache_*``
:class:`Aggregator` ``aggregate`` hook ``agent_aggregate_flows``
:class:`Exporter`   ``export``    hook ``agent_export_flows``; describes itself in
                                  ``agent_collect_stats`` (``protocol``, ...)
:class:`NatExporter` ``export``   also hook ``agent_export_nat_events``
==================  ============  =====================================================

Stage hooks stay pluggy hooks (``docs/hooks.md``): a role only names what an instance of the
stage is, and for the cache the methods outside the hooks that the core calls (saved state,
reload, counters).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from netflow_agent.registry import Component

#: One flow of a saved state: ``(key, packets, octets, first_ns, last_ns, tcp_flags, out_if)``.
FlowRow = tuple[bytes, int, int, int, int, int, int]


@dataclass(slots=True)
class CacheStats:
    """The seed's cache counters (``stat: search found new ... maxflows``, traffic, drop)."""

    search: int = 0  # lookups in the flow table
    found: int = 0  # lookups that found their flow
    new: int = 0  # flows created
    maxflows: int = 0  # packets of new flows dropped because maxflows was reached
    trunc: int = 0  # truncated/malformed packets (also in drop_packets)
    frag: int = 0  # fragments seen
    alloc: int = 0  # allocation failures (kept for the seed's layout; Python raises instead)
    traffic_packets: int = 0  # packets accounted
    traffic_bytes: int = 0
    drop_packets: int = 0  # packets not accounted: trunc, maxflows, ingest losses
    drop_bytes: int = 0
    exported_flows: int = 0
    #: packets/bytes of flows ``sampler = "hash:N"`` did not select (intentional, not drops)
    sampler_discarded_packets: int = 0
    sampler_discarded_bytes: int = 0
    #: expired flows ``deterministic``/``random`` sampling left out (not in exported_flows)
    sampler_unselected_flows: int = 0
    #: scans that left due flows in the table for later scans (the exporters' backlog was full)
    deferred_scans: int = 0
    peak_flows: int = 0
    peak_ns: int = 0

    def as_dict(self) -> dict[str, int]:
        """Counter name -> value."""
        return {name: getattr(self, name) for name in self.__slots__}


class Ingest(Component):
    """Observes packets or flows and hands them to the core (``context.emit``) from its own
    threads; NAT sources emit NAT events (``context.emit_nat_events``)."""

    stage: ClassVar[str] = "ingest"
    #: ``True`` when the source ends by itself (a pcap file); it then calls
    #: ``context.done(name)`` once everything was emitted.
    finite: ClassVar[bool] = False
    #: the optional built-in key fields ([flow]: agent/schema.py ``OPTIONAL_KEY``) this
    #: ingest fills when they are on; ``[flow]`` options asking for others get a dry-run
    #: warning naming the ingest and the fields (they stay 0 in its flows).
    observable_fields: ClassVar[frozenset[str]] = frozenset()
    #: ``False`` for a source of NAT events only (no flows: no flow fields to fill)
    emits_flows: ClassVar[bool] = True


class Cache(Component, ABC):
    """The flow table: the one ``[cache]`` instance.

    Besides its hooks (``agent_cache_packets``, ``agent_cache_flows``,
    ``agent_cache_expire``) the core calls these methods on the pipeline thread.

    :ivar stats: the seed's counters; the core reads ``traffic_packets``/``traffic_bytes``
        for the rates and ``search``/``found`` for the hash metric.
    """

    stage: ClassVar[str] = "cache"
    stats: CacheStats

    @abstractmethod
    def restore(self, rows: list[FlowRow]) -> int:
        """Put saved flows back (``[agent] state_file`` at start); a key already present gets
        the counters added; ``maxflows`` is not applied.

        :return: the number of rows restored.
        """

    @abstractmethod
    def dump(self) -> list[FlowRow]:
        """Take every flow out of the table, for saving across a restart (the table is empty
        afterwards)."""

    @abstractmethod
    def reconfigure(self, config: Any) -> None:
        """Take a changed configuration of the same type at reload, keeping every flow."""

    @abstractmethod
    def counters(self) -> dict[str, Any]:
        """Every counter of the table for ``agent stats`` (the seed's names: ``active_flows``,
        ``maxflows_limit``, ``active_timeout``, ``inactive_timeout``, ``hash_mem_bytes``,
        ``flows_mem_bytes``, ...), flat."""


class Aggregator(Component):
    """Rewrites expired records before export (``agent_aggregate_flows``, a chain)."""

    stage: ClassVar[str] = "aggregate"


class Exporter(Component):
    """Sends flow records somewhere (``agent_export_flows``).

    Its ``agent_collect_stats`` describes it for the report: ``protocol`` (5, 9, 10),
    ``refresh_rate``/``timeout_rate`` (templates), ``templates``/``templates_active``,
    ``natevents`` (bool), and per destination a nested mapping with a ``destination`` key.
    """

    stage: ClassVar[str] = "export"


class NatExporter(Exporter):
    """An exporter that also carries NAT events (``agent_export_nat_events``)."""
