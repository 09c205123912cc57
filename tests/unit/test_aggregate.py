"""Aggregation rules, with the seed's examples."""

from __future__ import annotations

import socket

import pytest

from netflow_agent.model import FlowRecord
from netflow_agent.stages.aggregate import (
    AggregateConfig,
    Aggregator,
    NetmaskRule,
    PortRule,
    parse_rule,
)

SEED = "192.0.0.0/8=16,10.0.0.0/8=16,80-89=80,3128=80"


def rec(src: str, dst: str, sport: int, dport: int, proto: int = 6, packets: int = 1) -> FlowRecord:
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET
    return FlowRecord(ip_version=6 if ":" in src else 4, protocol=proto,
                      src_addr=socket.inet_pton(fam, src), dst_addr=socket.inet_pton(fam, dst),
                      src_port=sport, dst_port=dport, packets=packets, octets=packets * 100,
                      start_ns=packets, end_ns=packets * 10)


def addr(b: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(b) == 16 else socket.AF_INET, b)


def test_seed_example_rewrites_both_directions():
    agg = Aggregator(AggregateConfig(rules=SEED))
    out = agg.agent_aggregate_flows(records=[rec("192.168.5.7", "10.1.2.3", 85, 3128)])
    (r,) = out
    assert (addr(r.src_addr), addr(r.dst_addr)) == ("192.168.0.0", "10.1.0.0")
    assert (r.src_port, r.dst_port) == (80, 80)
    assert (r.src_mask, r.dst_mask) == (16, 16)


def test_first_match_wins_per_kind():
    agg = Aggregator(AggregateConfig(rules=["10.0.0.0/8=16", "10.1.0.0/16=24", "80-89=80",
                                            "85=8000"]))
    (r,) = agg.agent_aggregate_flows(records=[rec("10.1.2.3", "8.8.8.8", 85, 1)])
    assert addr(r.src_addr) == "10.1.0.0" and r.src_port == 80
    assert addr(r.dst_addr) == "8.8.8.8" and r.dst_mask == 0


def test_records_on_the_same_aggregated_key_merge():
    agg = Aggregator(AggregateConfig(rules=SEED))
    out = agg.agent_aggregate_flows(records=[rec("10.9.1.1", "192.0.2.1", 81, 5, packets=2),
                                             rec("10.9.7.7", "192.0.9.9", 88, 5, packets=3)])
    (r,) = out
    assert (r.packets, r.octets, r.start_ns, r.end_ns) == (5, 500, 2, 30)
    assert agg.merged == 1


def test_ipv6_prefix_rule():
    agg = Aggregator(AggregateConfig(rules=["2001:db8::/32=48"]))
    (r,) = agg.agent_aggregate_flows(records=[rec("2001:db8:1:2::5", "2001:db8:ff:1::1", 1, 2)])
    assert addr(r.src_addr) == "2001:db8:1::" and addr(r.dst_addr) == "2001:db8:ff::"
    assert r.src_mask == 48


def test_port_rules_skip_icmp():
    agg = Aggregator(AggregateConfig(rules=["0-65535=1"]))
    (r,) = agg.agent_aggregate_flows(records=[rec("10.0.0.1", "10.0.0.2", 0, 0x0800, proto=1)])
    assert r.dst_port == 0x0800


def test_no_rules_passes_records_through():
    assert Aggregator(AggregateConfig()).agent_aggregate_flows(records=[]) is None


@pytest.mark.parametrize("text,expected", [
    ("192.0.0.0/8=16", NetmaskRule(4, 0xC0000000, 0xFF000000, 0xFFFF0000, 16)),
    ("80-89=80", PortRule(80, 89, 80)),
    ("3128=80", PortRule(3128, 3128, 80)),
])
def test_parse_rule(text, expected):
    assert parse_rule(text) == expected


@pytest.mark.parametrize("text", ["x", "1.2.3.4/8", "80-=1", "a-b=1", "10.0.0.0/8=33",
                                  "70000=1", "::/0=129"])
def test_parse_rule_rejects(text):
    with pytest.raises(ValueError):
        parse_rule(text)
