"""``agent stats`` (text and ``--json``) and the metrics endpoint against a running agent.

The capture is replayed at its recorded pace, so the agent is in a known state for a few
seconds: part A (t0 .. t0+0.4 s: UDP, TCP ending in FIN, a fragmented UDP flow, a truncated
packet, and one flow beyond ``maxflows``) and part B (t0+1.0 .. t0+1.5 s: one UDP flow) have
been accounted, a sentinel packet at t0+2.2 s arrives with the last one at t0+8 s. Every
figure of the report is computed here from what the capture contains.
"""

from __future__ import annotations

import math
import re
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from netflow_agent import __version__
from tests.ops.helpers import MS, T0, RunningAgent, cli, exported, table
from tests.support.pcapgen import FlowSpec, PcapBuilder
from tests.support.truth import FlowId, GroundTruth

F1 = FlowSpec("udp", "10.1.0.1", "10.1.0.2", 5000, 53, packets=7, payload=33, start_ns=T0,
              gap_ns=50 * MS)
F2 = FlowSpec("tcp", "10.1.0.1", "10.1.0.3", 40000, 80, packets=9, payload=120, start_ns=T0,
              gap_ns=40 * MS)  # ends with FIN: exported at the first scan
F3 = FlowSpec("udp", "10.1.0.4", "10.1.0.2", 6000, 7000, packets=2, payload=3000,
              fragment=1200, start_ns=T0 + 10 * MS, gap_ns=100 * MS)
F4 = FlowSpec("udp", "10.1.0.5", "10.1.0.2", 6001, 53, packets=3, payload=70,
              start_ns=T0 + 400 * MS, gap_ns=1 * MS)  # a new flow beyond maxflows: dropped
F5 = FlowSpec("udp", "10.1.0.6", "10.1.0.2", 6002, 53, packets=11, payload=100,
              start_ns=T0 + 1000 * MS, gap_ns=50 * MS)  # part B: t0+1.0 .. t0+1.5 s
SENTINEL = FlowSpec("udp", "10.1.0.9", "10.1.0.2", 9, 9, packets=1, start_ns=T0 + 2200 * MS)
LAST = FlowSpec("udp", "10.1.0.9", "10.1.0.2", 10, 10, packets=1, start_ns=T0 + 8000 * MS)
V5_HEADER, V5_RECORD = 24, 48


def truth_of(*specs: FlowSpec, trunc_at: int | None = None) -> GroundTruth:
    b = PcapBuilder(fragments="track")  # the agent's default [cache] fragments
    for spec in specs:
        b.add(spec)
    if trunc_at is not None:
        b.add_truncated(trunc_at)
    return b.truth


def write_capture(path: Path) -> GroundTruth:
    b = PcapBuilder(fragments="track")  # the agent's default [cache] fragments
    for spec in (F1, F2, F3, F4, F5, SENTINEL, LAST):
        b.add(spec)
    b.add_truncated(T0 + 100 * MS)
    return b.write(path)


class Expected:
    """Every figure of the report while the agent has seen parts A and B only."""

    def __init__(self) -> None:
        part_a = truth_of(F1, F2, F3, F4, trunc_at=T0 + 100 * MS)
        f4, f2, b = truth_of(F4), truth_of(F2), truth_of(F5)
        self.flows_a = len(part_a.table()) - 1  # every flow of A but F4 fits
        self.maxflows = self.flows_a
        self.search = part_a.packets + b.packets
        self.new = self.flows_a + 1
        self.maxflows_dropped = f4.packets
        self.found = self.search - self.new - self.maxflows_dropped
        self.trunc, self.frag = part_a.trunc, part_a.frag
        self.traffic_packets = part_a.packets - f4.packets + b.packets
        self.traffic_bytes = part_a.bytes - f4.bytes + b.bytes
        self.drop_packets = f4.packets + part_a.trunc
        self.drop_bytes = f4.bytes
        self.active = self.flows_a - 1 + 1  # F2 exported (FIN), F5 added
        self.memtraf = (self.traffic_packets - f2.packets, self.traffic_bytes - f2.bytes)
        self.pps, self.bps = b.packets / 0.5, b.bytes * 8 / 0.5  # B spans exactly 0.5 s
        self.metric = b.packets / (b.packets - 1)  # last tick: B's lookups per match
        self.exported = f2.table()


@pytest.fixture
def sink() -> Any:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    yield s
    s.close()


def closed_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def free_tcp_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def running(tmp_path: Path, sink: socket.socket) -> Any:
    capture = tmp_path / "known.pcap"
    write_capture(capture)
    exp = Expected()
    sock = tmp_path / "agent.sock"
    metrics_port = free_tcp_port()
    dead = closed_udp_port()
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
control_socket = "{sock}"
metrics_listen = "127.0.0.1:{metrics_port}"
scan_interval_ms = 100
[cache]
maxflows = {exp.maxflows}
[aggregate]
rules = "192.0.0.0/8=16,3128=80"
[[ingest.pcap]]
path = "{capture}"
speed = "recorded"
[[export.log]]
path = "{tmp_path / 'flows.jsonl'}"
[[export.netflow]]
destination = ["127.0.0.1:{sink.getsockname()[1]}", "127.0.0.1:{dead}"]
""")
    agent = RunningAgent(config, sock)
    yield agent, exp, metrics_port, sink
    if agent.proc.poll() is None:
        agent.stop()


def _in_window(snap: dict[str, Any], exp: Expected) -> bool:
    c = snap["cache"]
    return c["traffic_packets"] == exp.traffic_packets and snap["sockets"][1]["cberr"] >= 1


def test_stats_json_text_and_metrics_match_the_traffic(running: Any, tmp_path: Path) -> None:
    agent, exp, metrics_port, sink = running
    snap = agent.wait_for(lambda s: _in_window(s, exp), what="parts A and B accounted")
    check_snapshot(snap, exp)
    check_sockets(snap, sink)

    proc = cli("stats", "--socket", str(agent.socket))
    assert proc.returncode == 0, proc.stderr
    check_text(proc.stdout, exp)
    proc = cli("-c", str(agent.config), "stats", "--json")  # socket path from the config
    assert proc.returncode == 0, proc.stderr
    import json

    check_snapshot(json.loads(proc.stdout), exp)
    check_metrics(scrape(metrics_port), exp)
    assert agent.stats()["cache"]["traffic_packets"] == exp.traffic_packets, \
        "the capture moved on during the checks; the machine is too slow for this window"

    assert agent.wait_exit(30) == 0, agent.log()
    assert not agent.socket.exists()  # removed at exit
    flows = exported(tmp_path / "flows.jsonl")
    assert table(flows)[FlowId.make(6, "10.1.0.1", "10.1.0.3", 40000, 80)] == \
        exp.exported[FlowId.make(6, "10.1.0.1", "10.1.0.3", 40000, 80)]


def check_snapshot(snap: dict[str, Any], exp: Expected) -> None:
    c = snap["cache"]
    assert (c["search"], c["found"], c["new"]) == (exp.search, exp.found, exp.new)
    assert (c["trunc"], c["frag"], c["alloc"], c["maxflows"]) == \
        (exp.trunc, exp.frag, 0, exp.maxflows_dropped)
    assert (c["traffic_packets"], c["traffic_bytes"]) == (exp.traffic_packets, exp.traffic_bytes)
    assert (c["drop_packets"], c["drop_bytes"]) == (exp.drop_packets, exp.drop_bytes)
    assert (c["active_flows"], c["peak_flows"], c["maxflows_limit"]) == \
        (exp.active, exp.flows_a, exp.maxflows)
    assert (c["memtraf_packets"], c["memtraf_bytes"]) == exp.memtraf
    assert (c["active_timeout"], c["inactive_timeout"]) == (1800, 15)
    assert c["flows_mem_bytes"] > c["hash_mem_bytes"] > 0
    assert c["metric"] == pytest.approx(exp.metric)
    w4 = math.exp(-0.5 / 4)  # ticks at t0+1.0 (no lookups: 1.0) then t0+1.5 (B)
    assert c["metric_ewma"]["4s"] == pytest.approx(1.0 * w4 + exp.metric * (1 - w4))
    assert c["metric_avg"] == pytest.approx(exp.search / exp.found)
    r = snap["rates"]
    assert (r["pps"], r["bps"]) == (pytest.approx(exp.pps), pytest.approx(exp.bps))
    w1 = math.exp(-0.5 / 60)
    assert r["pps_1m"] == pytest.approx(exp.pps * (1 - w1))
    a = snap["agent"]
    assert a["last_scan_interval_ms"] == pytest.approx(500)
    assert (a["reloads"], a["reload_failures"], a["hook_errors"]) == (0, 0, {})
    assert snap["aggregation"] == ["192.0.0.0/8=16", "3128=80"]
    assert snap["natevents"] == {"enabled": False, "start": 0, "stop": 0}
    assert [e["protocol"] for e in snap["exporters"]] == [None, 5]
    pcap = snap["components"]["ingest.pcap[0]"]  # F3's 2 datagrams, 3 fragments each, in order
    assert (pcap["frag_tracked"], pcap["frag_held"], pcap["frag_unmatched"]) == (4, 0, 0)
    assert pcap["non_ip"] == 0 and pcap["non_ip_reasons"] == {}


def check_sockets(snap: dict[str, Any], sink: socket.socket) -> None:
    datagrams = []
    try:
        while True:
            datagrams.append(sink.recv(65535))
    except TimeoutError:
        pass
    assert [len(d) for d in datagrams] == [V5_HEADER + V5_RECORD]  # F2, one v5 record
    live, dead = snap["sockets"]
    assert (live["packets_ok"], live["bytes_ok"], live["fail"], live["cberr"]) == \
        (1, V5_HEADER + V5_RECORD, 0, 0)
    assert (dead["packets_ok"], dead["fail"], dead["cberr"]) == (1, 0, 1)
    assert live["connected"] and live["sndbuf"] > 0 and live["peak"] >= live["filled"] >= 0
    # paced export (default rate_limit): the backlog is in the snapshot, empty once sent
    assert (live["rate_limit"], live["backlog"], live["backlog_dropped"]) == (3000, 0, 0)
    assert live["paced"] == live["backlog_peak"] == 1


def check_text(text: str, exp: Expected) -> None:
    lines = text.splitlines()
    flows = next(line for line in lines if line.startswith("Flows:"))
    assert re.match(rf"Flows: active {exp.active} \(peak {exp.flows_a} reached 0d0h0m ago, "
                    rf"maxflows {exp.maxflows}\), mem \d+K, worker delay 100/1000 "
                    r"\(last 500 ms\)\.$", flows), flows
    hash_line = next(line for line in lines if line.startswith("Hash:"))
    assert re.match(rf"Hash: size \d+ \(mem \d+K\), metric {exp.metric:.2f}, "
                    r"\[\d\.\d\d, 1\.00, 1\.00, 1\.00\]\. "
                    rf"MemTraf: {exp.memtraf[0]} pkt, {exp.memtraf[1] // 1024}K \(pdu 0, 0\)\.$",
                    hash_line), hash_line
    assert (f"Protocol version 5 (netflow v5) [export.netflow[0]], refresh-rate 20, "
            f"timeout-rate 30. Timeouts: active 1800, inactive 15. Maxflows {exp.maxflows}"
            ) in lines
    assert (f"Rate: {exp.bps:.0f} bits/sec, {exp.pps:.0f} packets/sec; 1 min: "
            f"{exp.bps * (1 - math.exp(-0.5 / 60)):.0f} bps, "
            f"{exp.pps * (1 - math.exp(-0.5 / 60)):.0f} pps; 5 min: "
            f"{exp.bps * (1 - math.exp(-0.5 / 300)):.0f} bps, "
            f"{exp.pps * (1 - math.exp(-0.5 / 300)):.0f} pps") in lines
    total = (f"Total stat: {exp.search} {exp.found} {exp.new} [{exp.search / exp.found:.2f}], "
             f"{exp.trunc} {exp.frag} 0 {exp.maxflows_dropped}, sock: 2 0 1, 0K, traffic: "
             f"{exp.traffic_packets}, 0 MB, drop: {exp.drop_packets}, "
             f"{exp.drop_bytes // 1024}K")
    assert total in lines, text
    assert "Natevents disabled, count start 0, stop 0." in lines
    socks = [line for line in lines if line.startswith("sock")]
    assert len(socks) == 2 and all(", sndbuf " in s and "; err: sndbuf reached 0, connect 0, "
                                   "other 0 [export.netflow[0]]" in s for s in socks), socks
    assert all(", backlog 0 (peak 1, limit 30000, rate 3000/s, dropped 0);" in s
               for s in socks), socks
    assert lines[-2:] == ["aggr0: 192.0.0.0/8=16", "aggr1: 3128=80"]
    assert any(line.startswith("ingest.pcap[0]: packets ") for line in lines)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        body = resp.read().decode()
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def check_metrics(m: dict[str, float], exp: Expected) -> None:
    p = "netflow_agent_"
    assert m[p + "traffic_packets_total"] == exp.traffic_packets
    assert m[p + "traffic_bytes_total"] == exp.traffic_bytes
    assert m[p + "drop_packets_total"] == exp.drop_packets
    assert m[p + "drop_bytes_total"] == exp.drop_bytes
    assert m[p + "cache_searches_total"] == exp.search
    assert m[p + "cache_found_total"] == exp.found
    assert m[p + "cache_new_flows_total"] == exp.new
    assert m[p + "maxflows_dropped_packets_total"] == exp.maxflows_dropped
    assert (m[p + "truncated_packets_total"], m[p + "fragments_total"]) == (exp.trunc, exp.frag)
    assert m[p + "flows_active"] == exp.active
    assert m[p + "flows_peak"] == exp.flows_a
    assert (m[p + "memtraf_packets"], m[p + "memtraf_bytes"]) == exp.memtraf
    assert m[p + 'rate_packets_per_second{window="1s"}'] == pytest.approx(exp.pps)
    assert m[p + 'hash_metric{window="now"}'] == pytest.approx(exp.metric)
    dests = {k: v for k, v in m.items() if k.startswith(p + "export_datagrams_total{")}
    assert sorted(dests.values()) == [1.0, 1.0]
    assert sum(v for k, v in m.items() if k.startswith(p + "export_cberr_total{")) == 1
    # the paced backlog per destination (sock lines: backlog 0, peak 1): gauges, not counters
    for name, want in (("export_backlog_datagrams{", 0), ("export_backlog_peak_datagrams{", 1),
                       ("export_paced_datagrams_total{", 1),
                       ("export_backlog_dropped_datagrams_total{", 0)):
        assert sorted(v for k, v in m.items() if k.startswith(p + name)) == [want, want], name
    assert m[p + 'component_value{component="export.netflow[0]",stat="backlog"}'] == 0
    assert m[p + 'reloads_total{result="ok"}'] == 0
    assert m[p + 'component_events_total{component="export.log[0]",stat="written"}'] == 1
    assert m[p + 'component_setting{component="export.netflow[0]",setting="protocol"}'] == 5
    assert m[p + 'component_events_total{component="ingest.pcap[0]",stat="packets"}'] >= 30
    assert not any(k.startswith(p + "component_stat") for k in m)  # the old mixed family
    assert T0 / 1e9 <= m[p + "flows_peak_timestamp_seconds"] <= T0 / 1e9 + 1
    assert m[p + "reload_last_success"] == 1
    assert m[p + f'build_info{{version="{__version__}"}}'] == 1
    assert m["process_resident_memory_bytes"] > 0 and m["process_cpu_seconds_total"] > 0


def test_stats_without_agent_fails_clearly(tmp_path: Path) -> None:
    proc = cli("stats", "--socket", str(tmp_path / "none.sock"))
    assert proc.returncode == 1
    assert "no such socket" in proc.stderr
    started = time.monotonic()
    proc = cli("reload", "--socket", str(tmp_path / "none.sock"))
    assert proc.returncode == 1 and time.monotonic() - started < 20
