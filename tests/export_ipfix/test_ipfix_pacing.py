"""IPFIX over UDP, paced (issue 14, item 3): a burst reaches a slow collector intact, and
messages lost after queueing are counted with their packets and octets."""

from __future__ import annotations

from collections import Counter

from netflow_agent.plugins.export_ipfix.component import IpfixExporter
from netflow_agent.plugins.export_ipfix.config import Config
from netflow_agent.runtime import RunContext
from tests.export_ipfix.helpers import flow
from tests.support.collectors import SlowCollector, UdpSink, netflow_decode


def exporter_for(collector: SlowCollector | UdpSink, **cfg: object) -> IpfixExporter:
    exporter = IpfixExporter(Config(destination=[f"127.0.0.1:{collector.port}"],
                                    options_interval_s=0, **cfg), "export.ipfix[0]")
    exporter.agent_start(context=RunContext())
    return exporter


def test_paced_burst_reaches_a_slow_collector():
    records = [flow(i) for i in range(40_000)]
    with SlowCollector() as collector:
        exporter = exporter_for(collector)
        exporter.agent_export_flows(records=records)
        during = exporter.agent_collect_stats()
        exporter.agent_stop()
        after = exporter.agent_collect_stats()
        dest = after["destinations"][f"127.0.0.1:{collector.port}"]
        received, dropped = collector.result(dest["packets_ok"])
    assert during["destinations"][f"127.0.0.1:{collector.port}"]["backlog"] > 0
    assert (received, dropped) == (after["udp_messages"], 0)
    assert after["udp_records"] == len(records) and after["lost_records"] == 0
    assert dest["paced"] == dest["packets_ok"] == received


def test_messages_lost_after_queueing_count_their_packets_and_octets():
    """backlog 10, 10 messages/s, no time to flush at stop: every record is either in a message
    the collector got or lost with its packets and octets, exactly. Which messages are lost
    depends on timing (a refused message may be followed by one that finds room), so the
    received records are decoded (PyPI ``netflow``) and the lost ones are the rest."""
    records = [flow(i) for i in range(3000)]
    with UdpSink() as sink:
        exporter = exporter_for(sink, refresh_rate=1, rate_limit=10, backlog=10,
                                flush_timeout_s=0)
        exporter.agent_export_flows(records=records)
        exporter.agent_stop()
        stats = exporter.agent_collect_stats()
        datagrams = sink.collect()
    _, flows = netflow_decode(datagrams, lossy=True)
    assert stats["udp_messages"] == len(datagrams)
    assert stats["udp_records"] == len(flows)
    assert stats["udp_records"] + stats["lost_records"] == len(records)
    assert stats["lost_records"] > 0
    got = Counter(f["packetDeltaCount"] for f in flows)  # flow(i) has i + 1 packets: unique
    assert max(got.values()) == 1 and set(got) <= {r.packets for r in records}
    lost = [r for r in records if r.packets not in got]
    assert stats["lost_packets"] == sum(r.packets for r in lost)
    assert stats["lost_octets"] == sum(r.octets for r in lost)
