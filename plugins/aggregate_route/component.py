"""``[[aggregate.route]]``: fill next hop, prefix lengths and egress interface from the FIB.

Runs in the ``agent_aggregate_flows`` chain (after the cache and after the ``[aggregate]``
rules, whose masks it keeps unless ``override``). Per call it finds the distinct source and
destination addresses that still need an answer in the batch's columns (``np.unique``), serves
what it can from the cache, asks the kernel once per remaining address (:mod:`.routes`), and
writes the answers back with masks: no Python work per flow. What routers report (RFC 3954
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

import numpy as np

from netflow_agent.api import Aggregator, FlowBatch, FlowRecord, RunContext, hookimpl

from .config import Config
from .routes import KernelRoutes, Lookup, Route, RouteCache

_DST_FIELDS = ("next_hop", "dst_mask", "out_if")


class RouteAggregator(Aggregator):
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
    def agent_aggregate_flows(self, records: FlowBatch | list[FlowRecord]) -> None:
        """Fill the configured fields of ``records`` in place (``None``: pass them on).

        Works on the batch's columns: one lookup per distinct address, then masks and
        fancy indexing; a list of records (direct callers, tests) is updated the same way.
        """
        if not len(records):
            return
        batch = records if isinstance(records, FlowBatch) else FlowBatch.from_records(records)
        flows = batch.flows
        dst_rows, src_rows = self._dst_rows(flows), self._src_rows(flows)
        dst_q = self._distinct(flows, "dst_addr", dst_rows)
        src_q = self._distinct(flows, "src_addr", src_rows)
        answers = self.resolve(dst_q[0] + src_q[0])  # one lookup per distinct address
        dst = self._per_row(len(flows), dst_rows, dst_q, answers)
        self.counters["unroutable_records"] += int(dst["unroutable"].sum())
        found = self._apply_dst(flows, dst)
        src = self._per_row(len(flows), src_rows, src_q, answers)
        flows["src_mask"][src["routed"]] = src["prefix"][src["routed"]]
        found |= src["routed"]
        self.counters["records"] += len(flows)
        self.counters["enriched"] += int(found.sum())
        if isinstance(records, list):
            _copy_back(records, batch)

    def _dst_rows(self, flows: np.ndarray) -> np.ndarray:
        """Rows whose destination lookup could fill a configured field."""
        if not self.dst_fields:
            return np.zeros(len(flows), bool)
        if self.override:
            return np.ones(len(flows), bool)
        rows = np.zeros(len(flows), bool)
        for name in self.dst_fields:
            rows |= _unknown(flows[name])
        return rows

    def _src_rows(self, flows: np.ndarray) -> np.ndarray:
        if "src_mask" not in self.fill:
            return np.zeros(len(flows), bool)
        return np.ones(len(flows), bool) if self.override else flows["src_mask"] == 0

    @staticmethod
    def _distinct(flows: np.ndarray, column: str, rows: np.ndarray
                  ) -> tuple[list[bytes], np.ndarray]:
        """The distinct packed addresses of ``column`` in ``rows`` (4 or 16 bytes), and for
        each of those rows the index of its address."""
        wanted = np.zeros(int(rows.sum()), [("v", "u1"), ("a", "V16")])
        wanted["v"], wanted["a"] = flows["ip_version"][rows], flows[column][rows]
        distinct, where = np.unique(wanted, return_inverse=True)
        return [a[:4] if v == 4 else a for v, a in distinct.tolist()], where.reshape(-1)

    @staticmethod
    def _per_row(n: int, rows: np.ndarray, query: tuple[list[bytes], np.ndarray],
                 answers: dict[bytes, Route | None]) -> np.ndarray:
        """The answers spread over the rows: routed, unroutable, prefix, gateway, oif
        (rows outside ``rows`` and deferred addresses are neither routed nor unroutable)."""
        packed, where = query
        routes = [answers.get(a) for a in packed]
        per = np.zeros(len(packed), _ANSWER)
        per["routed"] = [r is not None for r in routes]
        per["unroutable"] = [a in answers and answers[a] is None for a in packed]
        per["prefix"] = [r.prefix_len if r else 0 for r in routes]
        per["gateway"] = [r.gateway if r else b"" for r in routes]
        per["oif"] = [r.oif if r else 0 for r in routes]
        out = np.zeros(n, _ANSWER)
        out[rows] = per[where]
        return out

    def _apply_dst(self, flows: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Copy the destinations' routes (:meth:`_per_row`) into their rows; the rows that
        had one."""
        ok, prefix, gateway, oif = dst["routed"], dst["prefix"], dst["gateway"], dst["oif"]
        fill, override = self.fill, self.override
        if "dst_mask" in fill:
            take = ok & (override | (flows["dst_mask"] == 0))
            flows["dst_mask"][take] = prefix[take]
        if "next_hop" in fill:
            take = ok & ~_unknown(gateway) & (override | _unknown(flows["next_hop"]))
            flows["next_hop"][take] = gateway[take]
        if "out_if" in fill:
            take = ok & (oif != 0) & (override | (flows["out_if"] == 0))
            flows["out_if"][take] = oif[take]
        return ok

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


_ZERO16 = np.void(bytes(16))
#: one route answer as columns (see RouteAggregator._per_row)
_ANSWER = np.dtype([("routed", "?"), ("unroutable", "?"), ("prefix", "u1"),
                    ("gateway", "V16"), ("oif", "u4")])


def _unknown(column: np.ndarray) -> np.ndarray:
    """Rows where a field is unknown: 0, or an all-zero address."""
    if column.dtype.kind == "V":
        return column == _ZERO16
    return column == 0


def _copy_back(records: list[FlowRecord], batch: FlowBatch) -> None:
    """Give the caller's record objects the values filled in the batch."""
    for rec, new in zip(records, batch.records(), strict=True):
        rec.src_mask, rec.dst_mask, rec.out_if = new.src_mask, new.dst_mask, new.out_if
        rec.next_hop = new.next_hop
