"""NetFlow counts the packets and octets of the records it could not send (issue 14).

A flow whose datagram is lost (paced backlog full, left at close, send error) was accounted
by the agent but reaches no collector: the exporter counts its records (``lost_records``)
and, like IPFIX's notSentPackets/notSentOctets, its packets and octets (``lost_packets``,
``lost_octets``), so *traffic = packets the collector decodes + packets counted lost* holds.
The collector side is decoded by the PyPI ``netflow`` package, not our parser.
"""

from __future__ import annotations

import time

import pytest

from netflow_agent.model import FlowRecord
from netflow_agent.plugins.export_netflow.component import NetflowExporter
from netflow_agent.plugins.export_netflow.config import Config
from netflow_agent.runtime import RunContext
from tests.export_netflow.test_netflow_component import ip
from tests.support.collectors import UdpSink, netflow_decode, netflow_records


def varied_flows(n: int, version: int) -> list[FlowRecord]:
    """``n`` flows with different packet and octet counts (a sum shows any miscount)."""
    src, dst = (ip("10.0.0.1"), ip("10.0.0.2")) if version == 4 else (ip("fd00::1"), ip("fd00::2"))
    now = time.time_ns()
    return [FlowRecord(version, 17, src, dst, 1000 + i, 53, packets=1 + i % 7,
                       octets=60 * (1 + i % 7) + i % 13, start_ns=now - 2_000_000_000,
                       end_ns=now - 1_000_000_000) for i in range(n)]


@pytest.mark.parametrize(("protocol", "counters64", "version"),
                         [(5, False, 4), (9, False, 4), (9, True, 6)])
def test_backlog_overflow_counts_lost_packets_and_octets(protocol, counters64, version):
    """A 10-datagram backlog at 1 datagram/s: most of 3000 flows are lost; received +
    counted lost = every record, packet and octet exported."""
    records = varied_flows(3000, version)
    with UdpSink() as sink:
        exporter = NetflowExporter(
            Config(destination=[sink.endpoint], protocol=protocol, counters64=counters64,
                   rate_limit=1, backlog=10), "export.netflow[0]")
        exporter.agent_start(context=RunContext(start_ns=time.time_ns()))
        exporter.destinations[0].flush_timeout_s = 0
        exporter.agent_export_flows(records=records)
        during = exporter.agent_collect_stats()
        exporter.agent_stop()
        stats = exporter.agent_collect_stats()
        received = sink.collect()
    got = netflow_records(netflow_decode(received)[1])
    assert len(received) == stats["sock_ok"] >= 1
    assert during["lost_packets"] > 0  # the overflow is counted at once, not only at stop
    lost_records = stats["lost_records"]
    assert 0 < lost_records and len(got) + lost_records == len(records)
    assert stats["lost_packets"] == stats["sock0"]["lost_packets"] > 0
    assert sum(r["packets"] for r in got) + stats["lost_packets"] == sum(
        r.packets for r in records)
    assert sum(r["bytes"] for r in got) + stats["lost_octets"] == sum(r.octets for r in records)


@pytest.mark.parametrize("protocol", [5, 9])
def test_a_flow_the_encoder_refuses_is_counted_lost_with_its_packets(protocol, caplog):
    """A flow whose counters would need more than 65,536 records of 32-bit counters is
    refused by the encoder (``encode_errors``); no collector gets it, so its packets and
    octets are counted lost (stats and the stop line) and the balance holds for it."""
    records = varied_flows(3, 4)
    records[1].packets, records[1].octets = 2**40, 2**64 - 1
    with UdpSink() as sink:
        exporter = NetflowExporter(Config(destination=[sink.endpoint], protocol=protocol),
                                   "export.netflow[0]")
        exporter.agent_start(context=RunContext(start_ns=time.time_ns()))
        exporter.agent_export_flows(records=records)
        with caplog.at_level("INFO"):
            exporter.agent_stop()
        stats = exporter.agent_collect_stats()
        got = netflow_records(netflow_decode(sink.collect())[1])
    assert stats["encode_errors"] == 1 and len(got) == 2
    assert stats["lost_records"] == stats["sock0"]["lost_records"] == 1
    assert stats["lost_packets"] == stats["sock0"]["lost_packets"] == 2**40
    assert stats["lost_octets"] == stats["sock0"]["lost_octets"] == 2**64 - 1
    assert sum(r["packets"] for r in got) + stats["lost_packets"] == sum(
        r.packets for r in records)
    assert f"1 records lost ({2**40} packets, {2**64 - 1} octets)" in caplog.text
