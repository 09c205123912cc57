"""Aggregation rules (ipt_NETFLOW ``aggregation=``), with the seed's examples: the key rewrite
(agent/keyrules.py) and the cache applying it per packet, per kernel delta and on restore."""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter

import pytest

from netflow_agent import keyrules
from netflow_agent.keyrules import KeyRules, NetmaskRule, PortRule, parse_rule
from netflow_agent.model import FlowBatch, FlowDelta, FlowRecord, PacketBatch, make_key, split_key
from netflow_agent.stages.cache import CacheConfig, FlowCache
from tests.support.aggregation import SEED_RULES, seed_aggregate, thousand_hosts

SEED = SEED_RULES
S = 1_000_000_000
T0 = 1_700_000_000 * S


def key(src: str, dst: str, sport: int, dport: int, proto: int = 6) -> bytes:
    fam, version = (socket.AF_INET6, 6) if ":" in src else (socket.AF_INET, 4)
    return make_key(version, proto, socket.inet_pton(fam, src), socket.inet_pton(fam, dst),
                    sport, dport)


def shown(k: bytes) -> tuple[str, str, int, int]:
    f = split_key(k)
    return (str(ipaddress.ip_address(f.src_addr)), str(ipaddress.ip_address(f.dst_addr)),
            f.src_port, f.dst_port)


def feed(cache: FlowCache, packets: list[tuple[bytes, int, int, int, int]]) -> None:
    cache.agent_cache_packets(batch=PacketBatch("test", packets), now_ns=0)


def drain(cache: FlowCache) -> list[FlowRecord]:
    return cache.agent_cache_expire(now_ns=T0 + 3600 * S, force=True)


# --- the rewrite -----------------------------------------------------------------------------

def test_seed_example_rewrites_both_directions_and_reports_masks():
    new, masks = KeyRules(SEED).rewrite(key("192.168.5.7", "10.1.2.3", 85, 3128))
    assert shown(new) == ("192.168.0.0", "10.1.0.0", 80, 80)
    assert (masks >> 8, masks & 0xFF) == (16, 16)


def test_first_match_wins_per_kind():
    rules = KeyRules(["10.0.0.0/8=16", "10.1.0.0/16=24", "80-89=80", "85=8000"])
    new, masks = rules.rewrite(key("10.1.2.3", "8.8.8.8", 85, 1))
    assert shown(new) == ("10.1.0.0", "8.8.8.8", 80, 1)
    assert (masks >> 8, masks & 0xFF) == (16, 0)


def test_ipv6_prefix_rule():
    new, masks = KeyRules(["2001:db8::/32=48"]).rewrite(
        key("2001:db8:1:2::5", "2001:db8:ff:1::1", 1, 2))
    assert shown(new)[:2] == ("2001:db8:1::", "2001:db8:ff::")
    assert masks == 48 << 8 | 48


def test_a_rule_to_length_zero_rewrites_and_an_unchanged_address_keeps_its_mask():
    rules = KeyRules(["10.0.0.0/8=0", "192.168.0.0/16=24"])
    new, masks = rules.rewrite(key("10.1.2.3", "192.168.7.0", 1, 2))
    assert shown(new) == ("0.0.0.0", "192.168.7.0", 1, 2)
    assert (masks >> 8, masks & 0xFF) == (0, 24)


def test_the_schemas_optional_key_fields_are_kept():
    base = key("192.168.5.7", "10.1.2.3", 85, 3128)
    new, _ = KeyRules(SEED).rewrite(base + b"\x00\x64\xaa\xbb")  # e.g. a VLAN id and more
    assert new[-4:] == b"\x00\x64\xaa\xbb" and len(new) == len(base) + 4
    assert shown(new) == ("192.168.0.0", "10.1.0.0", 80, 80)


def test_port_rules_skip_icmp():
    new, _ = KeyRules(["0-65535=1"]).rewrite(key("10.0.0.1", "10.0.0.2", 0, 0x0800, proto=1))
    assert shown(new)[3] == 0x0800


def test_memo_restarts_when_full_and_keeps_answers_right(monkeypatch):
    monkeypatch.setattr(keyrules, "MEMO_MAX", 8)
    rules = KeyRules(SEED)
    for n in range(50):
        packets = [(key(f"192.{n}.0.{h}", "10.9.9.9", 1000, 81), 60, 0, T0, 0) for h in range(3)]
        out = rules.rewrite_packets(packets)
        assert {shown(k) for k, *_ in out} == {(f"192.{n}.0.0", "10.9.0.0", 1000, 80)}
        assert rules.masks(out[0][0]) == 16 << 8 | 16
        assert len(rules._memo) <= 8 + 3


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


def test_cache_config_names_the_bad_rule():
    issues = CacheConfig(aggregation=["10.0.0.0/8=16", "80-70=80"]).check()
    assert [(i.path, i.message) for i in issues] == [
        ("aggregation[1]", "'80-70=80': ports must be 0..65535 with LOW <= HIGH")]


# --- the cache, per packet (the issue's acceptance, at unit level) -----------------------------

def acceptance_packets() -> list[tuple[bytes, int, int, int, int]]:
    """The acceptance traffic as packets (ACK only), 1 ms apart per host."""
    return [(key(f.src, f.dst, f.sport, f.dport), 60 + n + h % 50, 0x10,
             T0 + (h * 3 + n) * 1_000_000, 0)
            for h, f in enumerate(thousand_hosts()) for n in range(f.packets)]


def oracle(packets) -> Counter:
    """Packets and bytes per aggregated flow, by :func:`seed_aggregate` (not keyrules)."""
    want: Counter = Counter()
    for k, length, *_ in packets:
        ident = seed_aggregate(*shown(k))
        want[(*ident, "p")] += 1
        want[(*ident, "b")] += length
    return want


def test_thousand_hosts_leave_one_cache_entry_per_aggregated_key():
    packets = acceptance_packets()
    want = oracle(packets)
    flows = len(want) // 2
    cache = FlowCache(CacheConfig(aggregation=SEED, maxflows=flows))  # room for exactly these
    for start in range(0, len(packets), 256):
        feed(cache, packets[start:start + 256])
    assert cache.active_flows == flows == 4 * 3 * 2  # /16 sources x /16 servers x src ports
    st = cache.stats
    assert (st.new, st.found, st.maxflows, st.drop_packets) == (
        flows, len(packets) - flows, 0, 0)
    got: Counter = Counter()
    for r in drain(cache):
        ident = (str(ipaddress.ip_address(r.src_addr)), str(ipaddress.ip_address(r.dst_addr)),
                 r.src_port, r.dst_port)
        got[(*ident, "p")] += r.packets
        got[(*ident, "b")] += r.octets
        assert (r.src_mask, r.dst_mask) == (16, 16)
    assert got == want


def test_without_rules_the_same_traffic_overflows_maxflows():
    packets = acceptance_packets()
    cache = FlowCache(CacheConfig(maxflows=24))
    feed(cache, packets)
    assert cache.active_flows == 24 and cache.stats.maxflows > 0


def test_unmatched_addresses_keep_their_key_and_no_mask():
    cache = FlowCache(CacheConfig(aggregation=SEED))
    feed(cache, [(key("172.16.0.1", "8.8.8.8", 5000, 53, proto=17), 80, 0, T0, 0)])
    (r,) = drain(cache)
    assert shown(r.key()) == ("172.16.0.1", "8.8.8.8", 5000, 53)
    assert (r.src_mask, r.dst_mask) == (0, 0)


# --- kernel deltas (eBPF, NFLOG C decoder) and restore ----------------------------------------

def test_kernel_deltas_merge_into_aggregated_flows():
    cache = FlowCache(CacheConfig(aggregation=SEED))
    deltas = [FlowDelta(key(f"192.168.{h}.{h}", "10.20.30.40", 40000, 80 + h), 2, 200 + h,
                        T0 + h * S, T0 + (h + 1) * S, tcp_flags=0x02 << (h % 2))
              for h in range(10)]
    cache.agent_cache_flows(batch=FlowBatch("ingest.ebpf[0]", deltas[:6]), now_ns=0)
    cache.agent_cache_flows(batch=FlowBatch("ingest.ebpf[0]", deltas[6:]), now_ns=0)
    assert cache.active_flows == 1
    assert (cache.stats.new, cache.stats.found, cache.stats.traffic_packets) == (1, 9, 20)
    (r,) = drain(cache)
    assert shown(r.key()) == ("192.168.0.0", "10.20.0.0", 40000, 80)
    assert (r.packets, r.octets, r.start_ns, r.end_ns) == (20, 2045, T0, T0 + 10 * S)
    assert (r.tcp_flags, r.src_mask, r.dst_mask) == (0x06, 16, 16)


def test_maxflows_counts_aggregated_kernel_flows():
    cache = FlowCache(CacheConfig(aggregation=SEED, maxflows=1))
    deltas = [FlowDelta(key(f"192.{n}.1.1", "10.0.0.1", 1, 80), 1, 100, T0, T0)
              for n in (5, 5, 6)]
    cache.agent_cache_flows(batch=FlowBatch("ingest.ebpf[0]", deltas), now_ns=0)
    assert cache.active_flows == 1
    assert (cache.stats.maxflows, cache.stats.drop_packets, cache.stats.drop_bytes) == (1, 1, 100)


def test_restore_aggregates_flows_saved_without_rules():
    plain = FlowCache(CacheConfig())
    feed(plain, [(key(f"192.0.2.{h}", "10.1.1.1", 1000, 85), 100, 0, T0 + h, 0)
                 for h in range(1, 6)])
    rows = plain.dump()
    assert len(rows) == 5
    cache = FlowCache(CacheConfig(aggregation=SEED))
    assert cache.restore(rows) == 5
    assert cache.active_flows == 1 and cache.stats.new == 0
    (r,) = drain(cache)
    assert (r.packets, r.octets, r.start_ns, r.src_mask) == (5, 500, T0 + 1, 16)


def test_aggregated_flows_survive_dump_and_restore_with_their_masks():
    cache = FlowCache(CacheConfig(aggregation=SEED))
    feed(cache, [(key("192.0.2.1", "10.1.1.1", 1000, 85), 100, 0, T0, 0)])
    again = FlowCache(CacheConfig(aggregation=SEED))
    again.restore(cache.dump())
    (r,) = drain(again)
    assert (shown(r.key()), r.src_mask, r.dst_mask) == (
        ("192.0.0.0", "10.1.0.0", 1000, 80), 16, 16)
