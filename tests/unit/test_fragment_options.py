"""``[cache] fragment*`` options reach the packet ingests through ``RunContext.fragments``."""

from __future__ import annotations

from netflow_agent.config.check import validate
from netflow_agent.discovery import build_registry
from netflow_agent.fragments import DEFAULT_POLICY, FragmentPolicy
from netflow_agent.testing import build_agent, collecting_plugin_module
from tests.support.pcapgen import FlowSpec, PcapBuilder

CONFIG = """
[cache]
{cache}
[[ingest.pcap]]
path = "{pcap}"
[[export.collect]]
"""


def test_defaults_and_options_reach_the_context_and_the_parser(tmp_path):
    pcap = tmp_path / "c.pcap"
    PcapBuilder().write(pcap)
    agent = build_agent(CONFIG.format(cache="", pcap=pcap), tmp_path, [collecting_plugin_module])
    assert agent.pipeline.context.fragments == DEFAULT_POLICY == FragmentPolicy("track", 30,
                                                                                4096, 256)
    tracker = agent["ingest.pcap[0]"].parser.tracker
    assert tracker is not None and tracker.max_held == 256
    agent.finish()
    text = CONFIG.format(cache='fragments = "ports0"\nfragment_timeout = 9\nfragment_table = 7\n'
                         "fragment_held = 3", pcap=pcap)
    agent = build_agent(text, tmp_path, [collecting_plugin_module])
    assert agent.pipeline.context.fragments == FragmentPolicy("ports0", 9, 7, 3)
    assert agent["ingest.pcap[0]"].parser.tracker is None
    agent.finish()


def test_reload_changes_the_policy_for_ingests_started_afterwards(tmp_path):
    pcap = tmp_path / "c.pcap"
    b = PcapBuilder()
    b.add(FlowSpec("udp", "10.0.0.1", "10.0.0.2", 1, 2))
    b.write(pcap)
    agent = build_agent(CONFIG.format(cache="", pcap=pcap), tmp_path, [collecting_plugin_module])
    cfg = tmp_path / "new.toml"
    cfg.write_text(CONFIG.format(cache="fragment_held = 5", pcap=pcap))
    new, issues = validate(cfg, build_registry(agent.pipeline.pm), None)
    assert new is not None, issues
    agent.pipeline.reload(new)
    assert agent.pipeline.context.fragments.held == 5
    agent.finish()
