"""Export pacing against a slow collector (issue 14, item 3).

A burst of expiring flows becomes thousands of datagrams at once. The collector here keeps up
with the default rate but has a small socket buffer (256 KiB requested): unpaced, most of the
burst would be dropped at its socket, and nobody would know. Paced at the default
``rate_limit``, the burst waits in the exporter's backlog, which ``agent_collect_stats``
(hence ``agent stats``) shows, and the collector's socket drops nothing.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from netflow_agent.plugins.export_netflow.component import NetflowExporter
from netflow_agent.plugins.export_netflow.config import Config
from netflow_agent.runtime import RunContext
from netflow_agent.transport.pacing import DEFAULT_RATE_LIMIT
from tests.export_netflow.test_netflow_component import flows
from tests.support.collectors import Nfcapd, SlowCollector, udp_drops


def test_burst_is_paced_and_the_slow_collector_drops_nothing():
    records = flows(60_000)  # about 2000 v9 datagrams in one export
    with SlowCollector() as collector:
        exporter = NetflowExporter(
            Config(destination=[f"127.0.0.1:{collector.port}"], protocol=9),
            "export.netflow[0]")
        exporter.agent_start(context=RunContext(start_ns=time.time_ns()))
        assert exporter.config.rate_limit == DEFAULT_RATE_LIMIT
        exporter.agent_export_flows(records=records)
        during = exporter.agent_collect_stats()
        exporter.agent_stop()  # sends the backlog at the paced rate, then closes
        after = exporter.agent_collect_stats()
        received, dropped_at_collector = collector.result(after["sock_ok"])
    pdus = after["pdus"]
    assert pdus > 1000
    assert during["backlog"] > 0 and during["sock0"]["backlog"] == during["backlog"]
    assert during["sock0"]["rate_limit"] == DEFAULT_RATE_LIMIT
    assert after["backlog"] == 0 and after["sock0"]["backlog_peak"] >= during["backlog"]
    assert after["sock0"]["paced"] == pdus and after["sock_ok"] == pdus
    assert after["lost_records"] == 0 and after["sock0"]["backlog_dropped"] == 0
    assert (received, dropped_at_collector) == (pdus, 0)


def test_backlog_overflow_is_counted_as_lost_records():
    """A backlog of 10 datagrams at 10 datagrams/s against a burst of about 100: what does
    not fit is lost and counted, and what is still queued when the flush time runs out at stop
    is counted too. (At stop the backlog is sent at the paced rate: 1 s here.)"""
    records = flows(3000)
    with SlowCollector() as collector:
        exporter = NetflowExporter(
            Config(destination=[f"127.0.0.1:{collector.port}"], protocol=9, rate_limit=10,
                   backlog=10), "export.netflow[0]")
        exporter.agent_start(context=RunContext(start_ns=time.time_ns()))
        exporter.destinations[0].flush_timeout_s = 0
        exporter.agent_export_flows(records=records)
        exporter.agent_stop()
        stats = exporter.agent_collect_stats()
        received, _ = collector.result(stats["sock0"]["packets_ok"])
    sock = stats["sock0"]
    assert stats["pdus"] > 10
    assert sock["backlog_dropped"] == stats["pdus"] - sock["packets_ok"]
    assert sock["packets_ok"] == received  # at most the one token it starts with
    assert stats["records_encoded"] == len(records)
    assert 0 < stats["lost_records"] == sock["backlog_dropped_records"] <= len(records)


def test_final_export_at_shutdown_waits_for_the_backlog():
    """RunContext.stopping: the last export waits for room instead of dropping, so a
    backlog far smaller than the burst still delivers every datagram."""
    records = flows(3000)
    with SlowCollector() as collector:
        context = RunContext(start_ns=time.time_ns())
        exporter = NetflowExporter(
            Config(destination=[f"127.0.0.1:{collector.port}"], protocol=9, rate_limit=2000,
                   backlog=10), "export.netflow[0]")
        exporter.agent_start(context=context)
        context.stopping = True
        exporter.agent_export_flows(records=records)
        exporter.agent_stop()
        stats = exporter.agent_collect_stats()
        received, dropped = collector.result(stats["sock_ok"])
    assert stats["pdus"] > 10
    assert (received, dropped) == (stats["pdus"], 0)
    assert stats["lost_records"] == 0 and stats["sock0"]["backlog_peak"] <= 10


def export_to_nfcapd(tmp_path, records: list, config: Config, *, stopping: bool = False,
                     started: Callable[[NetflowExporter], None] = lambda exporter: None,
                     ) -> tuple[dict, int, list[dict]]:
    """Export ``records`` with ``config`` (its destination set to a fresh nfcapd) and stop,
    ``stopping`` as the final export at stop does; the exporter's stats, the datagrams
    nfcapd's socket dropped, and the flows nfdump reads back. ``started`` sees the exporter
    once it is connected."""
    with Nfcapd(tmp_path / "nfcapd") as collector:
        context = RunContext(start_ns=time.time_ns())
        exporter = NetflowExporter(
            dataclasses.replace(config, destination=[f"127.0.0.1:{collector.port}"]),
            "export.netflow[0]")
        exporter.agent_start(context=context)
        started(exporter)
        context.stopping = stopping  # the final export: queued as it leaves, nothing dropped
        exporter.agent_export_flows(records=records)
        exporter.agent_stop()
        stats = exporter.agent_collect_stats()
        collector.wait_drained()
        return stats, udp_drops(collector.port), collector.flows()


def test_a_final_export_reaches_nfcapd_whole_at_the_default_rate(tmp_path):
    """The stop's export of 60,000 flows (about 2,000 v9 datagrams, sent a burst per
    ``sendmmsg`` at the default rate) to a real nfcapd with its default socket buffer: nfdump
    reads back every flow and packet, and nfcapd's socket dropped nothing."""
    records = flows(60_000)
    stats, dropped, got = export_to_nfcapd(
        tmp_path, records, Config(destination=[], protocol=9), stopping=True)
    assert stats["lost_records"] == 0 and stats["sock_ok"] == stats["pdus"] > 1000
    assert stats["sock0"]["rate_limit"] == DEFAULT_RATE_LIMIT and dropped == 0
    assert len(got) == len(records)
    assert sorted(f["sport"] for f in got) == [r.src_port for r in records]
    assert sum(f["packets"] for f in got) == 2 * len(records)
