"""Aggregation rules (ipt_NETFLOW ``aggregation=``), with the seed's examples: the key rewrite
(agent/keyrules.py) and the cache applying it per packet, per kernel delta and on restore."""

from __future__ import annotations

import ipaddress
import random
import socket
from collections import Counter

import numpy as np
import pytest

from netflow_agent import keyrules
from netflow_agent.keyrules import KeyRules, NetmaskRule, PortRule, parse_rule, split_rules
from netflow_agent.logutil import FLOW_DEBUG
from netflow_agent.model import FlowBatch, FlowDelta, FlowRecord, PacketBatch, make_key, split_key
from netflow_agent.runtime import RunContext
from netflow_agent.stages.cache import CacheConfig, FlowCache
from netflow_agent.stages.flowtable import FlowTable
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


# --- columns vs the per-key rewrite -------------------------------------------------------------

RULE_SETS = [
    SEED,
    ["10.1.0.0/16=24", "10.0.0.0/8=16", "0.0.0.0/0=8", "2001:db8:1::/48=64",
     "2001:db8::/32=48", "::/0=0", "80-89=80", "0-1023=1", "3128=80"],
    ["2001:db8::/32=48", "fe80::/10=127", "192.168.0.0/16=32", "1000-2000=0", "0=65535"],
]
PROTOCOLS = (1, 6, 17, 33, 47, 58, 132, 136)  # ICMP, TCP, UDP, DCCP, GRE, ICMPv6, SCTP, UDP-Lite
NEAR = ("10.1.2.3", "10.200.0.1", "192.168.9.9", "192.0.2.1", "172.16.0.1", "2001:db8:1::5",
        "2001:db8:ffff::1", "fe80::1", "2002::1")


def per_key_rewrite(texts: str | list[str], k: bytes) -> tuple[bytes, int]:
    """The rewrite one key at a time, as the memoized implementation computed it (the
    reference: split, first netmask and port rule of each kind, repack)."""
    rules = [parse_rule(t) for t in split_rules(texts)]
    f = split_key(k)

    def addr(raw: bytes) -> tuple[bytes, int]:
        value = int.from_bytes(raw, "big")
        for r in rules:
            if isinstance(r, NetmaskRule) and r.version == f.ip_version \
                    and value & r.mask == r.net:
                return (value & r.newmask).to_bytes(len(raw), "big"), r.newlen
        return raw, 0

    def port(p: int) -> int:
        if f.protocol not in (6, 17, 33, 132, 136):
            return p
        return next((r.port for r in rules if isinstance(r, PortRule) and r.low <= p <= r.high),
                    p)

    (src, smask), (dst, dmask) = addr(f.src_addr), addr(f.dst_addr)
    new = make_key(f.ip_version, f.protocol, src, dst, port(f.src_port), port(f.dst_port),
                   f.tos, f.in_if, f.direction, k[44:])
    return new, smask << 8 | dmask


def random_keys(n: int, seed: int, ext: bytes = b"", directions: int = 2) -> list[bytes]:
    """Mixed IPv4/IPv6 keys of every kind of protocol; addresses near the rules' prefixes or
    anywhere, ports in and out of the rules' ranges (ingress only with ``directions=1``: an
    exported egress record names its interface elsewhere than its key did)."""
    rng = random.Random(seed)

    def address(version: int) -> bytes:
        fam, size = (socket.AF_INET, 4) if version == 4 else (socket.AF_INET6, 16)
        if rng.random() < 0.3:
            return rng.randbytes(size)
        base = rng.choice([a for a in NEAR if (":" in a) == (version == 6)])
        raw = bytearray(socket.inet_pton(fam, base))
        for b in range(rng.randrange(size // 2, size), size):  # vary the host part
            raw[b] = rng.randrange(256)
        return bytes(raw)

    def port() -> int:
        return rng.choice([rng.randrange(65536), rng.randrange(70, 100), 3128, 0, 65535,
                           rng.randrange(900, 2100)])

    out = []
    for _ in range(n):
        v = rng.choice((4, 6))
        out.append(make_key(v, rng.choice(PROTOCOLS), address(v), address(v), port(), port(),
                            rng.randrange(4), rng.randrange(3), rng.randrange(directions), ext))
    return out


@pytest.mark.parametrize("texts", RULE_SETS, ids=["seed", "overlapping", "ipv6"])
def test_the_column_rewrite_equals_the_per_key_rewrite_on_random_keys(texts):
    rules = KeyRules(texts)
    for ext in (b"", b"\x00\x64\xaa\xbb"):  # the schema's optional key fields kept as well
        keys = random_keys(3000, seed=len(texts) + len(ext), ext=ext)
        want = [per_key_rewrite(rules.texts, k) for k in keys]
        assert [rules.rewrite(k) for k in keys[:200]] == want[:200]
        rows = np.frombuffer(b"".join(keys), f"V{len(keys[0])}").copy()
        masks = rules.apply(rows.view(keyrules._key_dtype(len(keys[0]))))
        assert [bytes(r) for r in rows.tolist()] == [k for k, _ in want]
        assert masks.tolist() == [m for _, m in want]
        assert any(k != new for k, (new, _) in zip(keys, want, strict=True))


def expected_flows(texts: str | list[str], keys: list[bytes]) -> dict[bytes, tuple[int, int]]:
    """Aggregated key -> (packets, masks of the row that created it), per key."""
    out: dict[bytes, tuple[int, int]] = {}
    for n, k in enumerate(keys):
        new, masks = per_key_rewrite(texts, k)
        packets, first = out.get(new, (0, masks))
        out[new] = (packets + 1 + n % 3, first)
    return out


def exported(cache: FlowCache) -> dict[bytes, tuple[int, int]]:
    return {r.key(): (r.packets, r.src_mask << 8 | r.dst_mask) for r in drain(cache)}


@pytest.mark.parametrize("texts", RULE_SETS, ids=["seed", "overlapping", "ipv6"])
def test_rules_export_the_per_key_flows_and_masks_from_packets_and_deltas(texts):
    keys = random_keys(4000, seed=7, directions=1)
    keys += keys[::5]  # flows met again in later batches
    want = expected_flows(texts, keys)
    assert len(want) < len(set(keys))  # the rules fold some flows together
    by_packets = FlowCache(CacheConfig(aggregation=texts))
    by_deltas = FlowCache(CacheConfig(aggregation=texts))
    for lo in range(0, len(keys), 1000):
        part = range(lo, min(lo + 1000, len(keys)))
        feed(by_packets, [(keys[n], 60, 0, T0 + n, 0) for n in part for _ in range(1 + n % 3)])
        by_deltas.agent_cache_flows(batch=FlowBatch("ingest.ebpf[0]", [
            FlowDelta(keys[n], 1 + n % 3, 60, T0 + n, T0 + n) for n in part]), now_ns=0)
    assert by_packets.active_flows == by_deltas.active_flows == len(want)
    assert exported(by_packets) == want
    assert exported(by_deltas) == want


def test_kernel_batches_with_rules_take_the_c_merge(monkeypatch):
    merged: list[int] = []
    real = FlowTable.merge_records

    def spy(self, flows, layout, limit=0):
        merged.append(len(flows))
        return real(self, flows, layout, limit)

    monkeypatch.setattr(FlowTable, "merge_records", spy)
    cache = FlowCache(CacheConfig(aggregation=SEED, sampler="hash:2"))
    batch = FlowBatch("ingest.ebpf[0]", [FlowDelta(k, 1, 60, T0, T0)
                                         for k in random_keys(500, seed=3)])
    rows = batch.flows.copy()
    cache.agent_cache_flows(batch=batch, now_ns=0)
    assert merged and sum(merged) == cache.stats.search > 0
    assert (batch.flows == rows).all()  # the ingest's rows are not rewritten in place


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


# --- masks of folded flows -------------------------------------------------------------------

FOLD = "10.1.0.0/16=8"  # 10.1.2.3 -> 10.0.0.0 (mask 8): the key of 10.0.0.0 (no rule, mask 0)
PATHS = ["packets", "deltas", "deltas-numpy"]


def cache_on(path: str, **options) -> FlowCache:
    """A cache with ``options``; ``deltas-numpy``: per-flow debug lines, so flow deltas merge
    with NumPy rather than in C."""
    cache = FlowCache(CacheConfig(**options))
    if path == "deltas-numpy":
        cache.agent_start(context=RunContext(debug=FLOW_DEBUG))
    return cache


def send(cache: FlowCache, path: str, keys: list[bytes]) -> None:
    """One packet of 60 bytes per key, as a packet batch or as kernel flow deltas."""
    if path == "packets":
        feed(cache, [(k, 60, 0, T0 + n, 0) for n, k in enumerate(keys)])
    else:
        cache.agent_cache_flows(batch=FlowBatch("ingest.ebpf[0]", [
            FlowDelta(k, 1, 60, T0 + n, T0 + n) for n, k in enumerate(keys)]), now_ns=0)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("batches", [1, 2])
@pytest.mark.parametrize("first", ["10.0.0.0", "10.1.2.3"])
def test_a_flow_folded_from_keys_with_other_masks_keeps_the_creating_rows_masks(
        path, batches, first):
    other = "10.1.2.3" if first == "10.0.0.0" else "10.0.0.0"
    keys = [key(first, "8.8.8.8", 1000, 53), key(other, "8.8.8.8", 1000, 53)]
    cache = cache_on(path, aggregation=FOLD)
    for part in [keys] if batches == 1 else [[k] for k in keys]:
        send(cache, path, part)
    (r,) = drain(cache)
    assert (shown(r.key())[0], r.packets) == ("10.0.0.0", 2)
    assert (r.src_mask, r.dst_mask) == (8 if first == "10.1.2.3" else 0, 0)


@pytest.mark.parametrize("path", PATHS)
def test_rows_refused_at_maxflows_leave_the_masks_of_the_flows_created(path):
    """The table holds one flow (maxflows 2); of a batch of new keys only the first is
    taken: the refused rows' masks must not shift onto the flows that are created."""
    cache = cache_on(path, aggregation=SEED, maxflows=2)
    send(cache, path, [key("8.8.4.4", "8.8.8.8", 1, 2)])  # no rule: masks 0
    send(cache, path, [key("192.168.1.1", "8.8.8.8", 1, 2),  # created: /16
                       key("8.8.4.4", "8.8.8.8", 1, 2),  # found
                       key("1.1.1.1", "8.8.8.8", 1, 2),  # refused
                       key("10.9.9.9", "8.8.8.8", 1, 2)])  # refused
    got = {shown(r.key())[0]: (r.packets, r.src_mask, r.dst_mask) for r in drain(cache)}
    assert got == {"8.8.4.4": (2, 0, 0), "192.168.0.0": (1, 16, 0)}
    assert cache.stats.maxflows == 2


def test_the_rewrite_refuses_masks_that_are_not_uint16():
    """Six bytes for three rows, but as uint8: the C writes 16-bit masks into them."""
    rules = KeyRules(SEED)
    rows = np.frombuffer(b"".join(random_keys(3, seed=1)), "V44").copy()
    dtype = keyrules._key_dtype(44)
    with pytest.raises(ValueError, match="masks"):
        keyrules.rewrite_keys(rows, 44, keyrules._fields(dtype), rules._cuts,
                              rules.port_map, keyrules._WITH_PORTS, np.zeros(6, np.uint8))


def test_kernel_rows_with_ports_in_two_byte_orders_aggregate_as_any_other():
    """A record layout whose ports differ in byte order is merged with NumPy: the C merge's
    rewrite reads both ports in one order and would refuse the batch."""
    keys = random_keys(500, seed=5, directions=1)
    flows = FlowBatch("x", [FlowDelta(k, 1, 60, T0, T0) for k in keys]).flows
    mixed = flows.astype([(n, ">u2" if n == "dst_port" else t) for n, t in flows.dtype.descr])
    assert mixed.dtype["dst_port"].isnative != mixed.dtype["src_port"].isnative
    caches = [FlowCache(CacheConfig(aggregation=SEED)) for _ in range(2)]
    for cache, rows in zip(caches, (flows, mixed), strict=True):
        cache.agent_cache_flows(batch=FlowBatch("ingest.ebpf[0]", rows), now_ns=0)
    want = {k: m for k, (_packets, m) in expected_flows(SEED, keys).items()}
    got = [{k: m for k, (_packets, m) in exported(cache).items()} for cache in caches]
    assert got[1] == got[0] == want and any(m for m in want.values())


@pytest.mark.parametrize("size", [0, 20, 43])
def test_rewriting_a_key_shorter_than_the_base_key_says_so(size):
    with pytest.raises(ValueError, match="base key"):
        KeyRules(SEED).rewrite(bytes(size))
