"""The agent's side of ``agent top``: the biggest flows in the cache, with bounded work.

What it owns: the ``top`` control command's parameters (:class:`TopQuery`), the per-flow
baseline that turns cumulative counters into rates over the last interval
(:class:`RateBaseline`), and the selection itself (:class:`FlowTop`), run on the pipeline
thread over the cache's counter columns (:meth:`agent.stages.cache.FlowCache.columns`).

Bounded work at any table size: every step is a NumPy operation over whole columns
(``argpartition`` picks the top N in O(flows)), and Python objects are built for the N rows
returned only, never one per flow. A filter needs the key fields: the keys of the occupied slots
are copied out of the C key index as one ``(flows, key_size)`` byte matrix and compared column
by column; without a filter they are not touched. docs/operations.md gives the measured cost
at 1 M flows.

Rates: the cache keeps cumulative counters per flow; a request compares them with a copy
taken by an earlier request (:class:`RateBaseline`), at least :data:`MIN_INTERVAL_S` old. A
slot whose flow changed since (its start time differs) counts from zero. Without a baseline
(the first request, ``agent top --once``) the rate is the flow's average over its life.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import numpy as np

from netflow_agent.model import split_key

SORTS = ("bytes", "packets", "rate")
MAX_ROWS = 500
#: a baseline is replaced by a newer copy once it is this old (rates over ~1 s windows)
MIN_INTERVAL_S = 1.0
_NS = 1_000_000_000
_NO_PORTS = (1, 58)  # ICMP and ICMPv6 carry type/code where ports are


@dataclass(frozen=True)
class TopQuery:
    """What one ``top`` request asks for.

    :ivar n: rows wanted (1..:data:`MAX_ROWS`).
    :ivar sort: ``bytes``, ``packets`` or ``rate`` (bytes per second over the interval).
    :ivar proto: IP protocol number, or ``None``.
    :ivar port: a source or destination port, or ``None`` (never matches ICMP).
    :ivar net: flows whose source or destination is in this network, or ``None``.
    """

    n: int = 20
    sort: str = "bytes"
    proto: int | None = None
    port: int | None = None
    net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None

    @classmethod
    def from_request(cls, message: dict[str, Any]) -> TopQuery:
        """Validate a request's fields.

        :raises ValueError: a bad parameter (the message names the parameter, not its value).
        """
        n, sort = message.get("n", 20), message.get("sort", "bytes")
        if not isinstance(n, int) or not 1 <= n <= MAX_ROWS:
            raise ValueError(f"n must be an integer from 1 to {MAX_ROWS}")
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}")
        filt = message.get("filter") or {}
        if not isinstance(filt, dict):
            raise ValueError("filter must be a map")
        return cls(n=n, sort=sort, proto=_int_field(filt, "proto", 255),
                   port=_int_field(filt, "port", 65535), net=_net_field(filt))

    @property
    def filtered(self) -> bool:
        """Whether any filter is set."""
        return self.proto is not None or self.port is not None or self.net is not None


def _int_field(filt: dict[str, Any], name: str, top: int) -> int | None:
    value = filt.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or not 0 <= value <= top:
        raise ValueError(f"filter {name} must be an integer from 0 to {top}")
    return value


def _net_field(filt: dict[str, Any]) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    value = filt.get("net")
    if value is None:
        return None
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise ValueError("filter net must be an address or a network (10.0.0.0/8)") from None


@dataclass
class _Copy:
    t_ns: int
    packets: np.ndarray
    octets: np.ndarray
    first: np.ndarray
    drops: int


class RateBaseline:
    """Per-slot counters (and start times, to see reused slots) at earlier requests.

    Two copies are kept: the newest, and the one before it, used when the clock has not moved
    since the newest (a replay's clock advances by whole batches).
    """

    def __init__(self) -> None:
        self.copies: list[_Copy] = []

    def pick(self, now_ns: int) -> _Copy | None:
        """The newest copy older than ``now_ns``, or ``None``."""
        for copy in reversed(self.copies):
            if copy.t_ns < now_ns:
                return copy
        return None

    @staticmethod
    def deltas(copy: _Copy, idx: np.ndarray, packets: np.ndarray, octets: np.ndarray,
               first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Packets and bytes of slots ``idx`` since ``copy`` (whole counts for slots that
        were free, beyond the copy, or now hold another flow)."""
        dp, db = packets[idx].astype(np.int64), octets[idx].astype(np.int64)
        inside = idx < len(copy.first)
        known = idx[inside]
        same = copy.first[known] == first[known]
        rows = np.flatnonzero(inside)[same]
        dp[rows] -= copy.packets[known[same]].astype(np.int64)
        db[rows] -= copy.octets[known[same]].astype(np.int64)
        return np.maximum(dp, 0), np.maximum(db, 0)

    def advance(self, now_ns: int, packets: np.ndarray, octets: np.ndarray, first: np.ndarray,
                drops: int) -> None:
        """Copy the columns as the newest baseline, when the newest is old enough."""
        if self.copies and now_ns - self.copies[-1].t_ns < MIN_INTERVAL_S * _NS:
            return
        self.copies = self.copies[-1:] + [_Copy(now_ns, packets.copy(), octets.copy(),
                                                first.copy(), drops)]


class FlowTop:
    """Answers ``top`` requests on the pipeline thread; keeps the rate baseline."""

    def __init__(self) -> None:
        self.baseline = RateBaseline()

    def answer(self, pipeline: Any, message: dict[str, Any]) -> dict[str, Any]:
        """The reply's ``top`` map for one request (pipeline thread).

        :raises ValueError: bad parameters, or no flow cache with columns.
        """
        query = TopQuery.from_request(message)
        cache = pipeline.cache_component()
        if cache is None or not hasattr(cache, "columns"):
            raise ValueError("this agent's cache does not list flows")
        core = pipeline.core_stats()
        now = pipeline.now_ns()
        return self.select(cache.columns(), query, now, core)

    def select(self, cols: Any, query: TopQuery, now_ns: int,
               core: dict[str, Any]) -> dict[str, Any]:
        """Pick the top ``query.n`` flows of ``cols`` (a :class:`~agent.stages.cache.Columns`)."""
        idx = cols.occupied()
        base = self.baseline.pick(now_ns)
        interval = (now_ns - base.t_ns) / _NS if base is not None else 0.0
        if query.filtered:
            idx = idx[_key_filter(cols, idx, query)]
        if query.sort == "rate":  # the only sort that needs every flow's rate
            score = _rates(cols, idx, base, now_ns)[1]
        else:
            score = (cols.octets if query.sort == "bytes" else cols.packets)[idx]
        chosen = idx[_top_order(score, query.n)]
        pps, bps = _rates(cols, chosen, base, now_ns)  # again, for the rows shown only
        drops = int(core.get("drop_packets", 0))
        rows = [_row(cols, int(slot), float(pps[r]), float(bps[r]), now_ns)
                for r, slot in enumerate(chosen)]
        reply = {
            "flows": rows, "matched": int(len(idx)), "active": int(core.get("active_flows", 0)),
            "sort": query.sort, "interval_s": interval, "rate_basis":
                "interval" if interval else "lifetime",
            "packets_per_s": float(core.get("pps", 0.0)),
            "bytes_per_s": float(core.get("bps", 0.0)) / 8,
            "drops": drops,
            "drops_per_s": (drops - base.drops) / interval if base is not None else 0.0,
            "now_ns": now_ns,
        }
        self.baseline.advance(now_ns, cols.packets, cols.octets, cols.first, drops)
        return reply


def _rates(cols: Any, slots: np.ndarray, base: _Copy | None,
           now_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Packets/s and bytes/s of ``slots``: since ``base``, or over each flow's life."""
    if base is not None:
        dp, db = RateBaseline.deltas(base, slots, cols.packets, cols.octets, cols.first)
        interval = (now_ns - base.t_ns) / _NS
        return dp / interval, db / interval
    life = np.maximum((now_ns - cols.first[slots]) / _NS, 1e-3)
    return cols.packets[slots] / life, cols.octets[slots] / life


def _top_order(score: np.ndarray, n: int) -> np.ndarray:
    """Row numbers of the ``n`` largest scores, largest first, ties by row (O(len) for the
    selection, O(n log n) for the order)."""
    if len(score) > n:
        part = np.argpartition(score, len(score) - n)[len(score) - n:]
    else:
        part = np.arange(len(score))
    return part[np.lexsort((part, -score[part].astype(np.float64)))]


def _key_filter(cols: Any, idx: np.ndarray, query: TopQuery) -> np.ndarray:
    """Boolean mask over the slots ``idx`` matching every filter of ``query``.

    Key layout: :data:`agent.model.KEY` (one width per run; see :func:`_in_network`).
    """
    keys = cols.keys(idx)  # (len(idx), key_size) uint8, copied out of the C index
    version, proto = keys[:, 0], keys[:, 1]
    keep = np.ones(len(idx), dtype=bool)
    if query.proto is not None:
        keep &= proto == query.proto
    if query.port is not None:
        sport = keys[:, 8].astype(np.uint16) << 8 | keys[:, 9]
        dport = keys[:, 10].astype(np.uint16) << 8 | keys[:, 11]
        keep &= ((sport == query.port) | (dport == query.port)) & ~np.isin(proto, _NO_PORTS)
    if query.net is not None:
        keep &= _in_network(keys, version, query.net)
    return keep


#: where the source and destination addresses start in a key (16 bytes each, IPv4 padded)
_ADDR_AT = (12, 28)


def _in_network(keys: np.ndarray, version: np.ndarray,
                net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> np.ndarray:
    """Source or destination address of each key (rows of ``keys``) inside ``net``."""
    mask = np.frombuffer(net.netmask.packed, dtype=np.uint8)
    prefix = np.frombuffer(net.network_address.packed, dtype=np.uint8)
    width = len(mask)
    match = np.zeros(len(keys), dtype=bool)
    for at in _ADDR_AT:
        match |= ((keys[:, at:at + width] & mask) == prefix).all(axis=1)
    return match & (version == net.version)


def _row(cols: Any, slot: int, pps: float, bps: float, now_ns: int) -> dict[str, Any]:
    k = split_key(cols.key(slot))
    return {
        "proto": k.protocol, "src": str(ipaddress.ip_address(k.src_addr)), "sport": k.src_port,
        "dst": str(ipaddress.ip_address(k.dst_addr)), "dport": k.dst_port,
        "packets": int(cols.packets[slot]), "bytes": int(cols.octets[slot]),
        "packets_per_s": pps, "bytes_per_s": bps,
        "age_s": max(0, now_ns - int(cols.first[slot])) / _NS,
        "in_if": k.in_if,
    }
