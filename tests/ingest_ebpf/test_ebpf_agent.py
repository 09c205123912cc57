"""Privileged end-to-end tests: the real ``agent`` binary with ``[[ingest.ebpf]]``.

Known traffic crosses a veth observed by the agent (attached inside the namespace through
``netns =``); the ``[[export.log]]`` JSON lines must show exactly the packets and IP bytes
that were sent. Nothing waits a fixed time: the traffic helpers return once the peer got
every packet, and SIGTERM drains the kernel tables. The NetFlow export is mirrored to a tap
that checks the export clock of every packet (tests/support/exportclock.py). After SIGTERM,
neither ``bpftool prog show`` nor ``tc filter show`` may show anything of ours; after SIGKILL
(a crash) the next start must work and clean up.
"""

from __future__ import annotations

import ast
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.export_ipfix.helpers import decodable
from tests.support import require_tool
from tests.support.agentproc import Agent
from tests.support.collectors import (
    Nfcapd,
    cflow_records,
    flow_table,
    netflow_decode,
    netflow_records,
    tshark_decode,
)
from tests.support.exportclock import clock_tap
from tests.support.netns import (
    Netns,
    send_icmp_echo,
    send_udp,
    set_offloads,
    tcp_connections,
)
from tests.support.truth import FlowId, record_table

pytestmark = pytest.mark.bpf


@pytest.fixture
def pair(veth_pair_ns):
    """Name: pair. Scope: function. The shared quiet veth pair (tests/support/netns.py)."""
    return veth_pair_ns


def write_config(tmp: Path, ns: str, ifname: str, mode: str,
                 export: str = "") -> tuple[Path, Path]:
    out = tmp / "flows.jsonl"
    conf = tmp / "agent.toml"
    export = export or f'[[export.log]]\npath = "{out}"\nformat = "json"\n'
    conf.write_text(f"""
[agent]
control_socket = "{tmp / 'agent.sock'}"

[cache]
inactive_timeout = 60
active_timeout = 1800

[[ingest.ebpf]]
interfaces = ["{ifname}"]
netns = "{ns}"
mode = "{mode}"
poll_interval_ms = 100

{export}
""")
    return conf, out


def start_agent(conf: Path, log: Path,
                socket: Path | None = None) -> tuple[Agent, dict[str, int]]:
    """Start the agent (``socket``: its control socket, for stats); return it and the BPF
    program ids it logged once attached."""
    agent = Agent(conf, socket, log_path=log).start(ready="attached")
    text = agent.log()
    found = re.search(r"loaded BPF programs (\{.*?\})", text)
    assert found, text
    return agent, ast.literal_eval(found.group(1))


def stop_agent(agent: Agent) -> None:
    """SIGTERM by PID; the agent must exit 0 (it detaches everything first)."""
    assert agent.stop() == 0, agent.log()


def exported(out: Path) -> dict[FlowId, tuple[int, int]]:
    records = map(json.loads, out.read_text().splitlines())
    return record_table(r for r in records if r.get("type") == "flow")


def bpf_prog_ids() -> set[int]:
    out = subprocess.run([require_tool("bpftool"), "-j", "prog", "show"], check=True,
                         capture_output=True, text=True).stdout
    return {p["id"] for p in json.loads(out)}


def tc_state(ns: Netns, ifname: str) -> str:
    filters = "".join(ns.run(["tc", "filter", "show", "dev", ifname, d]).stdout
                      for d in ("ingress", "egress"))
    qdisc = ns.run(["tc", "qdisc", "show", "dev", ifname]).stdout
    return filters + ("clsact" if "clsact" in qdisc else "")


def test_agent_exports_exact_flows_and_leaves_nothing(pair, tmp_path):
    a, b = pair.a, pair.b
    conf, out = write_config(tmp_path, b.ns.name, b.ifname, "tcx")
    proc, ids = start_agent(conf, tmp_path / "agent.log")
    try:
        assert set(ids.values()) <= bpf_prog_ids()
        truth = send_udp(a.ns, b.addr, 9000, 12, 200, peer=b.ns).truth
        truth.merge(send_udp(a.ns, b.addr6, 9001, 5, 40, peer=b.ns, tos=0x48).truth)
        truth.merge(send_icmp_echo(a.ns, b.addr, 3).truth)
        truth.merge(send_icmp_echo(a.ns, b.addr6, 2, 100).truth)
    finally:
        stop_agent(proc)
    assert exported(out) == truth.table()
    assert not set(ids.values()) & bpf_prog_ids()
    assert tc_state(b.ns, b.ifname) == ""


def test_a_stop_after_the_kernel_went_quiet_exports_every_flow_and_leaves_nothing(
        pair, tmp_path):
    """The stop after the timer took the kernel for quiet (it skipped a drain) still drains
    both tables: every flow is exported exactly once, the exit is clean, and no program or
    filter is left."""
    a, b = pair.a, pair.b
    conf, out = write_config(tmp_path, b.ns.name, b.ifname, "tcx")
    proc, ids = start_agent(conf, tmp_path / "agent.log", tmp_path / "agent.sock")
    try:
        truth = send_udp(a.ns, b.addr, 9000, 7, 120, peer=b.ns).truth
        truth.merge(send_icmp_echo(a.ns, b.addr6, 2, 64).truth)
        proc.wait_for(lambda s: s["components"]["ingest.ebpf[0]"]["quiet_skips"] >= 1,
                      what="a skipped timer drain (the kernel known to be empty)")
    finally:
        stop_agent(proc)
    assert exported(out) == truth.table()
    assert not set(ids.values()) & bpf_prog_ids()
    assert tc_state(b.ns, b.ifname) == ""


def test_tc_mode_survives_a_crash(pair, tmp_path):
    """SIGKILL leaves a tc filter behind; the next start replaces it and SIGTERM removes all."""
    a, b = pair.a, pair.b
    conf, out = write_config(tmp_path, b.ns.name, b.ifname, "tc")
    proc, _ = start_agent(conf, tmp_path / "agent1.log")
    proc.signal(signal.SIGKILL)
    proc.wait_exit(timeout=10)
    assert "handle 0x4e4641" in tc_state(b.ns, b.ifname)  # the crash's leftover
    proc, ids = start_agent(conf, tmp_path / "agent2.log")
    try:
        filters = tc_state(b.ns, b.ifname)
        assert filters.count("handle 0x4e4641") == 2  # one per direction: replaced, not added
        truth = send_udp(a.ns, b.addr, 9002, 6, 80, peer=b.ns).truth
    finally:
        stop_agent(proc)
    assert exported(out) == truth.table()
    assert "0x4e4641" not in tc_state(b.ns, b.ifname)
    assert not set(ids.values()) & bpf_prog_ids()


def test_agent_netflow_v9_to_nfcapd_exact(pair, tmp_path):
    """nfdump, an independent decoder, shows exactly the packets and bytes that were sent;
    the PyPI ``netflow`` package and tshark agree, for v9 and for IPFIX, and see the
    interfaces and direction each packet was observed with."""
    a, b = pair.a, pair.b
    set_offloads(a, False)  # wire-sized TCP segments: the capture truth is per segment
    set_offloads(b, False)
    with (Nfcapd(tmp_path / "nfcapd") as cap, clock_tap() as tap,  # every packet's clock
          clock_tap() as ipfix_tap):
        export = (f'[[export.netflow]]\ndestination = ["127.0.0.1:{cap.port}", '
                  f'"{tap.endpoint}"]\nprotocol = 9\n\n'
                  f'[[export.ipfix]]\ndestination = ["{ipfix_tap.endpoint}"]\n')
        conf, _ = write_config(tmp_path, b.ns.name, b.ifname, "tcx", export)
        proc, ids = start_agent(conf, tmp_path / "agent.log")
        try:
            truth = send_udp(a.ns, b.addr, 9100, 9, 500, peer=b.ns).truth
            truth.merge(send_udp(a.ns, b.addr6, 9101, 4, 1000, peer=b.ns).truth)
            truth.merge(send_icmp_echo(a.ns, b.addr6, 3).truth)
            truth.merge(tcp_connections(a.ns, b.ns, b.addr, 7200, 2, 30000).truth)
        finally:
            stop_agent(proc)
        records = cap.flows()
        streams = {"v9": (tap.collect(), tap.port), "ipfix": (ipfix_tap.collect(),
                                                              ipfix_tap.port)}
    expected = {f[1:]: v for f, v in truth.table().items()}
    assert flow_table(records) == expected
    assert not set(ids.values()) & bpf_prog_ids()
    for name, (datagrams, port) in streams.items():  # the other two decoders, both formats
        _, flows = netflow_decode(decodable(datagrams) if name == "ipfix" else datagrams)
        decoded = netflow_records(flows)
        assert flow_table(decoded) == expected, name
        for rec in decoded:  # observed on b: what a sent came in, what b sent went out
            raw = rec["raw"]
            where = tuple(raw.get(k) for k in (("INPUT_SNMP", "OUTPUT_SNMP", "DIRECTION")
                          if name == "v9" else ("ingressInterface", "egressInterface",
                                                "flowDirection")))
            incoming = rec["src"] in (a.addr, a.addr6)
            assert where == ((b.ifindex, 0, 0) if incoming else (0, b.ifindex, 1)), rec
        cflow = cflow_records(tshark_decode(datagrams, port))
        assert sum(int(r.get("cflow.packets", r.get("cflow.packets64", 0))) for r in cflow
                   ) == sum(p for p, _ in expected.values()), name


def test_aggregation_rules_fold_kernel_deltas_into_one_flow(pair, tmp_path):
    """``[cache] aggregation`` on the eBPF path: three UDP flows to ports 9200-9202 from
    ephemeral source ports become one flow (addresses cut to /8), exact packets and bytes,
    one active flow while they run, masks /8 on the exported record."""
    a, b = pair.a, pair.b
    conf, out = write_config(tmp_path, b.ns.name, b.ifname, "tcx")
    conf.write_text(conf.read_text().replace(
        "active_timeout = 1800\n",
        'active_timeout = 1800\naggregation = ["0.0.0.0/0=8", "9200-9209=9200", '
        '"1024-65535=1024"]\n'))
    proc, _ = start_agent(conf, tmp_path / "agent.log", tmp_path / "agent.sock")
    try:
        truth = send_udp(a.ns, b.addr, 9200, 7, 100, peer=b.ns).truth
        truth.merge(send_udp(a.ns, b.addr, 9201, 5, 300, peer=b.ns).truth)
        truth.merge(send_udp(a.ns, b.addr, 9202, 3, 50, peer=b.ns).truth)
        packets = sum(p for p, _ in truth.table().values())
        snap = proc.wait_for(lambda s: s["cache"]["traffic_packets"] >= packets,
                             what="the three flows drained")
        assert (snap["cache"]["active_flows"], snap["cache"]["new"]) == (1, 1)
    finally:
        stop_agent(proc)
    records = [r for r in map(json.loads, out.read_text().splitlines()) if r.get("type") == "flow"]
    cut = [f"{addr.split('.')[0]}.0.0.0" for addr in (a.addr, b.addr)]
    total = tuple(map(sum, zip(*truth.table().values(), strict=True)))
    assert exported(out) == {FlowId.make(17, cut[0], cut[1], 1024, 9200): total}
    assert [(r["src_mask"], r["dst_mask"]) for r in records] == [(8, 8)]


def test_a_pause_just_under_the_inactive_timeout_is_one_flow_record(pair, tmp_path):
    """A packet waits in the kernel table up to a poll interval, and the cache used to call
    a flow idle ``inactive_timeout`` after its last packet whatever was still waiting there:
    a flow pausing for between the timeout less the poll interval and the timeout was
    exported as idle, its next packet starting a second record (ipt_NETFLOW, in the kernel,
    never splits a flow so). With the ingest's delivery lag declared, the cache waits for it:
    one record of both packets. Here the timeout is 2 s, the period 1 s, the pause 1.9 s."""
    a, b = pair.a, pair.b
    conf, out = write_config(tmp_path, b.ns.name, b.ifname, "tcx")
    text = conf.read_text().replace("inactive_timeout = 60", "inactive_timeout = 2")
    text = text.replace("poll_interval_ms = 100", "poll_interval_ms = 1000")
    conf.write_text(text.replace("[agent]\n", "[agent]\nscan_interval_ms = 50\n"))
    proc, _ = start_agent(conf, tmp_path / "agent.log", tmp_path / "agent.sock")
    try:
        truth = send_udp(a.ns, b.addr, 9000, 1, 100, peer=b.ns, sport=40000).truth
        time.sleep(1.9)  # the pause under test, not a wait for the agent
        truth.merge(send_udp(a.ns, b.addr, 9000, 1, 100, peer=b.ns, sport=40000).truth)
        proc.wait_for(lambda s: s["cache"]["active_flows"] == 0
                      and s["cache"]["traffic_packets"] >= 2, timeout=20,
                      what="the flow exported as idle")
    finally:
        stop_agent(proc)
    records = [r for r in map(json.loads, out.read_text().splitlines())
               if r.get("type") == "flow" and r.get("dst_port") == 9000]
    assert len(records) == 1, records
    assert record_table(records) == truth.table()
