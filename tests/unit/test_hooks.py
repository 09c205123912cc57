"""One test per hook (``test_hook_<name>``): the plugin API behaves as docs/hooks.md says."""

from __future__ import annotations

import socket
import types
from dataclasses import dataclass

import pytest

from netflow_agent import hookimpl
from netflow_agent.config.schema import option
from netflow_agent.errors import ConfigError, ConfigIssue
from netflow_agent.metrics import metric_families
from netflow_agent.model import FlowBatch, FlowDelta, NatEvent, make_key
from netflow_agent.pipeline import StartupError
from netflow_agent.registry import Component
from netflow_agent.report import build_snapshot, format_report

S = 1_000_000_000
T0 = 1_700_000_000 * S
BASE = """
[cache]
inactive_timeout = 15
[[ingest.fake]]
[[export.collect]]
"""


def pkt(sport: int, ts: int = T0, length: int = 100, flags: int = 0):
    key = make_key(4, 17, socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2"), sport, 53)
    return (key, length, flags, ts, 0)


def plugin(**hooks):
    """A plugin module from keyword hook implementations."""
    return types.SimpleNamespace(**{k: hookimpl(v) for k, v in hooks.items()})


@dataclass(frozen=True, slots=True, kw_only=True)
class TagConfig:
    tag: str = option(doc="A tag.")

    def check(self):
        return [ConfigIssue("tag", "must not be empty")] if not self.tag else []


class Tagger(Component):
    """An aggregator that tags records by setting their TOS, and an observer of every hook."""

    stage = "aggregate"
    type_name = "tagger"

    def __init__(self, config, name):
        super().__init__(config, name)
        self.calls: list[str] = []

    @hookimpl
    def agent_start(self, context):
        self.calls.append("start")

    @hookimpl
    def agent_aggregate_flows(self, records):
        for r in records:
            r.tos = 42
        return records

    @hookimpl
    def agent_tick(self, now_ns):
        self.calls.append("tick")

    @hookimpl
    def agent_stop(self):
        self.calls.append("stop")

    @hookimpl
    def agent_collect_stats(self):
        return {"tagged": 1}


def register_tagger(registry):
    registry.add("aggregate", "tagger", Tagger, TagConfig, doc="test aggregator")


TAGGER = plugin(agent_register_components=register_tagger)


def test_hook_agent_register_components(make_agent, collecting_plugin):
    agent = make_agent(BASE + '[[aggregate.tagger]]\ntag = "x"\n', [collecting_plugin, TAGGER])
    assert isinstance(agent["aggregate.tagger[0]"], Tagger)
    assert agent["aggregate.tagger[0]"].config.tag == "x"


def test_hook_agent_check_config(make_agent, collecting_plugin):
    def check(config, check_env):
        return [ConfigIssue("export", "collect needs a friend", severity="error")]

    with pytest.raises(ConfigError) as err:
        make_agent(BASE, [collecting_plugin, plugin(agent_check_config=check)])
    assert "export: collect needs a friend" in str(err.value)
    with pytest.raises(ConfigError) as err:  # the Config.check() of a plugin table
        make_agent(BASE + '[[aggregate.tagger]]\ntag = ""\n', [collecting_plugin, TAGGER])
    assert "aggregate.tagger[0].tag: must not be empty" in str(err.value)


def test_hook_agent_start(make_agent, collecting_plugin):
    agent = make_agent(BASE + '[[aggregate.tagger]]\ntag = "x"\n', [collecting_plugin, TAGGER])
    assert agent["aggregate.tagger[0]"].calls == ["start"]

    class Broken(Component):
        stage, type_name = "export", "broken"

        @hookimpl
        def agent_start(self, context):
            raise OSError("collector address not available")

    def reg(registry):
        registry.add("export", "broken", Broken, TagConfig)

    with pytest.raises(StartupError, match=r"export.broken\[0\]: failed to start: collector"):
        make_agent(BASE + '[[export.broken]]\ntag = "x"\n',
                   [collecting_plugin, plugin(agent_register_components=reg)])


def test_hook_agent_tick(make_agent, collecting_plugin):
    agent = make_agent(BASE, [collecting_plugin])
    agent.scan(T0)
    agent.scan(T0 + S)
    assert agent["export.collect[0]"].ticks == [T0, T0 + S]


def test_hook_agent_stop(make_agent, collecting_plugin):
    agent = make_agent(BASE, [collecting_plugin])
    agent.feed([pkt(1)])
    agent.finish()
    sink = agent["export.collect[0]"]
    assert sink.stopped and [r.packets for r in sink.flows] == [1]  # flushed before stop


def test_hook_agent_cache_packets(make_agent, collecting_plugin):
    agent = make_agent(BASE, [collecting_plugin])
    agent.feed([pkt(1), pkt(1, length=50), pkt(2)], trunc=1, frag=2)
    stats = agent.pipeline.core_stats()
    assert (stats["traffic_packets"], stats["traffic_bytes"]) == (3, 250)
    assert (stats["trunc"], stats["frag"], stats["active_flows"]) == (1, 2, 2)


def test_hook_agent_cache_flows(make_agent, collecting_plugin):
    agent = make_agent(BASE, [collecting_plugin])
    delta = FlowDelta(pkt(7)[0], packets=10, octets=1000, start_ns=T0, end_ns=T0 + S)
    agent.pipeline.context.emit(FlowBatch("ingest.fake[0]", [delta]))
    agent.process()
    agent.finish()
    (rec,) = agent["export.collect[0]"].flows
    assert (rec.packets, rec.octets, rec.src_port) == (10, 1000, 7)


def test_hook_agent_cache_expire(make_agent, collecting_plugin):
    agent = make_agent(BASE, [collecting_plugin])
    agent.feed([pkt(1, ts=T0), pkt(2, ts=T0 + 10 * S)])
    agent.scan(T0 + 16 * S)  # flow 1 idle for 16 s > 15
    assert [r.src_port for r in agent["export.collect[0]"].flows] == [1]


def test_hook_agent_export_room(make_agent, collecting_plugin):
    """The smallest room an exporter reports caps a scan; the rest of the due flows leave in
    later scans, each once; a raising implementation sets no limit; stop exports the rest."""
    room = [3]
    agent = make_agent(BASE, [collecting_plugin, plugin(agent_export_room=lambda: room[0]),
                              plugin(agent_export_room=lambda: 1 / 0)])
    agent.feed([pkt(port, ts=T0) for port in range(1, 9)])
    agent.scan(T0 + 16 * S)
    got = agent["export.collect[0]"].flows
    assert len(got) == 3 and agent.pipeline.core_stats()["expiry_deferred"] == 5
    snap = build_snapshot(agent.pipeline)  # agent stats and metrics show the deferral
    assert snap["cache"]["expiry_deferred_age_s"] >= 0  # against the pipeline clock
    assert "Expiry deferred: 5 flows due (oldest " in format_report(snap)
    metrics = {f.name: f.samples[0].value for f in metric_families(snap) if f.samples}
    assert metrics["netflow_agent_expiry_deferred_flows"] == 5
    room[0] = 0  # full: nothing leaves, nothing is lost
    agent.scan(T0 + 17 * S)
    assert len(got) == 3
    room[0] = 4
    agent.scan(T0 + 18 * S)
    assert len(got) == 7
    agent.finish()  # a forced export asks no room
    assert sorted(r.src_port for r in got) == list(range(1, 9))


def test_hook_agent_aggregate_flows(make_agent, collecting_plugin):
    agent = make_agent(BASE + '[aggregate]\nrules = ["1000-2000=1000"]\n'
                       '[[aggregate.tagger]]\ntag = "x"\n', [collecting_plugin, TAGGER])
    agent.feed([pkt(1500), pkt(1600)])
    agent.finish()
    (rec,) = agent["export.collect[0]"].flows  # merged by rules, then tagged
    assert (rec.src_port, rec.packets, rec.tos) == (1000, 2, 42)


def test_hook_agent_export_flows(make_agent, collecting_plugin):
    failing = plugin(agent_export_flows=lambda records: 1 / 0)
    agent = make_agent(BASE + "[[export.collect]]\n", [collecting_plugin, failing])
    agent.feed([pkt(1)])
    agent.finish()
    # a raising exporter is counted; both collectors still got the record
    assert [len(agent[f"export.collect[{i}]"].flows) for i in (0, 1)] == [1, 1]
    assert agent.pipeline.hook_errors["test-plugin-1"] == 1


def test_hook_agent_export_nat_events(make_agent, collecting_plugin):
    agent = make_agent(BASE, [collecting_plugin])
    ev = NatEvent(1, T0, 4, 6, b"\n\0\0\1", b"\n\0\0\2", 1000, 80, b"\xc0\0\2\1", b"\n\0\0\2",
                  40000, 80, snat=True)
    agent["ingest.fake[0]"].push_nat([ev])
    agent.process()
    assert agent["export.collect[0]"].nat_events == [ev]
    assert agent.pipeline.core_stats()["nat_events"] == 1


def test_hook_agent_collect_stats(make_agent, collecting_plugin):
    agent = make_agent(BASE + '[[aggregate.tagger]]\ntag = "x"\n', [collecting_plugin, TAGGER])
    stats = agent.pipeline.collect_stats()
    assert stats["aggregate.tagger[0]"] == {"tagged": 1}
    assert "active_flows" in stats["core"] and "pps_1m" in stats["core"]


def test_reload_keeps_flows_and_applies_new_timeouts(make_agent, collecting_plugin, tmp_path):
    agent = make_agent(BASE, [collecting_plugin])
    agent.feed([pkt(1, ts=T0)])
    cache = agent["cache"]
    sink = agent["export.collect[0]"]
    from netflow_agent.config.check import validate
    from netflow_agent.discovery import build_registry

    cfg = tmp_path / "new.toml"
    cfg.write_text(BASE.replace("inactive_timeout = 15", "inactive_timeout = 5")
                   + "[[export.collect]]\n")
    new, issues = validate(cfg, build_registry(agent.pipeline.pm), None)
    assert new is not None, issues
    agent.pipeline.reload(new)
    assert agent["cache"] is cache and agent["export.collect[0]"] is sink  # unchanged: kept
    assert cache.active_flows == 1 and cache.config.inactive_timeout == 5
    agent.scan(T0 + 6 * S)  # idle 6 s > new 5 s timeout: exported to both collectors
    assert [len(agent[f"export.collect[{i}]"].flows) for i in (0, 1)] == [1, 1]


def test_invalid_reload_keeps_the_old_configuration(make_agent, collecting_plugin):
    agent = make_agent(BASE, [collecting_plugin])
    replies = []
    issue = ConfigIssue("cache.active_timeout", "-1 is below the minimum 1", file="a.toml")
    agent.pipeline.reloader = lambda: (None, [issue])  # what the CLI returns for a bad file
    agent.pipeline.request_reload(replies.append)
    agent.process()
    [outcome] = replies
    assert (outcome.ok, outcome.result, outcome.generation) == (False, "failed", 1)
    assert outcome.text() == ("not applied: the new configuration is invalid (1 error(s)); "
                              "still running generation 1\n"
                              "  a.toml: cache.active_timeout: -1 is below the minimum 1")
    assert agent.pipeline.reload_history.counts["failed"] == 1
    assert "export.collect[0]" in agent.pipeline.components
