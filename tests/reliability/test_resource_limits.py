"""The agent under a hard memory limit and with a tiny socket send buffer: it counts, never dies.

Topology: sender ``a`` -- ``b`` (the agent, NFLOG) -- ``c`` (a NetFlow collector). The agent
runs inside ``b`` under ``prlimit --as`` (address space: the kernel refuses any allocation
beyond it, so the process cannot exceed it). The limit is the agent's own address-space peak at
idle plus ``HEADROOM``; ``maxflows`` is sized from that headroom with a generous bound on the
bytes a flow costs, so a full table fits with room to spare. A flood brings more flows than
``maxflows``; ``inactive_timeout = 1`` exports them while the agent runs. The NetFlow
destination has ``sndbuf = 2048`` and its link a ``tbf`` rate limit, so the socket buffer
really fills (on loopback or plain veth it never does: the skb leaves the socket's account at
once).

Checked: exit code 0 and no traceback or MemoryError; sent = accounted + counted drops exactly;
``err_sndbuf`` and ``lost_records`` count what the full buffer refused; the collector never got
more datagrams than the agent counted as sent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.harness import exported_flows, flood
from tests.support.agentproc import Agent
from tests.support.collectors import UdpSink
from tests.support.exportclock import assert_export_clock
from tests.support.netns import Netns, veth_pair

HEADROOM = 96 << 20
BYTES_PER_FLOW_BOUND = 512  # docs/performance.md (bench/cache: 98 B) is well under this
MAXFLOWS = HEADROOM // (4 * BYTES_PER_FLOW_BOUND)  # 49152: a full table uses <= 1/4 headroom
SOURCES = MAXFLOWS + 10_000
PACKETS = 2 * SOURCES
DPORT = 7000


def _conf(tmp: Path, group: int, collector: str) -> str:
    return f"""
[agent]
control_socket = "{{socket}}"
[cache]
maxflows = {MAXFLOWS}
inactive_timeout = 1
[[ingest.nflog]]
group = {group}
rcvbuf = 8388608
[[export.log]]
path = "{tmp / 'flows.jsonl'}"
format = "json"
[[export.netflow]]
destination = ["{collector}"]
protocol = 9
sndbuf = 2048
"""


def _vm_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@pytest.mark.netns
def test_memory_limit_and_tiny_sndbuf(tmp_path):
    with Netns() as a, Netns() as b, Netns() as c:
        ab, bc = veth_pair(a, b), veth_pair(b, c)
        b.sysctl({"net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0",
                  f"net.ipv4.conf.{ab.b.ifname}.rp_filter": "0"})
        b.run(["tc", "qdisc", "add", "dev", bc.a.ifname, "root", "tbf", "rate", "2mbit",
               "burst", "3000", "limit", "20000"])
        group = 41
        b.run(["nft", "-f", "-"], input=f"""
table inet nfalimit {{
  chain pre {{ type filter hook prerouting priority -300; policy accept;
    udp dport {DPORT} counter log group {group} snaplen 128 queue-threshold 64
  }}
}}
""")
        with UdpSink(host=bc.b.addr, netns=c) as sink:
            conf = _conf(tmp_path, group, f"{bc.b.addr}:{sink.port}")
            in_b = ["ip", "netns", "exec", b.name]
            (tmp_path / "probe").mkdir()
            with Agent.in_dir(tmp_path / "probe", conf, prefix=in_b) as probe:
                probe.start(ready="reading NFLOG group")
                idle_peak_kb = _vm_kb(probe.proc.pid, "VmPeak")  # type: ignore[union-attr]
                assert probe.stop() == 0
            limit = idle_peak_kb * 1024 + HEADROOM
            prefix = [*in_b, "prlimit", f"--as={limit}"]
            with Agent.in_dir(tmp_path, conf, prefix=prefix) as agent:
                agent.start(ready="reading NFLOG group")
                result = flood(a, ab.b.addr, DPORT, PACKETS, SOURCES, "198.18.0.1", limit_s=30)
                assert result["failed"] == 0
                # inactive_timeout 1 s: every flow is exported while the agent runs
                agent.wait_for(lambda s: s["cache"]["active_flows"] == 0, timeout=60,
                               what="every flow expired")
                snap = agent.settled_stats(_progress, quiet=1.5)
                peak_kb = _vm_kb(agent.proc.pid, "VmPeak")  # type: ignore[union-attr]
                code = agent.stop()
                log = agent.log()
            datagrams = sink.collect()  # the agent stopped: all it sent is queued
            received = len(datagrams)
    assert_export_clock(datagrams, lossy=True)  # the tiny sndbuf loses datagrams
    cache = snap["cache"]
    flows = [f for f in exported_flows(tmp_path / "flows.jsonl") if f["dst_port"] == DPORT]
    accounted = sum(f["packets"] for f in flows)
    (sock,) = [s for s in snap["sockets"] if s["exporter"].startswith("export.netflow")]
    figures = {"limit_mb": limit >> 20, "idle_peak_mb": idle_peak_kb >> 10,
               "peak_mb": peak_kb >> 10, "maxflows": MAXFLOWS, "sent": result["sent"],
               "accounted": accounted, "drops": cache["drop_packets"],
               "peak_flows": cache["peak_flows"], "exported_records": len(flows),
               "sock": {k: sock[k] for k in ("packets_ok", "fail", "err_sndbuf",
                                             "lost_records", "sndbuf", "peak")},
               "received": received, "exit": code, "exit_s": round(agent.exit_seconds, 2)}
    print(json.dumps(figures))
    assert code == 0, log
    assert "Traceback" not in log and "MemoryError" not in log, log
    assert peak_kb * 1024 <= limit
    assert accounted + cache["drop_packets"] == result["sent"], figures
    assert cache["drop_packets"] > 0 and cache["peak_flows"] <= MAXFLOWS, figures
    assert sock["err_sndbuf"] > 0 and 0 < sock["lost_records"] < len(flows), figures
    assert sock["fail"] >= sock["err_sndbuf"] and received <= sock["packets_ok"], figures
    assert agent.exit_seconds < 15, figures


def _progress(snap: dict) -> tuple:
    """Counters that move while packets are accounted and records exported."""
    cache = snap["cache"]
    socks = [(s["packets_ok"], s["fail"]) for s in snap["sockets"]]
    return (cache["traffic_packets"], cache["drop_packets"], cache["active_flows"],
            snap["agent"]["exported_flows"], socks)
