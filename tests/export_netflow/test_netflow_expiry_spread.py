"""A mass expiry bigger than the paced backlog is spread over scans, nothing lost (issue 14).

NetFlow v9 and IPFIX over UDP, both paced (their `rate_limit` and `backlog`).

Thousands of flows go idle at once, more datagrams' worth than the NetFlow exporter's paced
backlog holds. Each scan asks the exporter for its room (``agent_export_room``) and takes at
most that many flows, the most overdue first; the others wait in the cache (``agent stats``:
``expiry_deferred``) and leave in the following scans as the backlog drains. The collector
side is decoded by the PyPI ``netflow`` package: every flow arrives exactly once with its
counts, and the exporter counts no loss. Without the spread, the first scan would overflow
the backlog and lose (count) most of the records.
"""

from __future__ import annotations

import socket
import time

import pytest

from netflow_agent.model import make_key
from tests.support.collectors import UdpSink, netflow_decode, netflow_records

S = 1_000_000_000
FLOWS = 3000
BACKLOG = 40  # datagrams: about 1,000 records, a third of the expiry


def flow_packets(t0: int) -> tuple[list[tuple[bytes, int, int, int, int]], dict]:
    """1-3 packets for each of FLOWS flows (IPv4 and IPv6) at ``t0``; the truth by
    ``(source address, source port)``: ``(packets, octets)``."""
    packets, truth = [], {}
    for i in range(FLOWS):
        v6 = i % 2
        src = f"fd00::{i // 1000 + 1}" if v6 else f"10.0.{i // 1000}.1"
        family = socket.AF_INET6 if v6 else socket.AF_INET
        dst = socket.inet_pton(family, "fd00::99" if v6 else "10.9.9.9")
        key = make_key(6 if v6 else 4, 17, socket.inet_pton(family, src), dst,
                       1024 + i % 1000, 53)
        count = 1 + i % 3
        packets += [(key, 100 + i % 50, 0, t0, 0)] * count
        truth[(src, 1024 + i % 1000)] = (count, count * (100 + i % 50))
    return packets, truth


@pytest.mark.parametrize("exporter", ["netflow", "ipfix"])
def test_a_mass_expiry_larger_than_the_backlog_leaves_over_scans_exactly_once(
        make_agent, collecting_plugin, exporter):
    t0 = time.time_ns() - 60 * S
    packets, truth = flow_packets(t0)
    with UdpSink() as sink:
        agent = make_agent(f"""
[cache]
inactive_timeout = 15
[[ingest.fake]]
[[export.{exporter}]]
destination = ["{sink.endpoint}"]
{"protocol = 9" if exporter == "netflow" else "options_interval_s = 0"}
rate_limit = 2000
backlog = {BACKLOG}
""", [collecting_plugin])  # [[ingest.fake]]: the test feeds the packets
        agent.feed(packets)
        component = agent[f"export.{exporter}[0]"]
        now = t0 + 16 * S
        agent.scan(now)
        first = agent.pipeline.core_stats()
        deadline = time.monotonic() + 30
        while agent.pipeline.core_stats()["expiry_deferred"]:
            assert time.monotonic() < deadline, "deferred flows never left"
            time.sleep(0.01)  # the pacer drains the backlog in real time
            now += S // 100
            agent.scan(now)
        stats = component.agent_collect_stats()
        dest = (component.destinations if exporter == "netflow" else component.udp)[0]
        paced = dest.snapshot()
        agent.finish()
        received = sink.collect()
    assert 0 < first["expiry_deferred"] < FLOWS and first["deferred_scans"] == 1
    assert paced["backlog_peak"] <= BACKLOG and paced["backlog_dropped"] == 0
    assert stats["lost_records"] == 0 and stats["lost_packets"] == 0
    got = netflow_records(netflow_decode(received)[1])
    assert len(got) == FLOWS  # every flow exactly once, with its counts
    assert {(r["src"], r["sport"]): (r["packets"], r["bytes"]) for r in got} == truth
