"""Optional Prometheus endpoint: ``[agent] metrics_listen = "127.0.0.1:9184"`` (off by default).

The same counters as ``agent stats``, named by the Prometheus conventions (``netflow_agent_``
prefix, base units, ``_total`` on counters, ``_bytes``/``_seconds`` units, labels instead of
names with numbers in them). Each scrape takes one snapshot on the pipeline thread (the same
:func:`agent.report.build_snapshot` the control socket uses), so the values of one scrape are
consistent with each other. Served by prometheus-client's HTTP server on its own thread.

Families (see docs/operations.md for the full table): ``netflow_agent_traffic_packets_total``,
``..._traffic_bytes_total``, ``..._drop_packets_total``, ``..._drop_bytes_total``,
``..._cache_searches_total``/``found``/``new_flows``, ``..._truncated_packets_total``,
``..._fragments_total``, ``..._alloc_failures_total``, ``..._maxflows_dropped_packets_total``,
``..._flows_active``, ``..._flows_peak``, ``..._flows_limit``, ``..._memtraf_packets``,
``..._memtraf_bytes``, ``..._hash_metric{window}``, ``..._rate_packets_per_second{window}``,
``..._rate_bits_per_second{window}``, ``..._export_*{exporter,destination}`` (the sockX
lines), ``..._natevents_total{event}``, ``..._reloads_total{result}``,
``..._component_stat{component,stat}`` (every numeric counter a component reports).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from netflow_agent.transport.udp import parse_endpoint

log = logging.getLogger("agent.metrics")
PREFIX = "netflow_agent_"

#: cache counter -> (metric name without prefix/suffix, help)
CACHE_COUNTERS = {
    "traffic_packets": ("traffic_packets", "Packets accounted into flows."),
    "traffic_bytes": ("traffic_bytes", "Bytes (IP total length) accounted into flows."),
    "drop_packets": ("drop_packets", "Packets not accounted (truncated, maxflows, ingest loss)."),
    "drop_bytes": ("drop_bytes", "Bytes not accounted."),
    "search": ("cache_searches", "Flow table lookups."),
    "found": ("cache_found", "Lookups that found an existing flow."),
    "new": ("cache_new_flows", "Flows created."),
    "trunc": ("truncated_packets", "Packets without a valid IP header."),
    "frag": ("fragments", "Fragmented packets seen (accounted, not reassembled)."),
    "alloc": ("alloc_failures", "Flow allocations that failed."),
    "maxflows": ("maxflows_dropped_packets", "Packets dropped because maxflows was reached."),
    "exported_flows": ("cache_expired_flows", "Flows expired from the cache."),
}
CACHE_GAUGES = {
    "active_flows": ("flows_active", "Flows in the cache."),
    "peak_flows": ("flows_peak", "Most flows in the cache since start."),
    "maxflows_limit": ("flows_limit", "The maxflows setting (0 = unlimited)."),
    "memtraf_packets": ("memtraf_packets", "Packets held by flows in the cache."),
    "memtraf_bytes": ("memtraf_bytes", "Bytes held by flows in the cache."),
    "flows_mem_bytes": ("flows_memory_bytes", "Approximate memory of the flow table."),
    "hash_mem_bytes": ("hash_memory_bytes", "Approximate memory of the flow key index."),
    "slots": ("hash_slots", "Flow slots allocated."),
}
#: destination counter -> (metric, help)
DEST_COUNTERS = {
    "packets_ok": ("export_datagrams", "Export datagrams handed to the kernel (sock ok)."),
    "bytes_ok": ("export_bytes", "Bytes of export datagrams sent."),
    "fail": ("export_send_failures", "Datagrams not sent (sock fail)."),
    "cberr": ("export_cberr", "ICMP unreachable errors reported for the collector."),
    "err_sndbuf": ("export_sndbuf_drops", "Datagrams dropped on a full send buffer."),
    "err_connect": ("export_connect_errors", "Failed connect attempts."),
    "err_other": ("export_other_errors", "Datagrams dropped on other errors."),
    "lost_records": ("export_lost_records", "Flow/event records in datagrams not sent."),
}
DEST_GAUGES = {
    "sndbuf": ("export_sndbuf_bytes", "Socket send buffer size."),
    "filled": ("export_sndbuf_filled_bytes", "Bytes queued in the send buffer (last sample)."),
    "peak": ("export_sndbuf_peak_bytes", "Most bytes queued in the send buffer."),
    "connected": ("export_connected", "1 when the destination socket is connected."),
}


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9184"``/``"[::1]:9184"`` -> (host, port); the port is required."""
    return parse_endpoint(text)


def metric_families(snap: dict[str, Any]) -> Iterator[Any]:
    """Prometheus metric families for one :func:`agent.report.build_snapshot` result."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    cache = snap["cache"]
    for key, (name, doc) in CACHE_COUNTERS.items():
        yield CounterMetricFamily(PREFIX + name, doc, value=cache.get(key, 0))
    for key, (name, doc) in CACHE_GAUGES.items():
        yield GaugeMetricFamily(PREFIX + name, doc, value=cache.get(key, 0))
    yield _labelled(GaugeMetricFamily, "hash_metric", "Flow table lookups per match "
                    "(1 = every packet found its flow).", ["window"],
                    [(["now"], cache["metric"])]
                    + [([w], v) for w, v in cache["metric_ewma"].items()])
    rates = snap["rates"]
    yield _labelled(GaugeMetricFamily, "rate_packets_per_second", "Accounted packet rate.",
                    ["window"], [(["1s"], rates["pps"]), (["1m"], rates["pps_1m"]),
                                 (["5m"], rates["pps_5m"])])
    yield _labelled(GaugeMetricFamily, "rate_bits_per_second", "Accounted bit rate.",
                    ["window"], [(["1s"], rates["bps"]), (["1m"], rates["bps_1m"]),
                                 (["5m"], rates["bps_5m"])])
    yield from _destination_families(snap["sockets"], CounterMetricFamily, GaugeMetricFamily)
    nat = snap["natevents"]
    yield _labelled(CounterMetricFamily, "natevents", "NAT translation events.", ["event"],
                    [(["start"], nat["start"]), (["stop"], nat["stop"])])
    yield from _agent_families(snap["agent"], CounterMetricFamily, GaugeMetricFamily)
    yield _component_family(snap["components"], GaugeMetricFamily)


def _labelled(kind: Any, name: str, doc: str, labels: list[str],
              samples: list[tuple[list[str], float]]) -> Any:
    family = kind(PREFIX + name, doc, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def _destination_families(sockets: list[dict[str, Any]], counter: Any,
                          gauge: Any) -> Iterator[Any]:
    labels = ["exporter", "destination"]
    for table, kind in ((DEST_COUNTERS, counter), (DEST_GAUGES, gauge)):
        for key, (name, doc) in table.items():
            yield _labelled(kind, name, doc, labels,
                            [([s["exporter"], s["destination"]], float(s.get(key, 0)))
                             for s in sockets if key in s])


def _agent_families(agent: dict[str, Any], counter: Any, gauge: Any) -> Iterator[Any]:
    yield _labelled(counter, "reloads", "Configuration reloads.", ["result"],
                    [(["ok"], agent["reloads"]), (["failed"], agent["reload_failures"])])
    yield _labelled(counter, "hook_errors", "Hook implementations that raised.",
                    ["component"], [([k], v) for k, v in agent["hook_errors"].items()])
    yield counter(PREFIX + "exported_flows", "Flow records handed to exporters.",
                  value=agent["exported_flows"])
    yield gauge(PREFIX + "restored_flows", "Flows restored from the state file at start.",
                value=agent["restored_flows"])
    yield gauge(PREFIX + "uptime_seconds", "Seconds since start (capture time in a replay).",
                value=agent["uptime_s"])


def _component_family(components: dict[str, Any], gauge: Any) -> Any:
    samples = []
    for comp, stats in components.items():
        if not isinstance(stats, dict):
            continue
        for key, value in stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                samples.append(([comp, key], float(value)))
    return _labelled(gauge, "component_stat", "A numeric counter reported by a component "
                     "(agent_collect_stats).", ["component", "stat"], samples)


class _SnapshotCollector:
    """prometheus-client collector: one snapshot per scrape."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        """Called by the HTTP thread for every scrape."""
        try:
            snap = self.snapshot()
        except Exception as exc:  # a stuck pipeline shows as a failed scrape, not a crash
            log.warning("metrics scrape failed: %s", exc)
            return
        yield from metric_families(snap)


class MetricsServer:
    """The HTTP endpoint.

    :param listen: ``"host:port"``.
    :param snapshot: returns a fresh snapshot (thread-safe: goes through the pipeline thread).
    """

    def __init__(self, listen: str, snapshot: Callable[[], dict[str, Any]]):
        self.host, self.port = parse_listen(listen)
        self.snapshot = snapshot
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> None:
        """Bind and serve (raises ``OSError`` when the address is taken)."""
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_SnapshotCollector(self.snapshot))  # type: ignore[arg-type]
        result = start_http_server(self.port, addr=self.host, registry=registry)
        if isinstance(result, tuple):
            self._server, self._thread = result
        if self._server is not None:
            self.port = self._server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
