"""Floods from many source addresses through NFLOG and eBPF with a small ``maxflows``.

A raw-socket sender in one namespace sends a bounded flood (count and time) of UDP packets
from thousands of source addresses to a peer namespace, where the agent observes them (an
nftables ``log group`` rule with a counter in prerouting, or the eBPF program on the veth).
The flow table is far smaller than the number of flows, so most packets must be dropped, and
counted. Checked on the real agent process:

* sent = accounted + counted drops, exactly (accounted = packets in exported flow records;
  drops = the cache's ``drop_packets``, which sums NFLOG sequence gaps, truncated packets,
  eBPF full-map packets and ``maxflows`` refusals), and the kernel saw exactly what was sent
  (nft rule counter, veth ``rx_packets``);
* every exported flow has exactly the packets its source sent;
* memory stays bounded (peak RSS growth during the flood, flows never above ``maxflows``);
* the agent stays responsive: ``agent stats`` (control socket) answers during the flood,
  and SIGTERM ends it promptly with everything exported.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.harness import exported_flows, flood
from tests.support.agentproc import Agent
from tests.support.netns import Netns, veth_pair

PACKETS = 60_000
SOURCES = 6_000
MAXFLOWS = 500
FIRST_SOURCE = "198.18.0.1"  # RFC 2544 benchmarking range; never routed back
DPORT = 7000
RSS_GROWTH_LIMIT_KB = 64 * 1024
STATS_LATENCY_LIMIT_S = 2.0


@pytest.fixture
def pair():
    with Netns() as a, Netns() as b:
        pair = veth_pair(a, b)
        b.sysctl({"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0",
                     f"net.ipv4.conf.{pair.b.ifname}.rp_filter": "0"})
        yield pair


def _config(workdir: Path, ingest: str) -> str:
    return f"""
[agent]
control_socket = "{{socket}}"
[cache]
maxflows = {MAXFLOWS}
inactive_timeout = 120
active_timeout = 1800
{ingest}
[[export.log]]
path = "{workdir / 'flows.jsonl'}"
format = "json"
"""


def _flood_while_polling(agent: Agent, sender: Netns, dst: str) -> dict[str, Any]:
    """Flood from ``sender`` while asking the agent for stats every 0.2 s."""
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(
        flood(sender, dst, DPORT, PACKETS, SOURCES, FIRST_SOURCE, limit_s=20)))
    thread.start()
    polls = 0
    while thread.is_alive():
        snap = agent.stats()
        assert snap["cache"]["active_flows"] <= MAXFLOWS
        polls += 1
        time.sleep(0.2)
    thread.join()
    result["polls"] = polls
    return result


def _check_accounting(agent: Agent, workdir: Path, sent: int, seen_by_kernel: int,
                      truth: dict[tuple[str, int], int], rss_before: int,
                      whole_flows: bool) -> dict[str, Any]:
    """Check the totals, memory and answer times; ``whole_flows``: a flow in the table has
    every packet of its source (NFLOG: only the cache refuses, and it refuses whole flows; with
    eBPF a full kernel map also refuses single packets of flows the cache already holds)."""
    assert seen_by_kernel == sent, f"the kernel saw {seen_by_kernel} of {sent} packets"
    snap = agent.settled_stats(lambda s: (s["cache"]["traffic_packets"],
                                          s["cache"]["drop_packets"]))
    cache = snap["cache"]
    peak_kb = agent.memory_kb()["VmHWM"]
    assert agent.stop() == 0
    assert agent.exit_seconds < 10, f"SIGTERM took {agent.exit_seconds:.1f} s"
    flows = [f for f in exported_flows(workdir / "flows.jsonl") if f["dst_port"] == DPORT]
    accounted = sum(f["packets"] for f in flows)
    figures = {"sent": sent, "accounted": accounted, "drops": cache["drop_packets"],
               "maxflows_drops": cache["maxflows"], "flows": len(flows),
               "peak_flows": cache["peak_flows"], "rss_growth_kb": peak_kb - rss_before,
               "stats_latency_max_s": round(max(agent.stats_latency), 3),
               "exit_s": round(agent.exit_seconds, 2)}
    print(json.dumps(figures))
    assert accounted == cache["traffic_packets"], figures
    assert accounted + cache["drop_packets"] == sent, figures
    assert 0 < len(flows) <= MAXFLOWS and cache["peak_flows"] <= MAXFLOWS, figures
    for f in flows:
        expected = truth[(f["src_addr"], f["src_port"])]
        assert f["packets"] == expected if whole_flows else 0 < f["packets"] <= expected, f
    assert peak_kb - rss_before < RSS_GROWTH_LIMIT_KB, figures
    assert max(agent.stats_latency) < STATS_LATENCY_LIMIT_S, figures
    return figures


def _nft_counter(ns: Netns) -> int:
    out = json.loads(ns.run(["nft", "-j", "list", "table", "inet", "nfaflood"]).stdout)
    for item in out["nftables"]:
        rule = item.get("rule")
        if rule:
            for expr in rule["expr"]:
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
    raise AssertionError("no counter in the flood table")


@pytest.mark.netns
def test_nflog_flood_small_maxflows(pair, tmp_path):
    a, b = pair.a, pair.b
    group = 40  # NFLOG groups are per network namespace
    b.ns.run(["nft", "-f", "-"], input=f"""
table inet nfaflood {{
  chain pre {{ type filter hook prerouting priority -300; policy accept;
    udp dport {DPORT} counter log group {group} snaplen 128 queue-threshold 64
  }}
}}
""")
    ingest = f'[[ingest.nflog]]\ngroup = {group}\nnetns = "{b.ns.name}"\nrcvbuf = 8388608\n'
    with Agent.in_dir(tmp_path, _config(tmp_path, ingest)) as agent:
        agent.start(ready="reading NFLOG group")
        rss_before = agent.memory_kb()["VmRSS"]
        result = _flood_while_polling(agent, a.ns, b.addr)
        assert result["failed"] == 0
        time.sleep(0.5)  # the rule's queue threshold and flush timeout
        print(f"flood: {result['sent']} packets in {result['seconds']:.2f} s")
        _check_accounting(agent, tmp_path, result["sent"], _nft_counter(b.ns), result["truth"],
                          rss_before, whole_flows=True)


@pytest.mark.netns
@pytest.mark.bpf
def test_ebpf_flood_small_maxflows(pair, tmp_path):
    a, b = pair.a, pair.b
    ingest = (f'[[ingest.ebpf]]\ninterfaces = ["{b.ifname}"]\nnetns = "{b.ns.name}"\n'
              f'mode = "tcx"\ndirection = "ingress"\nmaxflows = 1024\ncpu_slots = 16\n'
              f'poll_interval_ms = 100\n')
    with Agent.in_dir(tmp_path, _config(tmp_path, ingest)) as agent:
        agent.start(ready="attached")
        rx_before = _rx_packets(b)
        rss_before = agent.memory_kb()["VmRSS"]
        result = _flood_while_polling(agent, a.ns, b.addr)
        assert result["failed"] == 0
        print(f"flood: {result['sent']} packets in {result['seconds']:.2f} s")
        _check_accounting(agent, tmp_path, result["sent"], _rx_packets(b) - rx_before,
                          result["truth"], rss_before, whole_flows=False)


def _rx_packets(end: Any) -> int:
    return int(end.ns.run(["cat", f"/sys/class/net/{end.ifname}/statistics/rx_packets"])
               .stdout)
