"""Optional Prometheus endpoint: ``[agent] metrics_listen = "127.0.0.1:9184"`` (off by default).

The same counters as ``agent stats``, named by the Prometheus conventions (``netflow_agent_``
prefix, base units, ``_total`` on counters, ``_bytes``/``_seconds`` units, labels instead of
names with numbers in them). Each scrape takes one snapshot on the pipeline thread (the same
:func:`agent.report.build_snapshot` the control socket uses), so the values of one scrape are
consistent with each other.

Families (docs/operations.md has the full table): ``netflow_agent_traffic_packets_total``,
``..._traffic_bytes_total``, ``..._drop_packets_total``, ``..._drop_bytes_total``,
``..._cache_searches_total``/``found``/``new_flows``, ``..._truncated_packets_total``,
``..._fragments_total``, ``..._alloc_failures_total``, ``..._maxflows_dropped_packets_total``,
``..._flows_active``, ``..._flows_peak``, ``..._flows_peak_timestamp_seconds``,
``..._flows_limit``, ``..._memtraf_packets``, ``..._memtraf_bytes``,
``..._hash_metric{window}``, ``..._rate_packets_per_second{window}``,
``..._rate_bits_per_second{window}``, ``..._export_*{exporter,destination}`` (the sockX
lines), ``..._natevents_total{event}``, ``..._reloads_total{result}``,
``..._reload_last_timestamp_seconds``, ``..._reload_last_success``, ``..._config_generation``,
``..._build_info``, ``..._hook_calls_total{component,hook}``,
``..._hook_call_errors_total{component,hook}``, ``..._hook_seconds_total{component,hook}``
(per plugin or instance, agent/runner.py), and
what components report through ``agent_collect_stats``, typed (:func:`classify_stat`):
``..._component_events_total{component,stat}`` (counters), ``..._component_value{component,
stat}`` (gauges), ``..._component_setting{component,setting}`` (configuration) and
``..._component_timestamp_seconds{component,stat}``. prometheus-client's process
(``process_*``) and platform (``python_info``) collectors are included.

Serving (issue 18 item 10): a :class:`agent.localserver.LocalServer` on a socket bound before
the privilege drop; a request head of at most :data:`MAX_HEAD` bytes within the request
deadline, two workers, ``Connection: close``. Only ``GET``/``HEAD`` of ``/metrics`` (and
``/``) are answered.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from netflow_agent.localserver import LocalServer, Rejected
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
    "sampler_discarded_packets": ("sampler_discarded_packets", "Packets of flows the hash "
                                  "sampler did not select (intentional, not drops)."),
    "sampler_discarded_bytes": ("sampler_discarded_bytes", "Bytes of those packets."),
    "sampler_unselected_flows": ("sampler_unselected_flows", "Expired flows the deterministic "
                                 "or random sampler left out."),
    "deferred_scans": ("expiry_deferred_scans", "Scans that left due flows in the cache "
                       "because the exporters' paced backlog was full."),
}
#: the largest HTTP request head read (request line and headers)
MAX_HEAD = 8192
#: the listening socket's backlog; also how many waiting scrapes get the stopping reply at
#: the close (agent/localserver.py: a TCP backlog keeps filling while it is answered)
LISTEN_BACKLOG = 64
#: component stats that are configuration, not measurements
SETTING_STATS = frozenset({"protocol", "sampling_interval", "maxflows_limit", "rcvbuf",
                           "sndbuf", "group", "snaplen", "batch_size",
                           # the eBPF ingest's kernel table sizes, as derived at start
                           "maxflows", "cpu_slots", "kernel_memory_bytes"})
#: component stats that go up and down (everything else numeric is a counter)
GAUGE_STATS = frozenset({"active_flows", "peak_flows", "slots", "memtraf_packets",
                         "memtraf_bytes", "natevents_active", "cache_entries", "interfaces",
                         "sequence", "templates", "templates_active", "connected", "filled",
                         "peak", "spool_records", "spool_bytes", "queued", "in_flight",
                         "backlog"})
#: suffixes of gauge names (a current size, the last measurement)
GAUGE_SUFFIXES = ("_active", "_entries", "_last", "_current", "_queued", "_size")
CACHE_GAUGES = {
    "active_flows": ("flows_active", "Flows in the cache."),
    "peak_flows": ("flows_peak", "Most flows in the cache since start."),
    "maxflows_limit": ("flows_limit", "The maxflows setting (0 = unlimited)."),
    "memtraf_packets": ("memtraf_packets", "Packets held by flows in the cache."),
    "memtraf_bytes": ("memtraf_bytes", "Bytes held by flows in the cache."),
    "flows_mem_bytes": ("flows_memory_bytes", "Approximate memory of the flow table."),
    "hash_mem_bytes": ("hash_memory_bytes", "Approximate memory of the flow key index."),
    "slots": ("hash_slots", "Flow slots allocated."),
    "expiry_deferred": ("expiry_deferred_flows", "Flows due for export that the last scan "
                        "left in the cache (the exporters' backlog was full)."),
    "expiry_deferred_age_s": ("expiry_deferred_age_seconds", "How long the oldest deferred "
                              "flow has been due (0 = none deferred)."),
    "delivery_lag_s": ("delivery_lag_seconds", "How much longer than the inactive "
                        "timeout an idle flow stays: the ingests' declared delivery lag."),
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
    "lost_records": ("export_lost_records", "Flow/event records in datagrams not "
                     "sent, or refused by the encoder."),
    "lost_packets": ("export_lost_packets", "Packets of the flow records in datagrams not "
                     "sent or refused by the encoder (NetFlow)."),
    "lost_octets": ("export_lost_octets", "Octets of those flow records (NetFlow)."),
    "paced": ("export_paced_datagrams", "Datagrams that went through the paced backlog."),
    "backlog_dropped": ("export_backlog_dropped_datagrams", "Datagrams not queued (the "
                        "paced backlog was full) or left in it at close."),
}
DEST_GAUGES = {
    "sndbuf": ("export_sndbuf_bytes", "Socket send buffer size."),
    "filled": ("export_sndbuf_filled_bytes", "Bytes queued in the send buffer (last sample)."),
    "peak": ("export_sndbuf_peak_bytes", "Most bytes queued in the send buffer."),
    "connected": ("export_connected", "1 when the destination socket is connected."),
    "backlog": ("export_backlog_datagrams", "Datagrams waiting in the paced backlog, with "
                "the chunk the pacing loop is sending."),
    "backlog_peak": ("export_backlog_peak_datagrams", "Most datagrams ever waiting at once."),
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
    yield GaugeMetricFamily(PREFIX + "flows_peak_timestamp_seconds", "When the peak of active "
                            "flows was reached (Unix seconds; 0 = never).",
                            value=cache.get("peak_ns", 0) / 1e9)
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
    yield from _hook_families(snap.get("hooks", {}), CounterMetricFamily)
    yield from _component_families(snap["components"], CounterMetricFamily, GaugeMetricFamily)


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
    reload = agent["reload"]
    yield _labelled(counter, "reloads", "Configuration reloads by result.", ["result"],
                    [([r], reload[r]) for r in ("ok", "unchanged", "failed")])
    yield gauge(PREFIX + "reload_last_timestamp_seconds", "When the last reload finished "
                "(Unix time; 0 = none since start).", value=reload["last_time"])
    yield gauge(PREFIX + "reload_last_success", "1 when the last reload applied its "
                "configuration or found it unchanged (or none happened), 0 when it failed.",
                value=0 if reload["last_result"] == "failed" else 1)
    yield gauge(PREFIX + "config_generation", "Configurations applied since start "
                "(1 = the one started with).", value=reload["generation"])
    yield _labelled(counter, "hook_errors", "Hook implementations that raised.",
                    ["component"], [([k], v) for k, v in agent["hook_errors"].items()])
    yield counter(PREFIX + "exported_flows", "Flow records handed to exporters.",
                  value=agent["exported_flows"])
    yield gauge(PREFIX + "restored_flows", "Flows restored from the state file at start.",
                value=agent["restored_flows"])
    yield gauge(PREFIX + "uptime_seconds", "Seconds since start (capture time in a replay).",
                value=agent["uptime_s"])
    info = gauge(PREFIX + "build_info", "Constant 1, labelled with the agent's version.",
                 labels=["version"])
    info.add_metric([agent["version"]], 1.0)
    yield info


#: hook counter (agent.runner.HookCounters) -> (metric, help)
HOOK_COUNTERS = {
    "calls": ("hook_calls", "Calls of a hook implementation."),
    "errors": ("hook_call_errors", "Calls of a hook implementation that raised."),
    "seconds": ("hook_seconds", "Seconds spent in a hook implementation."),
}


def _hook_families(hooks: dict[str, Any], counter: Any) -> Iterator[Any]:
    for key, (name, doc) in HOOK_COUNTERS.items():
        yield _labelled(counter, name, doc, ["component", "hook"],
                        [([comp, hook], float(c[key])) for comp, per_hook in hooks.items()
                         for hook, c in per_hook.items()])


def classify_stat(key: str, value: float) -> tuple[str, str, float]:
    """The family of one numeric component stat: ``(kind, name, value)``.

    ``kind`` is ``"setting"``, ``"timestamp"`` (``*_ns`` in seconds, name without ``_ns``),
    ``"gauge"`` (``*_ms_*`` durations in seconds, renamed ``*_seconds_*``) or ``"counter"``.
    """
    if key in SETTING_STATS:
        return "setting", key, value
    if key.endswith("_ns"):
        return "timestamp", key[:-3], value / 1e9
    if key in GAUGE_STATS or key.endswith(GAUGE_SUFFIXES):
        if "_ms" in key:
            return "gauge", key.replace("_ms", "_seconds"), value / 1e3
        return "gauge", key, value
    return "counter", key, value


_COMPONENT_FAMILIES = {  # kind -> (name, help, label of the stat)
    "counter": ("component_events", "A counter a component reports (agent_collect_stats).",
                "stat"),
    "gauge": ("component_value", "A current value a component reports.", "stat"),
    "setting": ("component_setting", "A configuration value a component reports.",
                "setting"),
    "timestamp": ("component_timestamp_seconds", "A time a component reports (Unix "
                  "seconds).", "stat"),
}


def _component_families(components: dict[str, Any], counter: Any,
                        gauge: Any) -> Iterator[Any]:
    """Every numeric top-level stat of every component but the cache (typed families above),
    in the family :func:`classify_stat` says."""
    samples: dict[str, list[tuple[list[str], float]]] = {k: [] for k in _COMPONENT_FAMILIES}
    for comp, stats in components.items():
        if comp == "cache" or not isinstance(stats, dict):
            continue
        for key, value in stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                kind, name, number = classify_stat(key, float(value))
                samples[kind].append(([comp, name], number))
    for kind, (name, doc, label) in _COMPONENT_FAMILIES.items():
        yield _labelled(counter if kind == "counter" else gauge, name, doc,
                        ["component", label], samples[kind])


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
    """The HTTP endpoint: :meth:`start` binds (as root), :meth:`serve` answers (after the drop).

    :param listen: ``"host:port"``.
    :param snapshot: returns a fresh snapshot (thread-safe: goes through the pipeline thread).
    """

    def __init__(self, listen: str, snapshot: Callable[[], dict[str, Any]]):
        self.host, self.port = parse_listen(listen)
        self.snapshot = snapshot
        self.registry: Any = None
        self._sock: socket.socket | None = None
        self.server: LocalServer | None = None

    def start(self) -> None:
        """Bind and listen (raises ``OSError`` when the address is taken)."""
        from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_SnapshotCollector(self.snapshot))  # type: ignore[arg-type]
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.registry = registry
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def serve(self, **limits: Any) -> None:
        """Start answering (threads born after the privilege drop).

        :param limits: :class:`~agent.localserver.LocalServer` keywords.
        """
        assert self._sock is not None
        limits.setdefault("workers", 2)
        limits.setdefault("pending_limit", LISTEN_BACKLOG)
        # built per reply: each carries its own Date header
        self.server = LocalServer(self._sock, "metrics", parse_http_head, self._reply,
                                  lambda: http_reply(503, b"busy\n"),
                                  stopping_reply=lambda: http_reply(
                                      503, b"the agent is stopping\n"),
                                  **limits)
        self.server.serve()

    def _reply(self, request: tuple[str, str], accepted: float) -> bytes:
        method, target = request
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return http_reply(405, b"only GET\n", extra="Allow: GET, HEAD\r\n")
        if path == "/":
            body = b"<html><body><a href=\"/metrics\">metrics</a></body></html>\n"
            return http_reply(200, body, "text/html", head_only=method == "HEAD")
        if path != "/metrics":
            return http_reply(404, b"not found: try /metrics\n")
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

        try:
            body = generate_latest(self.registry)
        except Exception:  # a collector bug shows as a failed scrape, never a dead server
            log.exception("metrics: scrape failed")
            return http_reply(500, b"scrape failed; see the agent's log\n")
        return http_reply(200, body, CONTENT_TYPE_LATEST, head_only=method == "HEAD")

    def close(self) -> None:
        """Stop serving."""
        if self.server is not None:
            self.server.close()
            self.server = None
        elif self._sock is not None:
            self._sock.close()
        self._sock = None


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


def http_reply(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
               head_only: bool = False, extra: str = "") -> bytes:
    """A whole HTTP/1.1 response that closes the connection."""
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}"
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}\r\n\r\n")
    return head.encode() + (b"" if head_only else body)


def parse_http_head(buf: bytes) -> tuple[str, str] | None:
    """``(method, target)`` once the request head is complete; ``None`` before.

    :raises Rejected: a head over :data:`MAX_HEAD` bytes, or a malformed request line (the
        reply names the problem, never the request's bytes).
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise Rejected(http_reply(431, b"request head too large\n"), "head too large")
        return None
    if end > MAX_HEAD:
        raise Rejected(http_reply(431, b"request head too large\n"), "head too large")
    parts = buf[:buf.find(b"\r\n")].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1].startswith(b"/"):
        raise Rejected(http_reply(400, b"bad request line\n"), "bad request line")
    try:
        return parts[0].decode("ascii"), parts[1].decode("ascii")
    except UnicodeDecodeError:
        raise Rejected(http_reply(400, b"bad request line\n"), "bad request line") from None
