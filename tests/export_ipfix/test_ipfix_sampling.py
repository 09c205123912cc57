"""Packet sampling reaches IPFIX collectors: sampling Options Templates and records.

Checked on the wire (sets and bytes), with nfcapd 1.7.1 (must scale packets and bytes and mark
flows sampled) and tshark (fields shown, nothing malformed), and over TCP (a new connection
gets the sampling records before any spooled flow). Without sampling the templates and
messages do not change.
"""

from __future__ import annotations

import struct

from netflow_agent.model import SAMPLING_DETERMINISTIC, SAMPLING_RANDOM, Sampling
from netflow_agent.plugins.export_ipfix.component import IpfixExporter
from netflow_agent.plugins.export_ipfix.config import Config
from netflow_agent.plugins.export_ipfix.options import SAMPLING, SAMPLING_INTERVAL, sampling_groups
from netflow_agent.runtime import RunContext
from tests.export_ipfix.helpers import TcpCollector, flow, sets_of
from tests.export_ipfix.test_ipfix_tcp import free_tcp_port, tick_until
from tests.support.collectors import Nfcapd, UdpSink, tshark_decode

SOURCE = "ingest.ebpf[0]"


def start(cfg: Config, interval: int = 100,
          algorithm: int = SAMPLING_RANDOM) -> tuple[IpfixExporter, RunContext]:
    ctx = RunContext()
    exporter = IpfixExporter(cfg, "export.ipfix[0]")
    exporter.agent_start(ctx)  # exporters start before ingests declare
    ctx.declare_sampling(SOURCE, interval, algorithm)
    return exporter, ctx


def sampling_values(messages: list[bytes]) -> list[tuple[int, ...]]:
    """Every sampling record (template 276 and 277) in message order."""
    out = []
    for m in messages:
        for set_id, body in sets_of(m):
            if set_id == SAMPLING.template_id:
                out.append(struct.unpack_from("!IIB", body))
            elif set_id == SAMPLING_INTERVAL.template_id:
                out.append(struct.unpack_from("!II", body))
    return out


def test_templates_and_records_bytes():
    assert SAMPLING.encode() == struct.pack("!HHH HH HH HH", 276, 3, 1, 149, 4, 34, 4, 35, 1)
    assert SAMPLING_INTERVAL.encode() == struct.pack("!HHH HH HH", 277, 2, 1, 149, 4, 34, 4)
    full, interval_only = sampling_groups(Sampling(100, SAMPLING_DETERMINISTIC), 9)
    assert list(full.records) == [struct.pack("!IIB", 9, 100, 1)]
    assert list(interval_only.records) == [struct.pack("!II", 9, 100)]
    assert sampling_groups(None, 9) == []


def test_unsampled_exporter_has_no_sampling_templates():
    exporter = IpfixExporter(Config(destination=["127.0.0.1:9"]), "export.ipfix[0]")
    assert SAMPLING.template_id not in exporter.templates
    assert exporter.agent_collect_stats()["sampling_interval"] == 1


def test_udp_announces_before_the_flows_and_in_every_options_round():
    with UdpSink() as sink:
        exporter, _ = start(Config(destination=[f"127.0.0.1:{sink.port}"],
                                   observation_domain_id=3))
        exporter.agent_export_flows(records=[flow(i) for i in range(4)])
        exporter._send_options()
        exporter.agent_stop()
        messages = sink.collect()  # sent on loopback before agent_stop returned
    first_flows = next(i for i, m in enumerate(messages)
                       if any(sid == 256 for sid, _ in sets_of(m)))
    assert sampling_values(messages[:first_flows]) == [(3, 100, 2), (3, 100)]
    # the announcement, the first options round, the explicit one and the one at stop
    assert sampling_values(messages) == [(3, 100, 2), (3, 100)] * 4
    assert exporter.agent_collect_stats()["sampling_interval"] == 100
    layers = tshark_decode(messages, sink.port)  # raises on malformed frames / expert errors
    text = repr(layers)
    assert "'cflow.sampling_interval': '100'" in text
    assert "'cflow.sampling_algorithm': '2'" in text


def test_sampling_change_is_announced_at_once_and_stop_says_1():
    with UdpSink() as sink:
        exporter, ctx = start(Config(destination=[f"127.0.0.1:{sink.port}"],
                                     options_interval_s=0))
        exporter.agent_export_flows(records=[flow(1)])
        ctx.declare_sampling(SOURCE, 10, SAMPLING_DETERMINISTIC)
        exporter.agent_export_flows(records=[flow(2)])
        ctx.forget_sampling(SOURCE)
        exporter.agent_export_flows(records=[flow(3)])
        want = [(0, 100, 2), (0, 100), (0, 10, 1), (0, 10), (0, 1, 2), (0, 1)]
        # paced sends may leave from the pacing thread: wait for the last announcement
        messages = sink.wait_for(lambda got: len(sampling_values(got)) >= len(want))
    assert sampling_values(messages) == want


def test_nfcapd_scales_sampled_flows(tmp_path):
    with Nfcapd(tmp_path / "ipfix") as cap:
        exporter, _ = start(Config(destination=[f"127.0.0.1:{cap.port}"]), interval=32)
        records = [flow(i) for i in range(3)] + [flow(i, v6=True) for i in range(2)]
        exporter.agent_export_flows(records=records)
        exporter.agent_stop()  # the paced backlog sent (the pacing thread may not have yet)
        got = cap.flows()  # waits until nfcapd read what was sent
    assert "packet interval: 1, packet space: 31" in cap.log
    expected = sorted((r.packets * 32, r.octets * 32, 1) for r in records)
    assert sorted((f["packets"], f["bytes"], f["raw"]["sampled"]) for f in got) == expected


def test_tcp_new_connection_gets_sampling_before_the_spool(tmp_path):
    port = free_tcp_port()
    exporter, _ = start(Config(
        destination=[f"127.0.0.1:{port}"], transport="tcp", reconnect_interval_s=0.05,
        reconnect_max_interval_s=0.2, options_interval_s=0, spool_dir=str(tmp_path)))
    exporter.agent_export_flows(records=[flow(i) for i in range(5)])  # spooled: no collector
    collector = TcpCollector(port).start()
    try:
        tick_until(exporter, lambda: exporter.tcp[0].connected and not exporter.tcp[0].spool)
        collector.wait_for(lambda c: any(sid == 256 for m in c.messages()
                                         for sid, _ in sets_of(m)))
        messages = collector.messages()
    finally:
        exporter.agent_stop()
        collector.stop()
    first_flows = next(i for i, m in enumerate(messages)
                       if any(sid == 256 for sid, _ in sets_of(m)))
    assert sampling_values(messages[:first_flows + 1]) == [(0, 100, 2), (0, 100)]
    ids = [sid for m in messages[:first_flows + 1] for sid, _ in sets_of(m)]
    assert ids.index(SAMPLING.template_id) < ids.index(256)
