"""Every exported packet of v5, v9 and IPFIX against the RFCs, across reloads and a shutdown.

A capture plays at its recorded pace (about 4 s) through the real agent, with NetFlow v5, v9
and IPFIX exporters each mirrored to a raw sink; in the middle the agent gets SIGHUP three
times (files unchanged; only ``[cache]`` changed; the v9 and IPFIX exporters' own options
changed) and then SIGTERM. v9 is also mirrored to nfcapd, which must count no sequence
error and list the ground truth. Every packet must pass :class:`tests.support.wireaudit.WireAudit`
(sequence numbers continuous per stream as RFC 3954 / RFC 7011 define them, counts,
lengths, padding, templates before data and refreshed on time, v5 engine fields) and
:func:`tests.support.exportclock.assert_export_clock`; the flows decoded from each stream
must be the ground truth (packets, bytes, TCP flags, ToS, ports, protocol, IPv4 and IPv6;
v5 IPv4 only), each packet exactly once, and v9's FIRST/LAST_SWITCHED, read as a collector
reads them, the first and last packet times of the capture (to the ms), and its ICMP_TYPE
the packets' type and code; tshark and the PyPI ``netflow`` package decode every packet and
agree.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.agentproc import Agent
from tests.support.collectors import (
    Nfcapd,
    UdpSink,
    cflow_records,
    flow_table,
    netflow_decode,
    netflow_records,
    nfdump_flows,
    tshark_decode,
)
from tests.support.exportclock import assert_export_clock
from tests.support.pcapgen import SAMPLE_EPOCH_NS, FlowSpec, PcapBuilder
from tests.support.truth import FlowId, ip_text
from tests.support.wireaudit import Record, WireAudit

MS = 1_000_000
SECONDS = 8.0
#: the replay hands over a batch once a packet 1 s later comes: FLUSHER makes it hand over
#: the traffic, SENTINEL (long after) keeps the agent running until it is stopped (SIGTERM);
#: the FLUSHER's packet is then in the batch handed over at the stop
FLUSHER = FlowSpec("udp", "10.9.9.9", "10.9.9.8", 9, 9,
                   start_ns=SAMPLE_EPOCH_NS + int((SECONDS + 1.5) * 1e9))
SENTINEL = FlowSpec("udp", "10.9.9.7", "10.9.9.8", 9, 9, start_ns=SAMPLE_EPOCH_NS + 600 * 10**9)


def _specs() -> list[FlowSpec]:
    """Short flows spread over the capture (IPv4/IPv6, TCP/UDP/ICMP, ToS) and two long
    ones that active_timeout cuts into several records."""
    out = []
    for i in range(16):
        start = SAMPLE_EPOCH_NS + int(i * SECONDS / 16 * 1e9)
        v6 = i % 4 == 3
        src, dst = (f"fd00::{i + 1:x}", "fd00::ff") if v6 else (f"10.1.0.{i + 1}", "10.2.0.1")
        kind = ("tcp", "udp", "icmpv6" if v6 else "icmp")[i % 3]
        out.append(FlowSpec(kind, src, dst, 30000 + i, 80 if kind == "tcp" else 53,
                            packets=3 + i % 4, payload=40 + 30 * i, tos=(i * 8) & 0xFC,
                            icmp_type=128 if v6 else 8, icmp_code=i % 5,
                            start_ns=start, gap_ns=20 * MS))
    for n, src in enumerate(("10.3.0.1", "fd00:3::1")):
        out.append(FlowSpec("udp", src, "10.3.0.2" if n == 0 else "fd00:3::2", 5000, 5001,
                            packets=int(SECONDS * 10), payload=100, tos=0x20,
                            start_ns=SAMPLE_EPOCH_NS + 3 * MS, gap_ns=100 * MS))
    return out


CONFIG = """
[agent]
control_socket = "{socket}"
scan_interval_ms = 50
[cache]
active_timeout = 1
inactive_timeout = {inactive}
[[ingest.pcap]]
path = "{pcap}"
speed = "recorded"
[[export.netflow]]
protocol = 5
destination = ["{v5}"]
engine_type = 3
engine_id = 300
[[export.netflow]]
protocol = 9
destination = ["{v9}"]
engine_id = 9
refresh_rate = 4
mtu = {mtu}
[[export.ipfix]]
destination = ["{ipfix}"]
observation_domain_id = 10
refresh_rate = 4
mtu = {mtu}
options_interval_s = 1
"""


def _truth_rows(truth, v4_only: bool) -> dict[tuple, tuple[int, int, int]]:
    return {(f.proto, f.src, f.dst, f.sport, f.dport): (c.packets, c.bytes, c.tcp_flags)
            for f, c in truth.flows.items() if not (v4_only and f.ip_version == 6)}


def _decoded_rows(records: list[Record]) -> dict[tuple, tuple[int, int, int]]:
    """Packets, bytes and ORed flags per flow, summed over the stream's records."""
    out: dict[tuple, tuple[int, int, int]] = {}
    for r in records:
        v = r.values
        src, dst = (v[8], v[12]) if 8 in v else (v[27], v[28])
        proto = v[4]
        icmp = proto in (1, 58)
        dport = v.get(32, v.get(139, v.get(11))) if icmp else v[11]
        key = (proto, ip_text(src), ip_text(dst), 0 if icmp else v[7], dport)
        p, b, f = out.get(key, (0, 0, 0))
        out[key] = (p + v[2], b + v[1], f | v.get(6, 0))
    return out


def _assert_v9_times_and_icmp(audit: WireAudit, specs: list[FlowSpec]) -> None:
    """Each flow's v9 records, read as a collector reads them: the earliest FIRST_SWITCHED
    and the latest LAST_SWITCHED, as ``unix_secs * 1000 - (sysUpTime - t)`` ms, are its
    first and last packet's capture times in ms (rounded down), and ICMP_TYPE is
    ``type * 256 + code`` for ICMP and ICMPv6 flows."""
    spans: dict[str, tuple[int, int]] = {}
    for r in audit.flows():
        v = r.values
        src = ip_text(v.get(8, v.get(27)))
        at = [r.export_time * 1000 - (audit.uptimes[r.packet] - v[t]) % 2**32 for t in (22, 21)]
        old = spans.get(src, at)
        spans[src] = (min(old[0], at[0]), max(old[1], at[1]))
        spec = next(s for s in specs if s.src == src)
        if spec.proto in ("icmp", "icmpv6"):
            assert v[32] == spec.icmp_type * 256 + spec.icmp_code, (src, v[32])
    want = {s.src: ((s.start_ns or 0) // MS, ((s.start_ns or 0) + (s.packets - 1) * s.gap_ns)
                    // MS) for s in specs}
    assert spans.keys() == want.keys()
    for src, (first, last) in spans.items():
        # the header has whole seconds (its time is rounded up to one) and sysUpTime and the
        # times are each floor((t - boot) / 1 ms): a boot time between two ms makes the read
        # time up to 1 ms late; rounding them as floor(t / 1 ms) - floor(boot / 1 ms) (v5/v9
        # from another branch) makes it exact: 1 ms either way is allowed
        assert abs(first - want[src][0]) <= 1 and abs(last - want[src][1]) <= 1, \
            (src, (first, last), want[src])


def _tos(records: list[Record]) -> dict[tuple, set[int]]:
    out: dict[tuple, set[int]] = {}
    for r in records:
        v = r.values
        out.setdefault(ip_text(v.get(8, v.get(27))), set()).add(v[5])
    return out


@pytest.fixture
def capture(tmp_path: Path):
    builder = PcapBuilder()
    specs = [builder.add(s) for s in [*_specs(), FLUSHER]]
    truth = builder.write(tmp_path / "audit.pcap")  # the truth of what plays before the stop
    sentinel = PcapBuilder()
    for s in [*specs, SENTINEL]:
        sentinel.add(s)
    sentinel.write(tmp_path / "audit.pcap")
    return tmp_path / "audit.pcap", truth, specs


def test_every_packet_of_v5_v9_ipfix_across_reloads_and_shutdown(tmp_path, capture):
    pcap, truth, specs = capture
    sinks = {name: UdpSink() for name in ("v5", "v9", "ipfix")}
    v9_collector = Nfcapd(tmp_path / "nfcapd").start()
    try:
        def write(inactive: int, mtu: int) -> None:
            ends = {n: s.endpoint for n, s in sinks.items()}
            ends["v9"] += f'", "127.0.0.1:{v9_collector.port}'
            (tmp_path / "agent.toml").write_text(CONFIG.format(
                socket=tmp_path / "agent.sock", pcap=pcap, inactive=inactive, mtu=mtu, **ends))

        write(inactive=2, mtu=600)
        with Agent(tmp_path / "agent.toml", tmp_path / "agent.sock") as agent:
            agent.start()
            for step, (inactive, mtu) in enumerate(((2, 600), (3, 600), (3, 700))):
                agent.wait_for(lambda s, n=step: s["cache"]["exported_flows"] >= 3 + 5 * n,
                               what=f"flows before reload {step + 1}")
                write(inactive, mtu)
                before = agent.stats()["agent"]["reloads"]
                agent.signal(signal.SIGHUP)
                agent.wait_for(lambda s, b=before: s["agent"]["reloads"] > b, what="reload")
            packets = sum(c.packets for c in truth.flows.values()) - FLUSHER.packets
            agent.wait_for(lambda s: s["cache"]["traffic_packets"] == packets,
                           timeout=30, what="every packet before the sentinel")
            assert agent.stop() == 0, agent.log()
        for s in sinks.values():
            s.collect()  # what is still queued: the agent has stopped
        got = {n: [(d.data, d.peer) for d in s.datagrams] for n, s in sinks.items()}
    finally:
        for s in sinks.values():
            s.close()
        v9_collector.stop()
    log = agent.log()
    assert "Traceback" not in log and " ERROR " not in log, log

    audits = {
        "v5": WireAudit(engine=(3, 300 & 0xFF), v5_sampling=0),
        "v9": WireAudit(refresh_packets=4),
        "ipfix": WireAudit(refresh_packets=4),
    }
    for name, audit in audits.items():
        audit.feed_all(got[name])
        audit.assert_clean()
        for peer in {p for _, p in got[name]}:  # one stream per socket for its own check
            assert_export_clock([d for d, p in got[name] if p == peer])
        assert _decoded_rows(audit.flows()) == _truth_rows(truth, v4_only=name == "v5"), name
        want_tos = {FlowId.make(0, s.src, s.dst).src: {s.tos} for s in specs
                    if not (name == "v5" and s.ip_version == 6)}
        assert _tos(audit.flows()) == want_tos, name

    peers = {name: {peer for _, peer in got[name]} for name in got}
    # reloads that left an exporter alone kept its socket; the one that changed v9 and
    # IPFIX replaced theirs: v9 goes on with the same stream (sequence continued, checked
    # above), IPFIX starts a new transport session (sequence from 0)
    assert [len(peers[n]) for n in ("v5", "v9", "ipfix")] == [1, 2, 2]
    assert len(audits["ipfix"].streams) == 2 and len(audits["v9"].streams) == 1
    _assert_v9_times_and_icmp(audits["v9"], specs)
    assert "Sequence Errors: 0" in v9_collector.log, v9_collector.log
    want9 = {k[:5]: v[:2] for k, v in _truth_rows(truth, v4_only=False).items()}
    assert flow_table(nfdump_flows(v9_collector.dir)) == want9
    for name in ("v9", "ipfix"):  # the stop expired the long flows: end reason "forced"
        assert 4 in {r.values[136] for r in audits[name].flows()}

    for name in ("v5", "v9", "ipfix"):
        want = {k[:5]: v[:2] for k, v in _truth_rows(truth, v4_only=name == "v5").items()}
        # the streams were audited above, one per socket; here they follow one another
        _, flows = netflow_decode([d for d, _ in got[name]], audit=False)
        assert flow_table(netflow_records(flows)) == want, name
        layers = tshark_decode([d for d, _ in got[name]], sinks[name].port)
        recs = [r for r in cflow_records(layers) if "cflow.srcaddr" in r or
                "cflow.srcaddrv6" in r]
        assert len(recs) == len(audits[name].flows()), name
        for field in ("packets", "octets"):
            total = sum(int(r.get(f"cflow.{field}", r.get(f"cflow.{field}64", 0)))
                        for r in recs)
            assert total == sum(v[0 if field == "packets" else 1] for v in want.values())


@pytest.mark.parametrize("protocol", [9, 10])
def test_flows_nat_events_and_sampling_options_share_one_clean_stream(protocol):
    """v9 and IPFIX instances with flows, NAT events and a sampling that changes, a small MTU
    and a template refresh every 3 packets: every packet passes the audit (templates of
    flows, NEL and options each refreshed on time although new ones keep appearing), tshark
    and the ``netflow`` package decode every flow and event, and the sampling options say
    1/100 and then 1 after the sampling stopped."""
    from netflow_agent.plugins.export_ipfix.component import IpfixExporter
    from netflow_agent.plugins.export_ipfix.config import Config as IpfixConfig
    from netflow_agent.plugins.export_netflow.component import NetflowExporter
    from netflow_agent.plugins.export_netflow.config import Config as NetflowConfig
    from netflow_agent.runtime import RunContext
    from tests.export_netflow.test_netflow_component import START, flows, nat_events

    context = RunContext(start_ns=START)
    context.declare_sampling("ingest.test[0]", 100, 2)
    with UdpSink() as sink:
        if protocol == 9:
            exporter: Any = NetflowExporter(NetflowConfig(
                destination=[sink.endpoint], protocol=9, refresh_rate=3, natevents=True,
                counters64=True, mtu=300), "export.netflow[0]")
        else:
            exporter = IpfixExporter(IpfixConfig(
                destination=[sink.endpoint], refresh_rate=3, natevents=True, mtu=300,
                options_interval_s=0), "export.ipfix[0]")
        exporter.agent_start(context=context)
        for i in range(6):
            exporter.agent_export_flows(records=flows(7, 6 if i % 2 else 4, 1000 + 10 * i))
            exporter.agent_export_nat_events(events=nat_events())
            if i == 3:
                context.declare_sampling("ingest.test[0]", 1, 2)
        exporter.agent_stop()  # sends everything before it returns
        datagrams = sink.collect()
        port = sink.port
    audit = WireAudit(refresh_packets=3).feed_all(datagrams)
    audit.assert_clean()
    assert len(audit.flows()) == 6 * 7 + 6 * 2  # flows and NAT events (they have 8/27 too)
    intervals = [r.values[34] for r in audit.records if r.options and 34 in r.values]
    assert intervals[0] == 100 and intervals[-1] == 1
    _, decoded = netflow_decode(datagrams)
    assert len([r for r in decoded if "natEvent" in r]) == 12
    tshark_records = cflow_records(tshark_decode(datagrams, port))
    assert len(tshark_records) >= 6 * 7 + 6 * 2
