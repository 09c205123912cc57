"""Restart with ``[agent] state_file``: flows active at SIGTERM are saved, not exported, and
exported once after the next start with packets and bytes of both runs summed."""

from __future__ import annotations

import re
from pathlib import Path

from tests.ops.helpers import MS, T0, RunningAgent, count_by_flow, exported, table
from tests.support.pcapgen import FlowSpec, PcapBuilder
from tests.support.truth import FlowId

CONFIG = """
[agent]
control_socket = "{sock}"
state_file = "{state}"
scan_interval_ms = 100
[[ingest.pcap]]
path = "{capture}"
speed = "{speed}"
[[export.log]]
path = "{out}"
"""
ACK = 0x10
A1 = FlowSpec("udp", "10.3.0.1", "10.3.0.2", 1000, 2000, packets=10, payload=50, start_ns=T0,
              gap_ns=20 * MS)
A2 = FlowSpec("tcp", "10.3.0.3", "10.3.0.2", 40000, 443, packets=5, payload=500, tcp_flags=ACK,
              start_ns=T0, gap_ns=30 * MS)
FILLER = FlowSpec("udp", "10.3.0.9", "10.3.0.2", 9, 9, packets=240, payload=10,
                  start_ns=T0 + 500 * MS, gap_ns=250 * MS)  # keeps run 1 busy for 60 s
B1 = FlowSpec("udp", "10.3.0.1", "10.3.0.2", 1000, 2000, packets=4, payload=50,
              start_ns=T0 + 5000 * MS, gap_ns=20 * MS)
B2 = FlowSpec("tcp", "10.3.0.3", "10.3.0.2", 40000, 443, packets=3, payload=500, tcp_flags=ACK,
              start_ns=T0 + 5000 * MS, gap_ns=30 * MS)


def capture(path: Path, *specs: FlowSpec) -> dict[FlowId, tuple[int, int]]:
    b = PcapBuilder()
    for spec in specs:
        b.add(spec)
    return b.write(path).table()


def test_flows_survive_a_restart_and_are_exported_once_summed(tmp_path: Path) -> None:
    state, sock = tmp_path / "state" / "flows.state", tmp_path / "a.sock"
    state.parent.mkdir()
    truth_a = capture(tmp_path / "a.pcap", A1, A2, FILLER)
    truth_b = capture(tmp_path / "b.pcap", B1, B2)
    f1, f2 = A1.flow_id(), A2.flow_id()

    config1 = tmp_path / "run1.toml"
    config1.write_text(CONFIG.format(sock=sock, state=state, capture=tmp_path / "a.pcap",
                                     speed="recorded", out=tmp_path / "run1.jsonl"))
    run1 = RunningAgent(config1, sock)
    known = truth_a[f1][0] + truth_a[f2][0]
    run1.wait_for(lambda s: s["cache"]["traffic_packets"] > known, what="A1 and A2 accounted")
    assert run1.stop() == 0, run1.log()
    saved = re.search(r"saved (\d+) flows \((\d+) packets, (\d+) bytes\)", run1.log())
    assert saved, run1.log()
    flows, packets, octets = map(int, saved.groups())
    assert flows == 3 and state.exists() and (state.stat().st_mode & 0o777) == 0o600
    assert exported(tmp_path / "run1.jsonl") == []  # saved, not exported
    filler = (packets - known, octets - truth_a[f1][1] - truth_a[f2][1])

    config2 = tmp_path / "run2.toml"
    config2.write_text(CONFIG.format(sock=sock, state=state, capture=tmp_path / "b.pcap",
                                     speed="max", out=tmp_path / "run2.jsonl"))
    run2 = RunningAgent(config2, sock)
    assert run2.wait_exit(30) == 0, run2.log()
    assert "restored 3 flows" in run2.log()
    assert not state.exists()  # consumed: a crash later cannot export these twice
    records = exported(tmp_path / "run2.jsonl")
    assert count_by_flow(records) == {f1: 1, f2: 1, FILLER.flow_id(): 1}
    got = table(records)
    assert got[f1] == (truth_a[f1][0] + truth_b[f1][0], truth_a[f1][1] + truth_b[f1][1])
    assert got[f2] == (truth_a[f2][0] + truth_b[f2][0], truth_a[f2][1] + truth_b[f2][1])
    assert got[FILLER.flow_id()] == filler
    first = next(r for r in records if r["src_port"] == 1000)
    assert first["start_ns"] == T0  # the flow's start time from before the restart


def test_sigterm_without_state_file_exports_everything(tmp_path: Path) -> None:
    sock = tmp_path / "a.sock"
    truth = capture(tmp_path / "a.pcap", A1, A2, FILLER)
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(sock=sock, state="", capture=tmp_path / "a.pcap",
                                    speed="recorded", out=tmp_path / "out.jsonl")
                      .replace('state_file = ""\n', ""))
    agent = RunningAgent(config, sock)
    known = truth[A1.flow_id()][0] + truth[A2.flow_id()][0]
    agent.wait_for(lambda s: s["cache"]["traffic_packets"] > known, what="A1 and A2")
    assert agent.stop() == 0
    got = table(exported(tmp_path / "out.jsonl"))
    assert got[A1.flow_id()] == truth[A1.flow_id()] and got[A2.flow_id()] == truth[A2.flow_id()]
