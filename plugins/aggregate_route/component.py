"""``[[aggregate.route]]``: fill next hop, prefix lengths and egress interface from the FIB.

Runs in the ``agent_aggregate_flows`` chain (after the cache and after the ``[aggregate]``
rules, whose masks it keeps unless ``override``). Per call it collects the distinct source and
destination addresses that still need an answer, serves what it can from the cache, and asks
the kernel once per remaining address (:mod:`.routes`). What routers report (RFC 3954
``IPV4_NEXT_HOP``/``SRC_MASK``/``DST_MASK``, IPFIX IEs 15/62, 9/29, 13/30):

* destination mask, next hop and egress interface come from the FIB entry matching the
  destination; a directly connected destination has no gateway, so its next hop stays
  unknown (exported as 0.0.0.0 / ::);
* source mask comes from the FIB entry matching the source address;
* an address without a route leaves the fields unknown and is counted as unroutable.

Records are changed in place; unknown answers never clear a value a record already has.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from netflow_agent import hookimpl
from netflow_agent.model import FlowRecord
from netflow_agent.registry import Component
from netflow_agent.runtime import RunContext

from .config import Config
from .routes import KernelRoutes, Lookup, Route, RouteCache

_DST_FIELDS = ("next_hop", "dst_mask", "out_if")


class RouteAggregator(Component):
    """``[[aggregate.route]]``.

    :param config: the table.
    :param name: instance name, e.g. ``aggregate.route[0]``.
    :param lookup: route source to use instead of the kernel (tests); ``None`` opens
        :class:`~.routes.KernelRoutes` in ``config.netns`` at start.
    :param clock: monotonic seconds for the cache TTL.
    """

    stage = "aggregate"
    type_name = "route"

    def __init__(self, config: Config, name: str, lookup: Lookup | None = None,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(config, name)
        self.fill = frozenset(config.fields)
        self.dst_fields = tuple(f for f in _DST_FIELDS if f in self.fill)
        self.override = config.override
        self.cache = RouteCache(config.cache_ttl_s, config.max_cache_entries)
        self.clock = clock
        self._injected = lookup
        self._kernel: KernelRoutes | None = None
        self.counters = dict.fromkeys(
            ("records", "enriched", "lookups", "lookups_deferred", "cache_hits", "unroutable",
             "unroutable_records", "errors"), 0)

    # --- lifecycle -------------------------------------------------------------------------

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        """Open the rtnetlink socket (in ``netns``); a missing namespace stops start-up."""
        self._source()

    @hookimpl
    def agent_stop(self) -> None:
        """Close the rtnetlink socket."""
        self._close()

    def _source(self) -> Lookup:
        if self._injected is not None:
            return self._injected
        if self._kernel is None:
            self._kernel = KernelRoutes(self.config.netns)
            self.log.info("%s: route lookups in %s", self.name,
                          f"netns {self.config.netns}" if self.config.netns else "own netns")
        return self._kernel.lookup

    def _close(self) -> None:
        if self._kernel is not None:
            self._kernel.close()
            self._kernel = None

    # --- the stage -------------------------------------------------------------------------

    @hookimpl
    def agent_aggregate_flows(self, records: list[FlowRecord]) -> None:
        """Fill the configured fields of ``records`` in place (``None``: pass them on)."""
        if not records:
            return
        todo = [(rec, self._needs_dst(rec), self._needs_src(rec)) for rec in records]
        routes = self.resolve({r.dst_addr for r, dst, _ in todo if dst}
                              | {r.src_addr for r, _, src in todo if src})
        enriched = 0
        for rec, dst, src in todo:
            found = False
            if dst and rec.dst_addr in routes:
                found = self._apply_dst(rec, routes[rec.dst_addr])
            if src and (route := routes.get(rec.src_addr)) is not None:
                rec.src_mask = route.prefix_len
                found = True
            enriched += found
        self.counters["records"] += len(records)
        self.counters["enriched"] += enriched

    def _needs_dst(self, rec: FlowRecord) -> bool:
        """Whether a destination lookup could fill a configured field of ``rec``."""
        fields = self.dst_fields
        return bool(fields) and (self.override or any(not getattr(rec, f) for f in fields))

    def _needs_src(self, rec: FlowRecord) -> bool:
        return "src_mask" in self.fill and (self.override or not rec.src_mask)

    def _apply_dst(self, rec: FlowRecord, route: Route | None) -> bool:
        """Copy the destination's route into ``rec``; ``False`` when it has none."""
        if route is None:
            self.counters["unroutable_records"] += 1
            return False
        fill, override = self.fill, self.override
        if "dst_mask" in fill and (override or not rec.dst_mask):
            rec.dst_mask = route.prefix_len
        if "next_hop" in fill and route.gateway and (override or not rec.next_hop):
            rec.next_hop = route.gateway
        if "out_if" in fill and route.oif and (override or not rec.out_if):
            rec.out_if = route.oif
        return True

    def resolve(self, addrs: Iterable[bytes]) -> dict[bytes, Route | None]:
        """One answer per distinct address: from the cache, else one kernel lookup each.

        At most ``max_lookups_per_round`` kernel lookups: the pipeline thread must not stall
        on a burst of new addresses. Addresses beyond it are left out (and counted).

        :param addrs: packed addresses (deduplicated by the caller or not).
        :return: address -> :class:`Route`, or ``None`` when unroutable or the lookup failed;
            deferred addresses are missing.
        """
        now = self.clock()
        budget = self.config.max_lookups_per_round or -1
        out: dict[bytes, Route | None] = {}
        for addr in addrs:
            if addr in out:
                continue
            hit, route = self.cache.get(addr, now)
            if hit:
                self.counters["cache_hits"] += 1
            elif budget == 0:
                self.counters["lookups_deferred"] += 1
                continue
            else:
                budget -= 1
                route = self._lookup(addr, now)
            out[addr] = route
        return out

    def _lookup(self, addr: bytes, now: float) -> Route | None:
        self.counters["lookups"] += 1
        try:
            route = self._source()(addr)
        except Exception as exc:  # netlink or namespace trouble: leave unknown, retry later
            self.counters["errors"] += 1
            self.log.warning("%s: route lookup failed: %s", self.name, exc)
            self._close()
            return None
        if route is None:
            self.counters["unroutable"] += 1
        self.cache.put(addr, route, now)
        return route

    # --- observability ---------------------------------------------------------------------

    @hookimpl
    def agent_collect_stats(self) -> dict[str, Any]:
        """Lookups, cache hits and size, unroutable addresses and records, errors."""
        return {**self.counters, "cache_entries": len(self.cache.entries),
                "cache_evicted": self.cache.evicted}
