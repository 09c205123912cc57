"""The report learns about components from their roles and stats, never from their config.

An exporter describes itself in ``agent_collect_stats`` (``protocol``, ``refresh_rate``,
``timeout_rate``, ``natevents``); the report believes that, whatever the exporter's
configuration fields are called. The cache is reached through its role's interface, and an
instance without its stage's role is refused when the pipeline is built.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import pytest

from netflow_agent.api import Component, Exporter, hookimpl, option
from netflow_agent.pipeline import StartupError
from netflow_agent.report import build_snapshot, format_report

BASE = "[[ingest.fake]]\n[[export.collect]]\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class MisleadingConfig:
    """Fields named like NetFlow's, with values the exporter does not use."""

    protocol: int = option(5, doc="Not the protocol this exporter sends.")
    refresh_rate: int = option(1, doc="Not used.")


class Ipfixish(Exporter):
    type_name = "ipfixish"

    @hookimpl
    def agent_collect_stats(self):
        return {"protocol": 10, "refresh_rate": 7, "natevents": True, "templates": 3,
                "templates_active": 2}


class NotACache(Component):
    stage, type_name = "cache", "plain"


def plugin(stage: str, name: str, cls: type) -> types.SimpleNamespace:
    def register(registry):
        registry.add(stage, name, cls, MisleadingConfig)

    return types.SimpleNamespace(agent_register_components=hookimpl(register))


def test_exporters_are_described_by_their_stats(make_agent, collecting_plugin):
    agent = make_agent(BASE + "[[export.ipfixish]]\nprotocol = 5\nrefresh_rate = 1\n",
                       [collecting_plugin, plugin("export", "ipfixish", Ipfixish)])
    snap = build_snapshot(agent.pipeline)
    (row,) = [e for e in snap["exporters"] if e["name"] == "export.ipfixish[0]"]
    assert (row["protocol"], row["refresh_rate"], row["natevents"]) == (10, 7, True)
    assert "Protocol version 10 (ipfix) [export.ipfixish[0]], refresh-rate 7, timeout-rate " \
           "None, (templates 3, active 2)." in format_report(snap)


def test_cache_part_comes_from_the_cache_role(make_agent, collecting_plugin):
    agent = make_agent("[cache]\nactive_timeout = 99\n" + BASE, [collecting_plugin])
    cache = build_snapshot(agent.pipeline)["cache"]
    assert (cache["active_timeout"], cache["inactive_timeout"]) == (99, 15)
    assert cache["flows_mem_bytes"] > cache["hash_mem_bytes"] > 0


def test_a_cache_without_the_cache_role_is_refused(make_agent, collecting_plugin):
    with pytest.raises(StartupError, match=r"cache: NotACache is not a netflow_agent.api.Cache"):
        make_agent('[cache]\ntype = "plain"\n' + BASE,
                   [collecting_plugin, plugin("cache", "plain", NotACache)])
