"""End to end: generated captures with known flows, replayed by the real ``agent`` CLI."""

from __future__ import annotations

import json

import pytest

from netflow_agent.testing import build_agent, collecting_plugin_module
from tests.support.agentproc import run_agent
from tests.support.pcapgen import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    FlowSpec,
    PcapBuilder,
)
from tests.support.truth import FlowId, GroundTruth, record_table


def mixed_capture(builder: PcapBuilder) -> PcapBuilder:
    """IPv4 and IPv6; TCP, UDP, ICMP, ICMPv6; fragments; an extension header; a bad header."""
    builder.add(FlowSpec("udp", "10.1.0.1", "10.1.0.2", 5000, 53, packets=7, payload=33))
    builder.add(FlowSpec("tcp", "10.1.0.1", "10.1.0.3", 40000, 80, packets=9, payload=120))
    builder.add(FlowSpec("tcp", "10.1.0.3", "10.1.0.1", 80, 40000, packets=6, payload=1000))
    builder.add(FlowSpec("icmp", "10.1.0.1", "10.1.0.2", packets=4, payload=56))
    builder.add(FlowSpec("udp", "10.1.0.4", "10.1.0.2", 6000, 7000, packets=3, payload=3000,
                         fragment=1200))
    builder.add(FlowSpec("udp", "fd00::1", "fd00::2", 1111, 2222, packets=5, payload=10,
                         ext_headers=(0, 60)))
    builder.add(FlowSpec("tcp", "fd00::2", "fd00::1", 443, 50000, packets=8, payload=500))
    builder.add(FlowSpec("icmpv6", "fd00::1", "fd00::2", packets=3, payload=8, icmp_type=128))
    builder.add(FlowSpec("udp", "fd00::3", "fd00::2", 3000, 4000, packets=2, payload=2500,
                         fragment=1000))
    builder.add_truncated()
    return builder


def exported_table(lines: list[dict]) -> dict[FlowId, tuple[int, int]]:
    return record_table(lines)


@pytest.mark.parametrize("linktype,vlans,fmt", [
    (LINKTYPE_ETHERNET, (), "pcap"),
    (LINKTYPE_ETHERNET, (100,), "pcapng"),
    (LINKTYPE_ETHERNET, (100, 200), "pcap"),
    (LINKTYPE_LINUX_SLL, (), "pcap"),
    (LINKTYPE_LINUX_SLL2, (), "pcapng"),
    (LINKTYPE_RAW, (), "pcap"),
], ids=["eth", "vlan-pcapng", "qinq", "sll", "sll2-pcapng", "raw"])
def test_cli_replay_exports_every_flow_exactly(tmp_path, linktype, vlans, fmt):
    capture = tmp_path / f"mixed.{fmt}"
    truth = mixed_capture(PcapBuilder(linktype=linktype, vlans=vlans, fragments="track")).write(
        capture, fmt=fmt)
    out = tmp_path / "flows.jsonl"
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\ncontrol_socket = "{tmp_path / "agent.sock"}"\n'
                      f'[[ingest.pcap]]\npath = "{capture}"\n'
                      f'[[export.log]]\npath = "{out}"\nformat = "json"\n')
    proc = run_agent("-c", str(config))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert exported_table(lines) == truth.table()


def test_counters_frag_trunc_and_traffic(tmp_path):
    capture = tmp_path / "mixed.pcap"
    truth: GroundTruth = mixed_capture(PcapBuilder(fragments="track")).write(capture)
    agent = build_agent(f'[[ingest.pcap]]\npath = "{capture}"\n[[export.collect]]\n',
                        tmp_path, [collecting_plugin_module])
    agent.pipeline.run()
    stats = agent.pipeline.core_stats()
    agent.finish()
    assert (stats["trunc"], stats["frag"]) == (truth.trunc, truth.frag)
    assert (stats["traffic_packets"], stats["traffic_bytes"]) == (truth.packets, truth.bytes)
    assert stats["drop_packets"] == truth.trunc  # seed: trunc counts as dropped packets


def test_capture_clock_drives_timeouts(tmp_path):
    """Two bursts 60 s apart in capture time: the idle timeout splits the flow in two."""
    b = PcapBuilder(linktype=LINKTYPE_RAW)
    b.add(FlowSpec("udp", "10.2.0.1", "10.2.0.2", 1, 2, packets=3, start_ns=b.start_ns))
    b.add(FlowSpec("udp", "10.2.0.1", "10.2.0.2", 1, 2, packets=2,
                   start_ns=b.start_ns + 60 * 10**9))
    capture = tmp_path / "bursts.pcap"
    b.write(capture)
    agent = build_agent(f'[cache]\ninactive_timeout = 15\n[[ingest.pcap]]\npath = "{capture}"\n'
                        "[[export.collect]]\n", tmp_path, [collecting_plugin_module])
    agent.pipeline.run()
    agent.finish()
    flows = agent["export.collect[0]"].flows
    assert sorted(r.packets for r in flows) == [2, 3]
    assert [r.end_reason for r in flows] == [1, 4]  # idle, then forced at the end


def test_sigterm_while_waiting_for_a_frame_does_not_replay_it(tmp_path):
    """``speed = "recorded"``: stopped while the replay waits for a frame's time, that frame
    never came; it used to be replayed anyway, its future time moving the export clock ahead
    (here by ten minutes) in the shutdown export."""
    from tests.support.agentproc import Agent
    from tests.support.pcapgen import SAMPLE_EPOCH_NS

    builder = PcapBuilder()
    builder.add(FlowSpec("udp", "10.1.0.1", "10.1.0.2", 5000, 53, packets=3, payload=20,
                         start_ns=SAMPLE_EPOCH_NS))
    # a frame 1.5 s later hands the first batch over (a batch spans at most 1 s) ...
    builder.add(FlowSpec("udp", "10.1.0.1", "10.1.0.2", 5001, 53, payload=20,
                         start_ns=SAMPLE_EPOCH_NS + 1_500_000_000))
    expected = dict(builder.write(tmp_path / "played.pcap").table())
    # ... and one ten minutes later keeps the replay waiting until the stop
    builder.add(FlowSpec("udp", "10.1.0.1", "10.1.0.2", 5002, 53, payload=20,
                         start_ns=SAMPLE_EPOCH_NS + 600 * 10**9))
    builder.write(tmp_path / "t.pcap")
    out = tmp_path / "flows.jsonl"
    agent = Agent.in_dir(tmp_path, f"""
[agent]
control_socket = "{{socket}}"
[[ingest.pcap]]
path = "{tmp_path / 't.pcap'}"
speed = "recorded"
[[export.log]]
path = "{out}"
format = "json"
""")
    with agent:
        agent.start()
        agent.wait_for(lambda s: s["cache"]["traffic_packets"] >= 3, what="the first flow")
        assert agent.stop() == 0, agent.log()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert exported_table(lines) == expected
    assert max(r["end_ns"] for r in lines if r["type"] == "flow") < SAMPLE_EPOCH_NS + 2 * 10**9
