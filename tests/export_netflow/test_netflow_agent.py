"""The real ``agent`` CLI replays a generated pcap and exports v5 and v9 to real collectors.

One config, two instances: v5 to one nfcapd (plus a raw sink), v9 mirrored to two nfcapd
collectors plus a raw sink. nfdump must list exactly the ground
truth (flows, packets, bytes, first/last times); tshark must find nothing malformed; the
``netflow`` package must parse the same records; sequence numbers and times are checked on the
wire. Loopback only, no root needed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.export_netflow.collect import (
    Nfcapd,
    UdpSink,
    decode,
    tshark_problems,
    write_capture,
)
from tests.support.agentproc import Agent, run_agent
from tests.support.collectors import free_udp_port
from tests.support.exportclock import assert_export_clock
from tests.support.pcapgen import MIXED_FLOWS, SAMPLE_EPOCH_NS, FlowSpec, PcapBuilder

GAP_NS = 3_000_000  # 3 ms between packets of a flow
SPECS = list(MIXED_FLOWS)


def _spec_times(i: int, spec: FlowSpec) -> FlowSpec:
    start = SAMPLE_EPOCH_NS + i * 500_000_000 + 7_000_000  # not on a whole second
    return FlowSpec(**{**spec.__dict__, "start_ns": start, "gap_ns": GAP_NS})


def _ms_text(ns: int) -> str:
    ms = ns // 1_000_000
    stamp = datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}.{ms % 1000:03d}"


def _expected_rows(specs: list[FlowSpec], truth, ipv6: bool) -> set[tuple]:
    rows = set()
    for spec in specs:
        if spec.ip_version == 6 and not ipv6:
            continue
        fid = spec.flow_id()
        packets, nbytes = truth.table()[fid]
        last = spec.start_ns + (spec.packets - 1) * spec.gap_ns
        dport = f"{fid.dport >> 8}.{fid.dport & 0xFF}" if fid.proto == 1 else str(fid.dport)
        rows.add((str(fid.proto), fid.src, fid.dst, str(fid.sport), dport, str(packets),
                  str(nbytes), _ms_text(spec.start_ns), _ms_text(last)))
    return rows


@pytest.fixture
def capture(tmp_path):
    builder = PcapBuilder()
    specs = [builder.add(_spec_times(i, s)) for i, s in enumerate(SPECS)]
    truth = builder.write(tmp_path / "flows.pcap")
    return tmp_path / "flows.pcap", specs, truth


def _config(pcap: Path, v5_dest: list[str], v9_dest: list[str]) -> str:
    def arr(items):
        return "[" + ", ".join(f'"{d}"' for d in items) + "]"

    # a control socket of its own: other agents on this machine may hold the default one
    return (f'[agent]\ncontrol_socket = "{pcap.parent / "agent.sock"}"\n\n'
            f'[[ingest.pcap]]\npath = "{pcap}"\n\n'
            f"[[export.netflow]]\nprotocol = 5\ndestination = {arr(v5_dest)}\n"
            f"engine_id = 5\n\n"
            f"[[export.netflow]]\nprotocol = 9\ndestination = {arr(v9_dest)}\n"
            f"engine_id = 9\nrefresh_rate = 2\n")


def test_agent_exports_v5_and_mirrored_v9_to_collectors(tmp_path, capture):
    pcap, specs, truth = capture
    collectors = {name: Nfcapd(tmp_path / name, free_udp_port()) for name in ("v5", "v9a", "v9b")}
    sink5, sink9 = UdpSink(), UdpSink()
    try:
        for c in collectors.values():
            c.start()
        v9b = collectors["v9b"]
        config = tmp_path / "agent.toml"
        config.write_text(_config(
            pcap,
            [f"127.0.0.1:{collectors['v5'].port}", sink5.endpoint],
            [f"127.0.0.1:{collectors['v9a'].port}", f"127.0.0.1:{v9b.port}", sink9.endpoint]))
        result = run_agent("-c", str(config))
        assert result.returncode == 0, result.stderr
        raw5, raw9 = sink5.drain(), sink9.drain()
    finally:
        for c in collectors.values():
            c.stop()
        sink5.close()
        sink9.close()

    fmt = "%pr|%sa|%da|%sp|%dp|%pkt|%byt|%ts|%te"
    rows = {name: {tuple(r) for r in c.flows(fmt)} for name, c in collectors.items()}
    assert rows["v5"] == _expected_rows(specs, truth, ipv6=False)
    assert rows["v9a"] == rows["v9b"] == _expected_rows(specs, truth, ipv6=True)
    for c in collectors.values():
        assert "Sequence Errors: 0" in c.log_text() or "Sequence" not in c.log_text()

    _check_v5_wire(raw5, truth)
    _check_v9_wire(raw9, truth)
    assert_export_clock(raw5, min_records=len(raw5))
    assert_export_clock(raw9, min_records=len(SPECS))
    for name, raw in (("v5", raw5), ("v9", raw9)):
        assert tshark_problems(write_capture(raw, tmp_path / f"{name}.pcap")) == ""


def _check_v5_wire(datagrams: list[bytes], truth) -> None:
    packets = decode(datagrams)
    expected_seq = 0
    totals = {}
    for p in packets:
        assert p.header.version == 5 and p.header.engine_id == 5
        assert p.header.sequence == expected_seq
        expected_seq += p.header.count
        for f in p.flows:
            assert f.FIRST_SWITCHED <= f.LAST_SWITCHED <= p.header.uptime
            key = (f.PROTO, f.SRC_PORT, f.DST_PORT)
            totals[key] = (f.IN_PACKETS, f.IN_OCTETS)
    v4 = {(fid.proto, fid.sport, fid.dport): counts for fid, counts in truth.table().items()
          if fid.ip_version == 4}
    assert totals == v4


def _check_v9_wire(datagrams: list[bytes], truth) -> None:
    packets = decode(datagrams)
    assert [p.header.sequence for p in packets] == list(range(len(packets)))
    assert all(p.header.source_id == 9 for p in packets)
    got = {}
    for p in packets:
        for f in p.flows:
            d = f.data
            src = d.get("IPV4_SRC_ADDR") or d.get("IPV6_SRC_ADDR")
            got[(d["PROTOCOL"], src, d["L4_SRC_PORT"])] = (d["IN_PKTS"], d["IN_BYTES"],
                                                          d["TCP_FLAGS"])
            assert d["FIRST_SWITCHED"] <= d["LAST_SWITCHED"]
    want = {(fid.proto, fid.src, fid.sport): (c.packets, c.bytes, c.tcp_flags)
            for fid, c in truth.flows.items()}
    assert got == want


def test_agent_dry_run_accepts_and_rejects(tmp_path, capture):
    pcap = capture[0]
    good = tmp_path / "good.toml"
    good.write_text(_config(pcap, ["127.0.0.1:2055"], ["[::1]:2055"]))
    assert run_agent("--dry-run", "-c", str(good)).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(_config(pcap, ["127.0.0.1"], ["[::1]:2055"]))
    result = run_agent("--dry-run", "-c", str(bad))
    assert result.returncode == 78
    assert "export.netflow[0].destination[0]" in result.stdout + result.stderr


def test_agent_survives_collector_down_and_late_collector_decodes_first_datagram(tmp_path):
    """Export to a closed port, then start the collector: its first datagram decodes.

    ``refresh_rate`` is huge and ``timeout_rate`` 30 min, so only the exporter's reaction to
    ICMP port unreachable (templates while refused) can make that first datagram decodable.
    """
    builder = PcapBuilder()
    for i in range(25):  # one new UDP flow every 200 ms for 5 s, at the recorded pace
        builder.add(FlowSpec("udp", "10.0.0.1", "10.0.0.2", 2000 + i, 53, payload=30,
                             start_ns=SAMPLE_EPOCH_NS + i * 200_000_000))
    builder.write(tmp_path / "slow.pcap")
    port = free_udp_port()
    config = tmp_path / "agent.toml"
    sock = tmp_path / "agent.sock"
    config.write_text(
        f'[agent]\nscan_interval_ms = 200\ncontrol_socket = "{sock}"\n\n'
        f'[cache]\ninactive_timeout = 1\n\n'
        f'[[ingest.pcap]]\npath = "{tmp_path / "slow.pcap"}"\nspeed = "recorded"\n\n'
        f'[[export.netflow]]\nprotocol = 9\ndestination = ["127.0.0.1:{port}"]\n'
        f"refresh_rate = 100000\n")
    with Agent(config, sock) as agent:
        agent.start()
        # the first flows went to a closed port: the kernel said so (ICMP, counted as cberr)
        agent.wait_for(lambda s: s["components"]["export.netflow[0]"]["sock_cberr"] > 0,
                       what="a datagram refused by the closed port")
        sink = UdpSink(port=port)
        assert agent.wait_exit(30) == 0, agent.log()
    datagrams = sink.drain()
    sink.close()
    stderr = agent.log()
    assert datagrams, stderr
    packets = decode(datagrams[:1])  # raises V9TemplateNotRecognized without templates
    assert packets[0].flows
    ports = {f.data["L4_SRC_PORT"] for p in decode(datagrams) for f in p.flows}
    assert 2024 in ports and 2000 not in ports  # late flows arrive, early ones were refused
    assert_export_clock(datagrams)
    assert "Traceback" not in stderr and " ERROR " not in stderr
