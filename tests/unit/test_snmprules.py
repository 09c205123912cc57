"""snmp-rules (fprobe-ulog / ipt_NETFLOW): the grammar, one name, the cached map, the config."""

from __future__ import annotations

import pytest

from netflow_agent.clock import Clock
from netflow_agent.config.check import validate
from netflow_agent.discovery import build_registry, make_manager
from netflow_agent.loop import Loop
from netflow_agent.model import FlowRecord
from netflow_agent.reloading import describe_changes
from netflow_agent.runtime import RunContext
from netflow_agent.snmprules import (
    SnmpIndexMap,
    SnmpRule,
    SnmpRuleError,
    SnmpRules,
    parse_rules,
)
from netflow_agent.testing import build_agent, collecting_plugin_module
from tests.support.pcapgen import PcapBuilder


def test_rules_parse_in_order():
    assert parse_rules(["ppp:200", " eth:100 ", "vlan.:0"]) == (
        SnmpRule("ppp", 200), SnmpRule("eth", 100), SnmpRule("vlan.", 0))
    assert parse_rules([]) == ()


@pytest.mark.parametrize("bad", ["eth", "eth:", ":100", "eth:-1", "eth:1x", "e th:1",
                                 "eth:100:2", "a-very-long-name:1", "eth:4294967296"])
def test_malformed_rules_are_refused_by_name(bad):
    with pytest.raises(SnmpRuleError, match="snmp rule"):
        parse_rules([bad])


@pytest.mark.parametrize("name, ifindex, exported", [
    ("eth0", 7, 100), ("eth1", 8, 101), ("eth12", 9, 112), ("ppp0", 10, 200),
    ("ppp15", 11, 215),
    ("eth", 3, 3),  # no number: the kernel's ifIndex
    ("eth0.100", 4, 4),  # a VLAN sub-interface: not base name + number
    ("lo", 1, 1), ("veth1", 5, 5), ("br-lan", 6, 6)])
def test_base_name_plus_number_gives_base_plus_number(name, ifindex, exported):
    assert SnmpRules(parse_rules(["ppp:200", "eth:100"])).index(name, ifindex) == exported


def test_first_fitting_rule_wins():
    rules = SnmpRules(parse_rules(["eth1:500", "eth:100"]))
    assert rules.index("eth10", 3) == 500  # eth1 + "0"
    assert rules.index("eth2", 3) == 102  # eth1 does not fit: the next rule
    assert SnmpRules(parse_rules(["eth:4294967295"])).index("eth1", 3) == 3  # too large


class Names:
    """A namespace stand-in: kernel ifIndex -> name, counting resolutions."""

    def __init__(self, names: dict[int, str]):
        self.names = names
        self.calls: list[list[int]] = []

    def __call__(self, indexes):
        wanted = sorted(indexes)
        self.calls.append(wanted)
        return {i: self.names[i] for i in wanted if i in self.names}


def rec(in_if: int, out_if: int) -> FlowRecord:
    return FlowRecord(ip_version=4, protocol=17, src_addr=bytes(4), dst_addr=bytes(4),
                      in_if=in_if, out_if=out_if)


def test_map_rewrites_records_and_resolves_each_new_index_once():
    ns = Names({2: "eth0", 3: "ppp4", 4: "lo"})
    snmp = SnmpIndexMap(parse_rules(["ppp:200", "eth:100"]), ns)
    records = [rec(2, 3), rec(3, 2), rec(4, 0), rec(9, 2)]  # 9: no such interface
    snmp.apply(records)
    assert [(r.in_if, r.out_if) for r in records] == [(100, 204), (204, 100), (4, 0), (9, 100)]
    assert ns.calls == [[2, 3], [4], [9]]
    more = [rec(2, 3) for _ in range(100)]
    snmp.apply(more)  # all known: no resolution
    assert len(ns.calls) == 3 and {(r.in_if, r.out_if) for r in more} == {(100, 204)}
    assert snmp.names_of([100, 204, 4, 9]) == {100: "eth0", 204: "ppp4", 4: "lo"}


def test_refresh_follows_renamed_interfaces():
    ns = Names({2: "eth0"})
    snmp = SnmpIndexMap(parse_rules(["eth:100"]), ns)
    snmp.apply([rec(2, 0)])
    ns.names[2] = "eth5"  # renamed
    snmp.refresh()
    r = rec(2, 0)
    snmp.apply([r])
    assert r.in_if == 105 and snmp.names_of([100, 105]) == {105: "eth5"}


def check(tmp_path, rules: str):
    conf = tmp_path / "agent.toml"
    conf.write_text(f"[agent]\ncontrol_socket = \"\"\nsnmp_rules = {rules}\n")
    conf.chmod(0o600)
    return validate(conf, build_registry(make_manager([])[0]))


def test_config_names_the_key_of_a_malformed_rule(tmp_path):
    # (the file has no [[ingest]]/[[export]] either: only the [agent] issues matter here)
    _, issues = check(tmp_path, '["eth:100", "ppp"]')
    errors = [i for i in issues if i.path.startswith("agent")]
    assert [(i.path, i.severity) for i in errors] == [("agent.snmp_rules[1]", "error")]
    assert "'ppp'" in errors[0].message and "name:base" in errors[0].message
    _, issues = check(tmp_path, '["ppp:200", "eth:100"]')
    assert not [i for i in issues if i.path.startswith("agent")]


class Hook:
    """The plugin manager's hook as the scan loop calls it: one cache part, exports kept."""

    def __init__(self, records: list[FlowRecord]):
        self.records = records
        self.exported: list[tuple[int, int]] = []

    def agent_cache_expire(self, now_ns, force, limit=0):
        return [self.records]

    def agent_export_room(self):
        return []  # no exporter limits the scan

    def agent_aggregate_flows(self, records):
        pass

    def agent_export_flows(self, records):
        self.exported += [(r.in_if, r.out_if) for r in records]

    def agent_tick(self, now_ns):
        pass


def test_the_scan_hands_exporters_mapped_indexes_and_names_follow():
    ctx = RunContext()
    ctx.use_snmp_rules(["eth:100"])
    assert ctx.snmp is not None
    ctx.snmp.resolve = Names({5: "eth2", 6: "wan"})  # the observed namespace, stood in
    hook = Hook([rec(5, 6), rec(6, 5)])
    Loop(ctx, Clock(), hook, 1_000_000).scan(1)
    assert hook.exported == [(102, 6), (6, 102)]
    assert ctx.interface_names([102, 6]) == {102: "eth2", 6: "wan"}
    ctx.use_snmp_rules([])  # a reload without rules: kernel ifIndexes again
    assert ctx.snmp is None


RELOAD_CONFIG = """
[agent]
{agent}
[[ingest.pcap]]
path = "{pcap}"
[[export.collect]]
"""


def test_start_and_reload_take_the_rules(tmp_path):
    pcap = tmp_path / "c.pcap"
    PcapBuilder().write(pcap)
    agent = build_agent(RELOAD_CONFIG.format(agent='snmp_rules = ["eth:100"]', pcap=pcap),
                        tmp_path, [collecting_plugin_module])
    snmp = agent.pipeline.context.snmp
    assert snmp is not None and snmp.rules.index("eth2", 9) == 102
    cfg = tmp_path / "new.toml"
    for rules, expected in (('["eth:300"]', 302), ("[]", None)):
        cfg.write_text(RELOAD_CONFIG.format(agent=f"snmp_rules = {rules}", pcap=pcap))
        new, issues = validate(cfg, build_registry(agent.pipeline.pm), None)
        assert new is not None, issues
        assert describe_changes(agent.pipeline.config, new)  # not "unchanged"
        agent.pipeline.reload(new)
        snmp = agent.pipeline.context.snmp
        assert (snmp.rules.index("eth2", 9) if snmp else None) == expected
    agent.finish()
