"""``[[aggregate.route]]`` with a fake route source: filling rules, dedupe, cache TTL and bound,
override, unroutable and failing lookups, config checks. No privileges, no kernel."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from netflow_agent.config.check import validate
from netflow_agent.discovery import build_registry, make_manager
from netflow_agent.model import FlowRecord
from netflow_agent.plugins.aggregate_route.component import RouteAggregator
from netflow_agent.plugins.aggregate_route.config import Config
from netflow_agent.plugins.aggregate_route.routes import Route, RouteCache

TABLE = {  # prefix -> (gateway, oif), like a router's FIB
    "10.1.0.0/16": ("10.9.0.2", 3),  # remote, via a gateway
    "10.9.0.0/24": (None, 3),  # directly connected
    "10.2.0.0/20": ("10.8.0.1", 2),  # where sources live
    "10.8.0.0/24": (None, 2),
    "fd00:1::/48": ("fd00:9::2", 3),
    "fd00:9::/64": (None, 3),
}


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


class FakeRoutes:
    """Longest-prefix match over :data:`TABLE`; remembers every address asked for."""

    def __init__(self, table: dict = TABLE):
        self.nets = sorted(((ipaddress.ip_network(p), gw, oif) for p, (gw, oif) in table.items()),
                           key=lambda n: -n[0].prefixlen)
        self.asked: list[bytes] = []
        self.fail = False

    def __call__(self, addr: bytes) -> Route | None:
        self.asked.append(addr)
        if self.fail:
            raise OSError(9, "Bad file descriptor")
        target = ipaddress.ip_address(addr)
        for net, gw, oif in self.nets:
            if target.version == net.version and target in net:
                return Route(net.prefixlen, ip(gw) if gw else b"", oif)
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(src: str, dst: str, **kw) -> FlowRecord:
    version = ipaddress.ip_address(src).version
    return FlowRecord(version, 17, ip(src), ip(dst), 1000, 53, packets=1, octets=60, **kw)


def make(routes: FakeRoutes | None = None, clock: Clock | None = None, **cfg) -> RouteAggregator:
    return RouteAggregator(Config(**cfg), "aggregate.route[0]", lookup=routes or FakeRoutes(),
                           clock=clock or Clock())


def test_routed_destination_gets_next_hop_masks_and_out_if():
    agg = make()
    rec = record("10.2.3.4", "10.1.7.7")
    assert agg.agent_aggregate_flows(records=[rec]) is None  # changed in place
    assert (rec.next_hop, rec.dst_mask, rec.src_mask, rec.out_if) == (ip("10.9.0.2"), 16, 20, 3)


def test_connected_destination_has_no_next_hop():
    agg = make()
    rec = record("10.8.0.5", "10.9.0.7")
    agg.agent_aggregate_flows(records=[rec])
    assert (rec.next_hop, rec.dst_mask, rec.src_mask, rec.out_if) == (b"", 24, 24, 3)


def test_ipv6():
    agg = make()
    rec = record("fd00:9::5", "fd00:1:0:7::1")
    agg.agent_aggregate_flows(records=[rec])
    assert (rec.next_hop, rec.dst_mask, rec.src_mask, rec.out_if) == (ip("fd00:9::2"), 48, 64, 3)


def test_addresses_are_looked_up_once_per_call_and_then_cached():
    routes = FakeRoutes()
    agg = make(routes)
    recs = [record("10.2.0.1", "10.1.0.1") for _ in range(50)] + [record("10.1.0.1", "10.2.0.1")]
    agg.agent_aggregate_flows(records=recs)
    assert sorted(routes.asked) == sorted([ip("10.2.0.1"), ip("10.1.0.1")])
    agg.agent_aggregate_flows(records=[record("10.2.0.1", "10.1.0.1")])
    stats = agg.agent_collect_stats()
    assert (stats["lookups"], stats["cache_hits"], stats["cache_entries"]) == (2, 2, 2)
    assert (stats["records"], stats["enriched"]) == (52, 52)


def test_cache_entries_expire_after_ttl():
    routes, clock = FakeRoutes(), Clock()
    agg = make(routes, clock, cache_ttl_s=60, fields=["dst_mask"])
    agg.agent_aggregate_flows(records=[record("10.2.0.1", "10.1.0.1")])
    clock.now += 59.9
    agg.agent_aggregate_flows(records=[record("10.2.0.1", "10.1.0.1")])
    assert len(routes.asked) == 1
    clock.now += 0.1
    agg.agent_aggregate_flows(records=[record("10.2.0.1", "10.1.0.1")])
    assert len(routes.asked) == 2
    assert agg.agent_collect_stats()["cache_hits"] == 1


def test_ttl_zero_never_caches():
    routes = FakeRoutes()
    agg = make(routes, cache_ttl_s=0, fields=["dst_mask"])
    for _ in range(3):
        agg.agent_aggregate_flows(records=[record("10.2.0.1", "10.1.0.1")])
    assert len(routes.asked) == 3
    assert agg.agent_collect_stats()["cache_entries"] == 0


def test_cache_is_bounded_least_recently_used_first():
    routes = FakeRoutes()
    agg = make(routes, max_cache_entries=2, fields=["dst_mask"])
    for dst in ("10.1.0.1", "10.1.0.2", "10.1.0.1", "10.1.0.3"):  # .1 used again before .3
        agg.agent_aggregate_flows(records=[record("10.2.0.1", dst)])
    assert set(agg.cache.entries) == {ip("10.1.0.1"), ip("10.1.0.3")}
    stats = agg.agent_collect_stats()
    assert (stats["cache_entries"], stats["cache_evicted"], stats["lookups"]) == (2, 1, 3)
    agg.agent_aggregate_flows(records=[record("10.2.0.1", "10.1.0.2")])  # evicted: asked again
    assert routes.asked.count(ip("10.1.0.2")) == 2


def test_lookups_per_round_are_bounded_and_the_rest_deferred():
    routes = FakeRoutes()
    agg = make(routes, max_lookups_per_round=2, fields=["dst_mask"])
    recs = [record("10.2.0.1", f"10.1.0.{n}") for n in range(1, 6)]
    agg.agent_aggregate_flows(records=recs)
    assert len(routes.asked) == 2
    assert sorted(r.dst_mask for r in recs) == [0, 0, 0, 16, 16]
    stats = agg.agent_collect_stats()
    assert (stats["lookups_deferred"], stats["unroutable_records"], stats["enriched"]) == (3, 0, 2)
    for _ in range(2):  # later rounds answer the rest; cached ones cost nothing
        agg.agent_aggregate_flows(records=recs)
    assert [r.dst_mask for r in recs] == [16] * 5
    assert len(routes.asked) == 5


def test_route_cache_directly():
    cache = RouteCache(ttl_s=10, max_entries=1)
    cache.put(b"a", None, now=0)
    assert cache.get(b"a", now=9.9) == (True, None)  # "no route" is an answer too
    assert cache.get(b"a", now=10) == (False, None)
    assert not cache.entries


def test_override_false_keeps_known_values_and_fills_unknown_ones():
    agg = make()
    rec = record("10.2.3.4", "10.1.7.7", src_mask=8, out_if=9)  # e.g. from [aggregate] rules
    agg.agent_aggregate_flows(records=[rec])
    assert (rec.src_mask, rec.out_if) == (8, 9)
    assert (rec.dst_mask, rec.next_hop) == (16, ip("10.9.0.2"))


def test_override_true_replaces_known_values_but_unknown_answers_never_clear():
    agg = make(override=True)
    rec = record("10.2.3.4", "10.9.0.7", src_mask=8, dst_mask=8, out_if=9,
                 next_hop=ip("10.0.0.1"))
    agg.agent_aggregate_flows(records=[rec])
    assert (rec.src_mask, rec.dst_mask, rec.out_if) == (20, 24, 3)
    assert rec.next_hop == ip("10.0.0.1")  # connected: no gateway to replace it with


def test_records_with_every_field_known_are_not_looked_up():
    routes = FakeRoutes()
    agg = make(routes)
    rec = record("10.2.3.4", "10.1.7.7", src_mask=8, dst_mask=8, out_if=9,
                 next_hop=ip("10.0.0.1"))
    agg.agent_aggregate_flows(records=[rec])
    assert routes.asked == []


def test_fields_limit_what_is_filled_and_looked_up():
    routes = FakeRoutes()
    agg = make(routes, fields=["dst_mask"])
    rec = record("10.2.3.4", "10.1.7.7")
    agg.agent_aggregate_flows(records=[rec])
    assert routes.asked == [ip("10.1.7.7")]  # no source lookup
    assert (rec.dst_mask, rec.src_mask, rec.next_hop, rec.out_if) == (16, 0, b"", 0)


def test_unroutable_addresses_stay_unknown_and_are_counted():
    routes = FakeRoutes()
    agg = make(routes)
    recs = [record("10.2.3.4", "192.0.2.1"), record("192.0.2.1", "10.1.0.1"),
            record("10.2.3.4", "192.0.2.1")]
    agg.agent_aggregate_flows(records=recs)
    agg.agent_aggregate_flows(records=[record("10.2.3.4", "192.0.2.1")])
    assert (recs[0].dst_mask, recs[0].next_hop, recs[0].out_if, recs[0].src_mask) == (0, b"", 0, 20)
    assert (recs[1].src_mask, recs[1].dst_mask) == (0, 16)
    stats = agg.agent_collect_stats()
    assert stats["unroutable"] == 1  # one address, asked once, the answer cached
    assert stats["unroutable_records"] == 3  # records whose destination had no route
    assert routes.asked.count(ip("192.0.2.1")) == 1


def test_failed_lookups_are_counted_not_cached_and_retried():
    routes = FakeRoutes()
    agg = make(routes)
    routes.fail = True
    rec = record("10.2.3.4", "10.1.7.7")
    agg.agent_aggregate_flows(records=[rec])
    assert (rec.dst_mask, rec.src_mask, rec.next_hop) == (0, 0, b"")
    assert agg.agent_collect_stats()["errors"] == 2
    routes.fail = False
    agg.agent_aggregate_flows(records=[rec])
    assert (rec.dst_mask, rec.src_mask) == (16, 20)


def test_empty_batch_asks_nothing():
    routes = FakeRoutes()
    assert make(routes).agent_aggregate_flows(records=[]) is None
    assert routes.asked == []


# --- configuration ---------------------------------------------------------------------------


def _validate(tmp_path: Path, table: str, check_env: bool = False) -> list[str]:
    pm, _ = make_manager()
    pcap = tmp_path / "e.pcap"
    pcap.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[[ingest.pcap]]\npath = "{pcap}"\n[[export.log]]\n{table}')
    _, issues = validate(cfg, build_registry(pm), pm.hook, check_env=check_env)
    return [i.format() for i in issues]


def test_config_defaults_and_checks(tmp_path):
    cfg = Config()
    assert (cfg.netns, cfg.cache_ttl_s, cfg.override) == ("", 60.0, False)
    assert list(cfg.fields) == ["next_hop", "src_mask", "dst_mask", "out_if"]
    assert Config(netns="bad name!").check()[0].path == "netns"
    assert Config(fields=["dst_mask", "dst_mask"]).check()[0].severity == "warning"
    problems = _validate(tmp_path, '[[aggregate.route]]\nfields = ["gateway"]\n')
    assert any("aggregate.route[0].fields" in p for p in problems), problems
    problems = _validate(tmp_path, "[[aggregate.route]]\nmax_cache_entries = 0\n")
    assert any("max_cache_entries" in p for p in problems), problems


def test_missing_namespace_is_reported_with_check_env(tmp_path):
    table = '[[aggregate.route]]\nnetns = "nfa-no-such-namespace"\n'
    assert _validate(tmp_path, table) == []
    problems = _validate(tmp_path, table, check_env=True)
    assert any("aggregate.route[0].netns" in p and "not found" in p for p in problems), problems
    assert not Path("/run/netns/nfa-no-such-namespace").exists()


def test_registered_as_aggregate_route():
    pm, _ = make_manager()
    ctype = build_registry(pm).get("aggregate", "route")
    assert ctype is not None and ctype.factory is RouteAggregator and ctype.config_class is Config
