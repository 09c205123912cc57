"""The ``[[export.netflow]]`` component driven through its hooks, without the pipeline."""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest

from netflow_agent.config.convert import convert
from netflow_agent.model import NAT_START, NAT_STOP, FlowRecord, NatEvent
from netflow_agent.plugins.export_netflow.component import NetflowExporter
from netflow_agent.plugins.export_netflow.config import Config
from netflow_agent.runtime import RunContext
from tests.export_netflow.collect import UdpSink, decode
from tests.support.collectors import free_udp_port, netflow_decode
from tests.support.wireaudit import WireAudit

START = time.time_ns() - 30_000_000_000


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def flows(n: int, version: int = 4, base_port: int = 1000) -> list[FlowRecord]:
    src, dst = (ip("10.0.0.1"), ip("10.0.0.2")) if version == 4 else (ip("fd00::1"), ip("fd00::2"))
    now = time.time_ns()
    return [FlowRecord(version, 17, src, dst, base_port + i, 53, packets=2, octets=150,
                       start_ns=now - 2_000_000_000, end_ns=now - 1_000_000_000)
            for i in range(n)]


def nat_events() -> list[NatEvent]:
    now = time.time_ns()
    args = dict(ip_version=4, protocol=6, src_addr=ip("10.99.2.1"), dst_addr=ip("10.99.3.1"),
                src_port=47486, dst_port=8080, post_src_addr=ip("10.99.3.254"),
                post_dst_addr=ip("10.99.3.1"), post_src_port=47486, post_dst_port=8080,
                snat=True)
    return [NatEvent(NAT_START, now - 1_000_000_000, **args), NatEvent(NAT_STOP, now, **args)]


def started(config: Config) -> NetflowExporter:
    exporter = NetflowExporter(config, "export.netflow[0]")
    exporter.agent_start(context=RunContext(start_ns=START))
    return exporter


def test_sample_config_loads_without_issues():
    import tomllib

    sample = tomllib.loads((Path(__file__).parents[2] / "plugins/export_netflow/sample.toml")
                           .read_text())
    config, issues = convert(Config, sample["export"]["netflow"][0], "export.netflow[0]")
    assert issues == [] and config.protocol == 5 and config.refresh_rate == 20


@pytest.mark.parametrize(("table", "path", "fragment"), [
    ({"destination": ["127.0.0.1"]}, "destination[0]", "missing port"),
    ({"destination": ["127.0.0.1:2055"], "protocol": 10}, "protocol", ""),
    ({"destination": ["[::1]:2055"], "source": "127.0.0.1"}, "destination[0]", "family"),
    ({"destination": ["127.0.0.1:2055"], "flows": False}, "flows", "send nothing"),
    ({"destination": ["127.0.0.1:2055"], "mtu": 100}, "mtu", ""),
    ({"destination": ["127.0.0.1:2055"], "nat_event_values": "new"}, "nat_event_values", ""),
])
def test_config_errors_name_the_key(table, path, fragment):
    _, issues = convert(Config, table, "export.netflow[0]")
    errors = [i for i in issues if i.severity == "error"]
    assert errors and errors[0].path == f"export.netflow[0].{path}"
    assert fragment in errors[0].message


def test_v9_mirrors_same_stream_to_ipv4_and_ipv6_collectors():
    sinks = [UdpSink(), UdpSink(family=socket.AF_INET6)]
    exporter = started(Config(destination=[s.endpoint for s in sinks], protocol=9))
    exporter.agent_export_flows(records=flows(100) + flows(20, version=6))
    a, b = (s.drain(expect=0) for s in sinks)
    assert a == b and len(a) >= 3
    assert sum(len(p.flows) for p in decode(a)) == 120
    stats = exporter.agent_collect_stats()
    assert stats["sock0"]["packets_ok"] == stats["sock1"]["packets_ok"] == len(a)
    assert stats["records_encoded"] == 120 and stats["sequence"] == len(a)
    exporter.agent_stop()


def test_v5_counts_ipv6_as_skipped():
    sink = UdpSink()
    exporter = started(Config(destination=[sink.endpoint], protocol=5))
    exporter.agent_export_flows(records=flows(3) + flows(2, version=6))
    [pdu] = sink.drain()
    assert len(decode([pdu])[0].flows) == 3
    assert exporter.agent_collect_stats()["skipped"] == 2
    exporter.agent_stop()


def test_flows_only_nat_only_and_both():
    sinks = {name: UdpSink() for name in ("flows", "nat", "both")}
    exporters = [
        started(Config(destination=[sinks["flows"].endpoint], protocol=9)),
        started(Config(destination=[sinks["nat"].endpoint], protocol=9, flows=False,
                       natevents=True, nat_event_values="rfc8158")),
        started(Config(destination=[sinks["both"].endpoint], protocol=9, natevents=True)),
    ]
    for exporter in exporters:
        exporter.agent_export_flows(records=flows(4))
        exporter.agent_export_nat_events(events=nat_events())
    got = {name: [f.data for p in decode(s.drain()) for f in p.flows]
           for name, s in sinks.items()}
    assert len(got["flows"]) == 4 and all("natEvent" not in d for d in got["flows"])
    assert [d["natEvent"] for d in got["nat"]] == [4, 5]
    assert len(got["both"]) == 6
    stats = exporters[1].agent_collect_stats()
    assert (stats["nat_start"], stats["nat_stop"], stats["flows_in"]) == (1, 1, 0)
    for exporter in exporters:
        exporter.agent_stop()


def test_collector_down_then_up_decodes_first_packet():
    """Closed port: cberr counted, nothing raised; the collector's first datagram decodes."""
    port = free_udp_port()
    exporter = started(Config(destination=[f"127.0.0.1:{port}"], protocol=9,
                              refresh_rate=1000))
    for _ in range(3):
        exporter.agent_export_flows(records=flows(5))
        time.sleep(0.01)
        exporter.agent_tick(now_ns=time.time_ns())
    stats = exporter.agent_collect_stats()
    assert stats["sock_cberr"] >= 3 and stats["sock0"]["connected"]
    sink = UdpSink(port=port)  # the collector starts
    exporter.agent_export_flows(records=flows(5, base_port=2000))
    [first] = sink.drain()
    [packet] = decode([first])  # templates are in this very packet
    assert [f.data["L4_SRC_PORT"] for f in packet.flows] == list(range(2000, 2005))
    exporter.agent_stop()
    sink.close()


def test_bad_record_is_counted_and_the_rest_exported():
    sink = UdpSink()
    exporter = started(Config(destination=[sink.endpoint], protocol=9))
    records = flows(3)
    records[1].src_port = 70000  # does not fit 16 bits
    exporter.agent_export_flows(records=records)
    [packet] = decode(sink.drain())
    assert [f.data["L4_SRC_PORT"] for f in packet.flows] == [1000, 1002]
    assert exporter.agent_collect_stats()["encode_errors"] == 1
    assert packet.header.sequence == 0  # the failed attempt consumed no sequence number
    exporter.agent_stop()



@pytest.mark.parametrize("protocol", [5, 9])
def test_a_counter_too_large_to_split_is_counted_and_the_rest_exported(protocol):
    """v5 and v9 (32-bit counters) split a flow over 2**32 - 1 packets into records; one
    near 2**64 would need 2**32 of them (MemoryError: the batch neither exported nor
    counted). It is dropped and counted as an encode error; the others go out."""
    sink = UdpSink()
    exporter = started(Config(destination=[sink.endpoint], protocol=protocol))  # 32-bit
    records = flows(3)
    records[1].packets = 2**64 - 1
    records[2].octets = 3 * (2**32 - 1)  # split into 3 records, still exported
    exporter.agent_export_flows(records=records)
    packets = decode(sink.drain())
    ports = [f.SRC_PORT if protocol == 5 else f.data["L4_SRC_PORT"]
             for p in packets for f in p.flows]
    assert ports == [1000, 1002, 1002, 1002]
    stats = exporter.agent_collect_stats()
    assert stats["encode_errors"] == 1 and stats["records_encoded"] == 4
    exporter.agent_stop()


def test_template_refresh_on_the_wire_by_packets_and_by_time():
    """Through real sockets: templates again after refresh_rate datagrams and timeout_rate."""
    clock = [time.time_ns()]
    sink = UdpSink()
    exporter = NetflowExporter(Config(destination=[sink.endpoint], protocol=9, refresh_rate=4,
                                      timeout_rate=1), "export.netflow[0]")
    exporter.agent_start(context=RunContext(start_ns=START, clock=lambda: clock[0]))
    for _ in range(6):
        exporter.agent_export_flows(records=flows(1))
        clock[0] += 1_000_000_000
    clock[0] += 61_000_000_000  # past timeout_rate (1 min)
    exporter.agent_export_flows(records=flows(1))
    datagrams = sink.drain()
    has_template = [int.from_bytes(d[20:22], "big") == 0 for d in datagrams]
    assert has_template == [True, False, False, False, True, False, True]
    assert [int.from_bytes(d[12:16], "big") for d in datagrams] == list(range(7))  # sequence
    decode(datagrams)
    exporter.agent_stop()


@pytest.mark.parametrize("protocol", [5, 9])
def test_a_reload_that_replaces_the_instance_continues_its_stream(protocol):
    """RFC 3954 section 5.1: the v9 sequence counts every export packet of the Source ID, and
    collectors key streams on exporter address + Source ID (nfcapd counted a sequence error
    for each reload that changed an exporter); v5's flow_sequence likewise. The replacement
    of a changed instance (same destinations, source and engine) takes the stream over:
    sequence and sysUpTime origin go on, templates are sent again first."""
    sink = UdpSink()
    context = RunContext(start_ns=START)
    config = Config(destination=[sink.endpoint], protocol=protocol, engine_id=7)
    old = NetflowExporter(config, "export.netflow[0]")
    old.agent_start(context=context)
    old.agent_export_flows(records=flows(40))
    old.agent_stop()
    new = NetflowExporter(replace(config, refresh_rate=5), "export.netflow[0]")
    new.agent_start(context=context)  # the same run: a reload
    new.agent_export_flows(records=flows(40, base_port=2000))
    new.agent_stop()
    other = NetflowExporter(replace(config, engine_id=8), "export.netflow[0]")
    other.agent_start(context=context)  # another Source ID: a stream of its own
    other.agent_export_flows(records=flows(1))
    other.agent_stop()
    datagrams = sink.drain()
    sink.close()
    packets = decode(datagrams)  # WireAudit: one continuous stream per Source ID
    sequences = [p.header.sequence for p in packets]
    if protocol == 9:
        assert sequences == [*range(len(packets) - 1), 0]
        second = [p for p in packets if any(f.data["L4_SRC_PORT"] >= 2000 for f in p.flows)]
        assert second[0].templates  # the replacement announced its templates first
    else:
        assert sequences == [0, 30, 40, 70, 0]
    boots = [p.header.timestamp * 1000 + getattr(p.header, "timestamp_nano", 0) // 1_000_000
             - p.header.uptime for p in packets]  # ms
    assert max(boots) - min(boots) <= 1  # one sysUpTime origin


def _reload(context: RunContext, old: NetflowExporter, config: Config,
            records: list[FlowRecord]) -> NetflowExporter:
    """Stop ``old`` and start its replacement with ``config`` (a reload), which exports
    ``records``."""
    old.agent_stop()
    new = NetflowExporter(config, "export.netflow[0]")
    new.agent_start(context=context)
    new.agent_export_flows(records=records)
    return new


@pytest.mark.parametrize("protocol", [5, 9])
def test_adding_a_mirror_keeps_the_stream_of_the_collector_that_stays(protocol):
    """Collectors key a stream on exporter address + Source ID (RFC 3954 section 5.1; v5:
    the engine fields): a reload from destination [A] to [A, B] (then [B, A]) must go on
    with A's sequence numbers; B joins the stream where it is."""
    a, b = UdpSink(), UdpSink()
    context = RunContext(start_ns=START)
    config = Config(destination=[a.endpoint], protocol=protocol, engine_id=300,
                    engine_type=2)
    first = NetflowExporter(config, "export.netflow[0]")
    first.agent_start(context=context)
    first.agent_export_flows(records=flows(40))
    second = _reload(context, first, replace(config, destination=[a.endpoint, b.endpoint]),
                     flows(40, base_port=2000))
    third = _reload(context, second, replace(config, destination=[b.endpoint, a.endpoint]),
                    flows(5, base_port=3000))
    third.agent_stop()
    got_a, got_b = a.drain(), b.drain()
    a.close()
    b.close()
    engine = (2, 300 & 0xFF) if protocol == 5 else None
    audit = WireAudit(engine=engine).feed_all(got_a)  # sequence from 0, never restarted
    audit.assert_clean()
    assert len(audit.streams) == 1 and len(audit.flows()) == 85
    WireAudit(engine=engine, from_start=False).feed_all(got_b).assert_clean()
    assert got_b == got_a[-len(got_b):]  # the same stream mirrored


def test_a_destination_written_differently_keeps_its_stream():
    """The handover compares destinations normalised (as the IPFIX exporter does): a reload
    that only adds spaces around a collector's address goes on with its sequence."""
    sink = UdpSink()
    context = RunContext(start_ns=START)
    config = Config(destination=[sink.endpoint], protocol=9)
    old = NetflowExporter(config, "export.netflow[0]")
    old.agent_start(context=context)
    old.agent_export_flows(records=flows(20))
    new = _reload(context, old, replace(config, destination=[f" {sink.endpoint} "]),
                  flows(20, base_port=2000))
    new.agent_stop()
    audit = WireAudit().feed_all(sink.drain())
    sink.close()
    audit.assert_clean()  # one stream: sequence from 0, never restarted
    assert len(audit.streams) == 1 and len(audit.flows()) == 40


def test_sampling_that_stops_with_the_reload_that_replaces_a_v9_exporter_is_announced():
    """1/100 announced, then a reload removes the sampling (the ingest is retired) and
    changes the exporter: the replacement must announce 1, or the collector keeps
    multiplying every count by 100."""
    sink = UdpSink()
    context = RunContext(start_ns=START)
    context.declare_sampling("ingest.test[0]", 100)
    config = Config(destination=[sink.endpoint], protocol=9)
    old = NetflowExporter(config, "export.netflow[0]")
    old.agent_start(context=context)
    old.agent_export_flows(records=flows(3))
    context.forget_sampling("ingest.test[0]")
    new = _reload(context, old, replace(config, refresh_rate=5), flows(3, base_port=2000))
    assert new.agent_collect_stats()["sampling_interval"] == 1
    new.agent_stop()
    audit = WireAudit().feed_all(sink.drain())
    sink.close()
    audit.assert_clean()
    intervals = [(r.packet, r.values[34]) for r in audit.records if r.options and 34 in r.values]
    second = min(r.packet for r in audit.flows() if r.values[7] >= 2000)
    assert {i for p, i in intervals if p < second} == {100}
    assert [i for p, i in intervals if p >= second][:1] == [1]  # with the replacement's flows


def test_counters64_changed_by_a_reload_redefines_the_templates_in_the_same_stream():
    """v9 has no template withdrawal: the replacement with other counter sizes sends the
    new definitions (same IDs) before its data; the stream goes on and decodes."""
    sink = UdpSink()
    context = RunContext(start_ns=START)
    config = Config(destination=[sink.endpoint], protocol=9)
    old = NetflowExporter(config, "export.netflow[0]")
    old.agent_start(context=context)
    old.agent_export_flows(records=flows(10))
    new = _reload(context, old, replace(config, counters64=True), flows(10, base_port=2000))
    new.agent_stop()
    datagrams = sink.drain()
    sink.close()
    audit = WireAudit().feed_all(datagrams)
    audit.assert_clean()
    assert sorted(r.values[7] for r in audit.flows()) == [*range(1000, 1010),
                                                         *range(2000, 2010)]
    _, decoded = netflow_decode(datagrams)
    assert len(decoded) == 20


def test_a_replacement_that_fails_to_start_leaves_the_stream_for_the_rollback(monkeypatch):
    """agent_start of the replacement raises (here: its socket setup); the rollback starts
    the previous configuration again, which must still continue the stream."""
    from netflow_agent.plugins.export_netflow import component

    sink = UdpSink()
    context = RunContext(start_ns=START)
    config = Config(destination=[sink.endpoint], protocol=9, engine_id=4)
    old = NetflowExporter(config, "export.netflow[0]")
    old.agent_start(context=context)
    old.agent_export_flows(records=flows(10))
    old.agent_stop()

    def refuse(*_args, **_kwargs):
        raise OSError("no socket for you")

    with monkeypatch.context() as patch:
        patch.setattr(component, "UdpDestination", refuse)
        with pytest.raises(OSError):
            NetflowExporter(replace(config, refresh_rate=5), "export.netflow[0]").agent_start(
                context=context)
    rollback = NetflowExporter(config, "export.netflow[0]")
    rollback.agent_start(context=context)
    rollback.agent_export_flows(records=flows(10, base_port=2000))
    rollback.agent_stop()
    audit = WireAudit().feed_all(sink.drain())
    sink.close()
    audit.assert_clean()
    assert len(audit.streams) == 1 and len(audit.flows()) == 20
