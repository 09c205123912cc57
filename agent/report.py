"""``agent stats``: the snapshot of a running agent and the report of the seed's "HOW TO READ STAT".

Two halves:

* :func:`build_snapshot` runs **on the pipeline thread** (the control socket and the metrics
  endpoint ask for it through an ``ITEM_CALL`` inbox item), reads every counter once and
  returns plain data (str/int/float/bool/list/dict), which is what ``agent stats --json``
  prints and what travels over the control socket as msgpack;
* :func:`format_report` turns a snapshot into ipt_NETFLOW's ``/proc/net/stat/ipt_netflow``
  lines, line for line where they apply.

Userspace meanings (documented in docs/operations.md):

* **Hash: size** is the number of flow slots allocated in the cache's columns (they double
  when full); **mem** is the size of the key index (C memory: keys, hashes, buckets),
  **Flows: mem** the whole table (the index and the counter columns).
* **metric** is *lookups per match*: ``search / found`` over a tick, 1.00 when every packet
  belonged to a flow already in the table. The kernel counted bucket-chain steps; the C key
  index's probing is internal and bounded, so what remains costly here is the miss path (slot
  allocation, insert), which this ratio shows: 2.00 means half the packets started a flow
  (short flows, scans, a flood). ``[a, b, c, d]`` are exponentially weighted moving
  averages over 4 s, 1, 5 and 15 minutes (the load-average formula, per tick with the
  elapsed time); the ``[metric]`` of the stat line is the average since start.
* **worker delay X/1000** is the scan interval in ms (timeouts checked, exports sent),
  followed by the interval actually measured between the last two scans.
* **pdu X, X** is 0, 0: exporters encode and send during the scan, nothing waits in a PDU.
* There is one pipeline thread, so the per-CPU lines become one ``Total stat:`` line, then
  one line per ingest and exporter instance with that instance's own counters.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from netflow_agent import __version__, hookimpl

#: EWMA windows of the hash metric, seconds (the seed: 4 s, 1, 5, 15 min)
METRIC_WINDOWS = (4.0, 60.0, 300.0, 900.0)
_NS = 1_000_000_000
_PROTOCOL_NAMES = {5: "netflow v5", 9: "netflow v9", 10: "ipfix"}


class HashMeter:
    """The seed's hash ``metric``: instantaneous, moving averages, and since start."""

    def __init__(self) -> None:
        self.last_ns = 0
        self.last_search = 0
        self.last_found = 0
        self.current = 1.0
        self.averages = [1.0 for _ in METRIC_WINDOWS]

    @staticmethod
    def ratio(search: int, found: int) -> float:
        """``search / found``; 1.0 without lookups (an idle table is not a bad table)."""
        if search <= 0:
            return 1.0
        return search / max(found, 1)

    def update(self, now_ns: int, search: int, found: int) -> None:
        """Feed the cache's cumulative ``search`` and ``found`` counters at ``now_ns``."""
        if self.last_ns and now_ns > self.last_ns:
            dt = (now_ns - self.last_ns) / _NS
            self.current = self.ratio(search - self.last_search, found - self.last_found)
            for n, window in enumerate(METRIC_WINDOWS):
                w = math.exp(-dt / window)
                self.averages[n] = self.averages[n] * w + self.current * (1 - w)
        self.last_ns, self.last_search, self.last_found = now_ns, search, found


class OpsMonitor:
    """Registered as a plugin by :mod:`agent.ops`: keeps what needs a periodic sample.

    ``agent_tick`` runs after every scan on the pipeline thread.
    """

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline
        self.hash = HashMeter()
        self.last_tick_ns = 0
        self.tick_interval_ns = 0
        self.started_mono = time.monotonic()

    @hookimpl
    def agent_tick(self, now_ns: int) -> None:
        """Sample the cache's lookup counters and the scan interval."""
        cache = self.pipeline.cache_component()
        if cache is not None:
            self.hash.update(now_ns, cache.stats.search, cache.stats.found)
        if self.last_tick_ns and now_ns > self.last_tick_ns:
            self.tick_interval_ns = now_ns - self.last_tick_ns
        self.last_tick_ns = now_ns


# --- snapshot (pipeline thread) --------------------------------------------------------------


def plain(value: Any) -> Any:
    """Make ``value`` JSON- and msgpack-safe: str keys, bytes as hex, unknown types as str."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, float, str)):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def build_snapshot(pipeline: Any, monitor: OpsMonitor | None = None) -> dict[str, Any]:
    """Read every counter of ``pipeline`` once. Call on the pipeline thread only.

    :return: plain data, see the module docstring; stable keys (``agent stats --json``).
    """
    config = pipeline.config
    components = pipeline.collect_stats()
    core = components.pop("core", {})
    now = pipeline.now_ns() or time.time_ns()
    return plain({
        "agent": _agent_part(pipeline, monitor, now),
        "cache": _cache_part(pipeline, core, monitor, now),
        "rates": {k: core.get(k, 0.0) for k in ("bps", "pps", "bps_1m", "pps_1m",
                                                 "bps_5m", "pps_5m")},
        "exporters": _exporters(config, components),
        "sockets": _sockets(components),
        "natevents": _natevents(config, components),
        "aggregation": _aggregation(config, components),
        "components": components,
        "hooks": pipeline.hook_stats(),
    })


def _agent_part(pipeline: Any, monitor: OpsMonitor | None, now: int) -> dict[str, Any]:
    start = pipeline.context.start_ns
    reloads = pipeline.reload_history.as_dict()
    return {
        "version": __version__, "pid": os.getpid(), "now_ns": now,
        "uptime_s": max(0, now - start) / _NS if start else 0.0,
        "replay": pipeline.replay, "scan_interval_ms": pipeline.config.agent.scan_interval_ms,
        "last_scan_interval_ms": (monitor.tick_interval_ns / 1e6) if monitor else 0.0,
        "reloads": reloads["ok"] + reloads["unchanged"], "reload_failures": reloads["failed"],
        "reload": reloads,
        "hook_errors": dict(pipeline.hook_errors), "restored_flows": pipeline.restored_flows,
        "state_file": pipeline.state_restore.as_dict(),
        "exported_flows": pipeline.exported_flows, "nat_events": pipeline.nat_events,
        "uid": os.geteuid(), "gid": os.getegid(),
    }


def _cache_part(pipeline: Any, core: dict[str, Any], monitor: OpsMonitor | None,
                now: int) -> dict[str, Any]:
    out = {k: v for k, v in core.items() if not k.startswith(("pps", "bps"))}
    for key in ("active_timeout", "inactive_timeout", "hash_mem_bytes", "flows_mem_bytes"):
        out.setdefault(key, 0)  # the cache reports them (agent.roles.Cache.counters)
    peak_ns = core.get("peak_ns", 0)
    out["peak_age_s"] = max(0, now - peak_ns) / _NS if peak_ns else 0.0
    due_ns = out.pop("expiry_deferred_since_ns", 0)  # the oldest deferred flow's due time
    out["expiry_deferred"] = out.get("expiry_deferred", 0)
    out["expiry_deferred_age_s"] = max(0, now - due_ns) / _NS if due_ns else 0.0
    meter = monitor.hash if monitor else HashMeter()
    out["metric"] = meter.current
    out["metric_ewma"] = dict(zip(("4s", "1m", "5m", "15m"), meter.averages, strict=True))
    out["metric_avg"] = HashMeter.ratio(core.get("search", 0), core.get("found", 0))
    return out


def _instances(config: Any, stage: str) -> list[Any]:
    return [i for i in config.instances if i.stage == stage]


def _exporters(config: Any, components: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per exporter, as each describes itself in its stats (agent.roles.Exporter)."""
    out = []
    for inst in _instances(config, "export"):
        stats = components.get(inst.path, {})
        out.append({
            "name": inst.path, "type": inst.type_name, "protocol": stats.get("protocol"),
            "refresh_rate": stats.get("refresh_rate"), "timeout_rate": stats.get("timeout_rate"),
            "templates": stats.get("templates"), "templates_active": stats.get("templates_active"),
            "natevents": bool(stats.get("natevents", False)),
        })
    return out


def _destinations(stats: Any) -> list[dict[str, Any]]:
    """Every nested mapping that describes a destination (has a ``destination`` key)."""
    found: list[dict[str, Any]] = []
    if isinstance(stats, dict):
        if "destination" in stats and isinstance(stats["destination"], str):
            return [stats]
        for value in stats.values():
            found.extend(_destinations(value))
    return found


def _sockets(components: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, stats in components.items():
        if not name.startswith("export."):
            continue
        for dest in _destinations(stats):
            out.append({"exporter": name, **dest})
    return out


def _natevents(config: Any, components: dict[str, Any]) -> dict[str, Any]:
    """Counts from ``ingest.conntrack`` when configured, else what exporters received."""
    start = stop = 0
    sources = [i.path for i in _instances(config, "ingest") if i.type_name == "conntrack"]
    for path in sources:
        stats = components.get(path, {})
        start += int(stats.get("natevents_start", 0))
        stop += int(stats.get("natevents_stop", 0))
    if not sources:
        for inst in _instances(config, "export"):
            stats = components.get(inst.path, {})
            start += int(stats.get("nat_start", 0))
            stop += int(stats.get("nat_stop", 0))
    return {"enabled": bool(sources), "start": start, "stop": stop}


def _aggregation(config: Any, components: dict[str, Any]) -> list[str]:
    """The aggregation rules in use, as the cache (its ``aggregation``, where ``[aggregate]
    rules`` go too) and aggregator plugins report them (``rule_list``)."""
    rules: list[str] = []
    for inst in _instances(config, "cache") + _instances(config, "aggregate"):
        rules.extend(components.get(inst.path, {}).get("rule_list", []))
    return rules


# --- the text report ------------------------------------------------------------------------


def _age(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400}d{s % 86400 // 3600}h{s % 3600 // 60}m"


def _k(n: float) -> str:
    return f"{int(n) // 1024}K"


def _mb(n: float) -> str:
    return f"{int(n) // (1024 * 1024)} MB"


def format_report(snap: dict[str, Any]) -> str:
    """The seed's stat text for one snapshot (one string, lines joined by newlines)."""
    lines = [_header(snap), _reload_line(snap["agent"]["reload"]), _flows_line(snap),
             _hash_line(snap)]
    lines += _protocol_lines(snap)
    lines.append(_rate_line(snap["rates"]))
    lines += _stat_lines(snap)
    nat = snap["natevents"]
    lines.append(f"Natevents {'enabled' if nat['enabled'] else 'disabled'}, "
                 f"count start {nat['start']}, stop {nat['stop']}.")
    lines += [_sock_line(n, s) for n, s in enumerate(snap["sockets"])]
    lines += [f"aggr{n}: {rule}" for n, rule in enumerate(snap["aggregation"])]
    return "\n".join(lines) + "\n"


def _header(snap: dict[str, Any]) -> str:
    a = snap["agent"]
    errors = sum(a["hook_errors"].values())
    return (f"netflow-agent {a['version']} (pid {a['pid']}, uid {a['uid']}), up "
            f"{_age(a['uptime_s'])}{' (replay clock)' if a['replay'] else ''}, reloads "
            f"{a['reloads']} (failed {a['reload_failures']}), hook errors {errors}, "
            f"restored flows {a['restored_flows']}{_state_note(a.get('state_file'))}")


def _state_note(st: dict[str, Any] | None) -> str:
    """`` (rejected R, clamped C, state file quarantined)`` when the restore was not clean."""
    if not st or not (st["rejected"] or st["clamped"] or st["quarantined"]):
        return ""
    moved = ", state file quarantined" if st["quarantined"] else ""
    return f" (rejected {st['rejected']}, clamped {st['clamped']}{moved})"


def _reload_line(r: dict[str, Any]) -> str:
    """``Reload: last 2026-12-05 20:01:02 ok (generation 3)``, or why the last one failed."""
    if not r["last_result"]:
        return f"Reload: none since start (generation {r['generation']})"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["last_time"]))
    if r["last_result"] != "failed":
        return f"Reload: last {when} {r['last_result']} (generation {r['generation']})"
    return f"Reload: last {when} failed, {r['last_reason'].replace(chr(10) + '  ', '; ')}"


def _flows_line(snap: dict[str, Any]) -> str:
    c, a = snap["cache"], snap["agent"]
    return (f"Flows: active {c.get('active_flows', 0)} (peak {c.get('peak_flows', 0)} reached "
            f"{_age(c['peak_age_s'])} ago, maxflows {c.get('maxflows_limit', 0)}), mem "
            f"{_k(c['flows_mem_bytes'])}, worker delay {a['scan_interval_ms']}/1000 "
            f"(last {a['last_scan_interval_ms']:.0f} ms).{_deferred(c)}")


def _deferred(c: dict[str, Any]) -> str:
    """`` Expiry deferred: N flows due ...`` while the exporters' backlog holds due flows
    back (spread over scans), else nothing."""
    if not c.get("expiry_deferred"):
        return ""
    return (f" Expiry deferred: {c['expiry_deferred']} flows due (oldest "
            f"{c['expiry_deferred_age_s']:.1f} s), exporters' backlog full "
            f"({c.get('deferred_scans', 0)} scans).")


def _hash_line(snap: dict[str, Any]) -> str:
    c = snap["cache"]
    ewma = ", ".join(f"{v:.2f}" for v in c["metric_ewma"].values())
    return (f"Hash: size {c.get('slots', 0)} (mem {_k(c['hash_mem_bytes'])}), metric "
            f"{c['metric']:.2f}, [{ewma}]. MemTraf: {c.get('memtraf_packets', 0)} pkt, "
            f"{_k(c.get('memtraf_bytes', 0))} (pdu 0, 0).")


def _lag_note(c: dict[str, Any]) -> str:
    """`` (+1.5 s delivery lag)`` when an ingest declared one: idle flows then leave that much
    after ``inactive_timeout`` (agent.stages.cache), else nothing (ipt_NETFLOW's line)."""
    lag_s = c.get("delivery_lag_s", 0)
    return f" (+{lag_s:g} s delivery lag)" if lag_s else ""


def _protocol_lines(snap: dict[str, Any]) -> list[str]:
    c = snap["cache"]
    tail = (f"Timeouts: active {c['active_timeout']}, inactive {c['inactive_timeout']}"
            f"{_lag_note(c)}. Maxflows {c.get('maxflows_limit', 0)}")
    lines = []
    for e in snap["exporters"] or [{"name": "none", "protocol": None}]:
        proto = e["protocol"]
        text = (f"Protocol version {proto} ({_PROTOCOL_NAMES.get(proto, proto)})"
                if proto is not None else f"Protocol {e.get('type', 'none')}")
        text += f" [{e['name']}]"
        if e.get("refresh_rate") is not None:
            text += f", refresh-rate {e['refresh_rate']}, timeout-rate {e['timeout_rate']}"
        if e.get("templates") is not None:
            text += f", (templates {e['templates']}, active {e['templates_active']})"
        lines.append(f"{text}. {tail}")
    return lines


def _rate_line(r: dict[str, float]) -> str:
    return (f"Rate: {r['bps']:.0f} bits/sec, {r['pps']:.0f} packets/sec; 1 min: "
            f"{r['bps_1m']:.0f} bps, {r['pps_1m']:.0f} pps; 5 min: {r['bps_5m']:.0f} bps, "
            f"{r['pps_5m']:.0f} pps")


def _sock_totals(snap: dict[str, Any]) -> tuple[int, int, int, int]:
    socks = snap["sockets"]
    return (sum(s.get("packets_ok", 0) for s in socks), sum(s.get("fail", 0) for s in socks),
            sum(s.get("cberr", 0) for s in socks), sum(s.get("bytes_ok", 0) for s in socks))


def _stat_lines(snap: dict[str, Any]) -> list[str]:
    c = snap["cache"]
    ok, fail, cberr, sent = _sock_totals(snap)
    lines = [
        "cpu# stat: <search found new [metric], trunc frag alloc maxflows>, "
        "sock: <ok fail cberr, bytes>, traffic: <pkt, bytes>, drop: <pkt, bytes>",
        f"Total stat: {c.get('search', 0)} {c.get('found', 0)} {c.get('new', 0)} "
        f"[{c['metric_avg']:.2f}], {c.get('trunc', 0)} {c.get('frag', 0)} {c.get('alloc', 0)} "
        f"{c.get('maxflows', 0)}, sock: {ok} {fail} {cberr}, {_k(sent)}, traffic: "
        f"{c.get('traffic_packets', 0)}, {_mb(c.get('traffic_bytes', 0))}, drop: "
        f"{c.get('drop_packets', 0)}, {_k(c.get('drop_bytes', 0))}",
    ]
    for name, stats in snap["components"].items():
        if name.startswith(("ingest.", "export.")) and isinstance(stats, dict):
            flat = [f"{k} {v}" for k, v in stats.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)]
            lines.append(f"{name}: {', '.join(flat) if flat else '-'}")
    return lines


def _sock_line(n: int, s: dict[str, Any]) -> str:
    where = f"sock{n}: {s['destination']}"
    if not s.get("connected", True):
        return f"{where} unconnected ({s.get('err_connect', 0)} attempts). [{s['exporter']}]"
    paced = (f", backlog {s.get('backlog', 0)} (peak {s.get('backlog_peak', 0)}, limit "
             f"{s.get('backlog_limit', 0)}, rate {s['rate_limit']}/s, dropped "
             f"{s.get('backlog_dropped', 0)})" if s.get("rate_limit") else "")
    return (f"{where}, sndbuf {s.get('sndbuf', 0)}, filled {s.get('filled', 0)}, peak "
            f"{s.get('peak', 0)}{paced}; err: sndbuf reached {s.get('err_sndbuf', 0)}, connect "
            f"{s.get('err_connect', 0)}, other {s.get('err_other', 0)} [{s['exporter']}]")
