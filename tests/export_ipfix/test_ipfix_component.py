"""The component over UDP and to files: mirroring, loss counting, NEL, ifName, rotation."""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from typing import Any

import pytest

from netflow_agent.plugins.export_ipfix.component import IpfixExporter
from netflow_agent.plugins.export_ipfix.config import Config
from netflow_agent.runtime import RunContext
from tests.export_ipfix.helpers import decodable, flow, nat_event, sets_of, split_stream
from tests.support.collectors import (
    UdpSink,
    cflow_records,
    free_udp_port,
    netflow_decode,
    tshark_decode,
)
from tests.support.wireaudit import WireAudit


def start(cfg: Config, **ctx) -> IpfixExporter:
    exporter = IpfixExporter(cfg, "export.ipfix[0]")
    exporter.agent_start(RunContext(**ctx))
    return exporter


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sent_to(exporter: IpfixExporter, sink: UdpSink) -> int:
    """Messages the exporter handed to the kernel for ``sink`` (wait for all of them: paced
    sends leave from a thread, and the sink reads in another)."""
    return exporter.agent_collect_stats()["destinations"][f"127.0.0.1:{sink.port}"]["packets_ok"]


def test_udp_mirrors_and_counts_loss_to_a_dead_collector():
    dead = closed_udp_port()
    with UdpSink() as sink:
        exporter = start(Config(destination=[f"127.0.0.1:{sink.port}", f"127.0.0.1:{dead}"],
                                options_interval_s=0))
        for _ in range(3):
            exporter.agent_export_flows(records=[flow(i) for i in range(50)])
            time.sleep(0.05)  # let the ICMP port unreachable come back
        exporter.agent_stop()
        got = sink.wait(sent_to(exporter, sink))
    _, records = netflow_decode(got)
    assert len([r for r in records if "packetDeltaCount" in r]) == 150
    stats = exporter.agent_collect_stats()
    assert stats["destinations"][f"127.0.0.1:{dead}"]["cberr"] > 0  # ICMP unreachable seen


def test_udp_send_failures_are_counted_with_packets_and_octets():
    records = [flow(i) for i in range(50)]
    # a source address this host does not have: the socket cannot be bound, nothing is sent
    exporter = start(Config(destination=["127.0.0.1:9"], source="192.0.2.1",
                            options_interval_s=0))
    exporter.agent_export_flows(records=records)
    exporter.agent_stop()
    stats = exporter.statistics()
    assert stats.lost_records == 50
    assert stats.lost_packets == sum(r.packets for r in records)
    assert stats.lost_octets == sum(r.octets for r in records)
    assert exporter.agent_collect_stats()["destinations"]["127.0.0.1:9"]["err_connect"] >= 1


def test_nel_over_udp_decodes_in_tshark_and_netflow():
    with UdpSink() as sink:
        exporter = start(Config(destination=[f"127.0.0.1:{sink.port}"], flows=False,
                                natevents=True, nat_event_values="rfc8158",
                                options_interval_s=0))
        events = [nat_event(0), nat_event(1, start=False), nat_event(2, v6=True)]
        exporter.agent_export_nat_events(events=events)
        exporter.agent_export_flows(records=[flow(0)])  # flows = false: ignored
        exporter.agent_stop()
        got = sink.wait(1)
        layers = tshark_decode(got, sink.port)
    _, records = netflow_decode(got)
    assert sorted(r["natEvent"] for r in records) == [4, 4, 5]
    assert all(r["observationTimeMilliseconds"] // 1000 > 1_700_000_000 for r in records)
    v4 = [r for r in records if "postNATSourceIPv4Address" in r]
    assert {r["postNAPTSourceTransportPort"] for r in v4} == {50000, 50001}
    assert any("postNATSourceIPv6Address" in r for r in records)
    assert len(cflow_records(layers)) >= 3


def test_interface_names_for_interfaces_seen():
    lo = socket.if_nametoindex("lo")
    with UdpSink() as sink:
        exporter = start(Config(destination=[f"127.0.0.1:{sink.port}"], options_interval_s=60))
        exporter.agent_export_flows(records=[flow(0, in_if=lo, out_if=0)])
        exporter._send_options()
        exporter.agent_stop()
        got = sink.wait(sent_to(exporter, sink))
        layers = tshark_decode(got, sink.port)
    names = [v for layer in layers for v in _values(layer, "cflow.if_name")]
    assert names and set(names) == {"lo"}
    for message in got:  # variable-length records travel alone (for limited decoders)
        data_sets = {sid for sid, _ in sets_of(message) if sid >= 256}
        assert 275 not in data_sets or data_sets == {275}
    _, records = netflow_decode(decodable(got))
    assert any("ignoredPacketTotalCount" in r for r in records)


def _values(node, wanted: str) -> list:
    if isinstance(node, dict):
        return [x for k, v in node.items()
                for x in ([v] if k == wanted else _values(v, wanted))]
    if isinstance(node, list):
        return [x for v in node for x in _values(v, wanted)]
    return []


def test_file_output_rotates_and_each_file_stands_alone(tmp_path):
    path = tmp_path / "flows.ipfix"
    exporter = start(Config(path=str(path), rotate_size_bytes=3000, options_interval_s=0))
    for i in range(0, 200, 20):
        exporter.agent_export_flows(records=[flow(j) for j in range(i, i + 20)])
    exporter.agent_stop()
    files = sorted(tmp_path.glob("flows.ipfix*"))
    assert len(files) > 2 and exporter.file is not None and exporter.file.rotations > 1
    total = []
    for f in files:
        messages = split_stream(f.read_bytes())
        assert sets_of(messages[0])[0][0] == 2  # every file starts with templates
        _, records = netflow_decode(messages, udp=False)  # each file decodes alone
        total += [r["sourceTransportPort"] for r in records if "packetDeltaCount" in r]
    assert sorted(total) == sorted(flow(i).src_port for i in range(200))


def test_config_checks():
    assert Config(destination=["10.0.0.1"]).endpoints() == ["10.0.0.1:4739"]
    assert Config(destination=["[::1]:9"]).endpoints() == ["[::1]:9"]
    assert [i.path for i in Config().check()] == ["destination"]
    assert [i.path for i in Config(destination=["x:99999"]).check()] == ["destination[0]"]
    assert Config(destination=["a:1"], flows=False).check()[0].path == "flows"
    with pytest.raises(TypeError):
        Config(destination=["a:1"], unknown=1)  # type: ignore[call-arg]


def test_file_and_udp_export_time_is_the_pipeline_clock_never_before_a_record(tmp_path):
    """Issue 18 items 1, 2: Export Time follows RunContext.now_ns (the capture clock in a
    replay), rounded up so no flowEnd/statistics end is after it, even for a record ahead of
    the clock; the same on UDP and in the file."""
    from tests.export_ipfix.helpers import T0
    from tests.support.exportclock import assert_export_clock

    capture_now = T0 + 2_400_000_000  # 2.4 s after T0: the replay's clock, not the wall clock
    path = tmp_path / "flows.ipfix"
    with UdpSink() as sink:
        exporter = start(Config(destination=[f"127.0.0.1:{sink.port}"], path=str(path),
                                options_interval_s=1), clock=lambda: capture_now, start_ns=T0)
        exporter.agent_export_flows(records=[flow(i) for i in range(5)])
        ahead = flow(9, end_ns=capture_now + 1_300_000_000)  # a record 1.3 s ahead
        exporter.agent_export_flows(records=[ahead])
        exporter.agent_stop()
        udp = sink.collect()
    stamps = {}
    for name, messages in (("udp", udp), ("file", split_stream(path.read_bytes()))):
        assert_export_clock(messages, min_records=6)
        stamps[name] = [int.from_bytes(m[4:8], "big") for m in messages]
    for times in stamps.values():
        assert times[0] == -(-capture_now // 1_000_000_000)  # 2.4 s rounded up
        assert times[-1] == -(-(capture_now + 1_300_000_000) // 1_000_000_000)
        assert times == sorted(times)  # never back


def _reloaded(context: RunContext, cfg: Config, before: list, after: list,
              between: Any = None) -> list[IpfixExporter]:
    """An instance with ``cfg`` exports ``before``, then a reload replaces it with one whose
    ``refresh_rate`` differs, which exports ``after`` (``between`` runs in between)."""
    old = IpfixExporter(cfg, "export.ipfix[0]")
    old.agent_start(context)
    old.agent_export_flows(records=before)
    old.agent_stop()
    if between is not None:
        between()
    new = IpfixExporter(replace(cfg, refresh_rate=cfg.refresh_rate + 1), "export.ipfix[0]")
    new.agent_start(context)
    new.agent_export_flows(records=after)
    new.agent_stop()
    return [old, new]


def test_a_reload_from_a_fixed_source_port_continues_the_udp_session():
    """With ``source`` fixing the port, old and new sockets are the same 5-tuple and
    Observation Domain: the same transport session for the collector (RFC 7011 section 2),
    so its sequence goes on; templates are sent again first."""
    with UdpSink() as sink:
        cfg = Config(destination=[sink.endpoint], source=f"127.0.0.1:{free_udp_port()}",
                     options_interval_s=0)
        exporters = _reloaded(RunContext(), cfg, [flow(i) for i in range(30)],
                              [flow(i) for i in range(100, 130)])
        sink.wait(sum(e.counters["udp_messages"] for e in exporters))
        got = [(d.data, d.peer) for d in sink.datagrams]
    audit = WireAudit().feed_all(got)  # one session, sequence from 0, never restarted
    audit.assert_clean()
    assert len(audit.streams) == 1 and len(audit.flows()) == 60


def test_a_sampling_that_stops_with_the_reload_is_announced_by_the_replacement():
    """1/100 announced; the reload retires the sampling ingest and replaces the exporter:
    the replacement announces 1 (a new transport session, but the same exporter and
    Observation Domain to the collector, which would keep scaling by 100)."""
    context = RunContext()
    context.declare_sampling("ingest.test[0]", 100)
    with UdpSink() as sink:
        cfg = Config(destination=[sink.endpoint], options_interval_s=0)
        exporters = _reloaded(context, cfg, [flow(1)], [flow(2)],
                              lambda: context.forget_sampling("ingest.test[0]"))
        sink.wait(sum(e.counters["udp_messages"] for e in exporters))
        got = [(d.data, d.peer) for d in sink.datagrams]
    audit = WireAudit().feed_all(got)
    audit.assert_clean()
    intervals = [r.values[34] for r in audit.records if 34 in r.values]
    assert sorted(set(intervals)) == [1, 100] and intervals == sorted(intervals, reverse=True)
    assert exporters[1].counters["sampling_interval"] == 1


def test_a_file_only_replacement_announces_the_end_of_the_sampling_in_the_file(tmp_path):
    """No collector, only a file: the replacement appends to it (``file:<path>`` is its
    destination in the handover), so it takes over the sampling announced there and
    announces 1 when the reload ends it; a reader of the file would keep scaling by 100."""
    path = tmp_path / "flows.ipfix"
    context = RunContext()
    context.declare_sampling("ingest.test[0]", 100)
    cfg = Config(path=str(path), options_interval_s=0)
    exporters = _reloaded(context, cfg, [flow(1)], [flow(2)],
                          lambda: context.forget_sampling("ingest.test[0]"))
    audit = WireAudit().feed_all(split_stream(path.read_bytes()))
    intervals = [r.values[34] for r in audit.records if 34 in r.values]
    assert intervals[0] == 100 and intervals[-1] == 1
    assert exporters[1].counters["sampling_interval"] == 1
    assert len(audit.flows()) == 2


def test_a_replacement_of_an_unsampled_stream_announces_nothing(caplog):
    """No sampling ever declared: the replaced exporter's stream carried no sampling
    records, so its replacement sends none and logs no "announcing sampling off"."""
    with UdpSink() as sink, caplog.at_level("INFO"):
        cfg = Config(destination=[sink.endpoint], options_interval_s=0)
        exporters = _reloaded(RunContext(), cfg, [flow(1)], [flow(2)])
        sink.wait(sum(e.counters["udp_messages"] for e in exporters))
        got = [(d.data, d.peer) for d in sink.datagrams]
    audit = WireAudit().feed_all(got)
    audit.assert_clean()
    assert not [r for r in audit.records if 34 in r.values]
    assert "announcing sampling" not in caplog.text


def test_udp_and_file_count_a_part_of_refused_flows_once(tmp_path):
    """UDP plus a file share one encoding: a part whose every flow the encoder refuses (a
    start time before the epoch) is counted once, not encoded and counted again for the file
    because its empty list of groups read as "not encoded yet" (before: 6 and 6 for 3)."""
    records = [flow(i, start_ns=-5_000_000_000, end_ns=-4_000_000_000) for i in range(3)]
    with UdpSink() as sink:
        exporter = start(Config(destination=[sink.endpoint], path=str(tmp_path / "f.ipfix"),
                                options_interval_s=0, rate_limit=0))
        exporter.agent_export_flows(records=records)
        stats = exporter.agent_collect_stats()
        exporter.agent_stop()
    assert stats["encode_errors"] == 3 and stats["lost_records"] == 3
    assert stats["lost_packets"] == sum(r.packets for r in records)
