"""A reload that swaps two exporter instances' configurations ([0]=A, [1]=B -> [0]=B,
[1]=A): both old instances stop before either replacement starts, so each collector's
stream goes on (RFC 3954 section 5.1: exporter address + Source ID) with nothing of the old
instance after the new one's first datagram."""

from __future__ import annotations

import socket

from netflow_agent.config.check import validate
from netflow_agent.discovery import build_registry
from netflow_agent.model import make_key
from netflow_agent.testing import build_agent, collecting_plugin_module
from tests.export_netflow.collect import UdpSink
from tests.support.wireaudit import WireAudit

S = 1_000_000_000
T0 = 1_700_000_000 * S
CONFIG = """
[agent]
control_socket = ""
[cache]
inactive_timeout = 1
[[ingest.fake]]
{exporters}"""
EXPORTER = """[[export.netflow]]
destination = ["{dest}"]
protocol = 9
engine_id = {engine}
"""


def packet(sport: int, ts: int) -> tuple:
    key = make_key(4, 17, socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2"),
                   sport, 53)
    return (key, 100, 0, ts, 0)


def test_swapping_two_exporters_configs_keeps_both_streams(tmp_path):
    sinks = {1: UdpSink(), 2: UdpSink()}  # collector per Source ID

    def config(order: tuple[int, int]) -> str:
        return CONFIG.format(exporters="".join(
            EXPORTER.format(dest=sinks[e].endpoint, engine=e) for e in order))

    agent = build_agent(config((1, 2)), tmp_path, [collecting_plugin_module])
    try:
        agent.feed([packet(1000 + i, T0) for i in range(50)])
        agent.scan(T0 + 3 * S)  # expired: exported by both instances
        (tmp_path / "swapped.toml").write_text(config((2, 1)))
        new, issues = validate(tmp_path / "swapped.toml",
                               build_registry(agent.pipeline.pm), None)
        assert new is not None, issues
        agent.pipeline.reload(new)
        assert agent["export.netflow[0]"].config.engine_id == 2
        agent.feed([packet(2000 + i, T0 + 4 * S) for i in range(50)])
        agent.scan(T0 + 7 * S)
    finally:
        agent.finish()
    for engine, sink in sinks.items():
        audit = WireAudit().feed_all(sink.drain())
        sink.close()
        audit.assert_clean()  # one stream: sequence from 0, never back
        assert list(audit.streams) == [("", 9, engine)]
        assert sorted(r.values[7] for r in audit.flows()) == [
            *range(1000, 1050), *range(2000, 2050)]


def test_a_reload_leaves_no_handover_behind(tmp_path):
    """A removed exporter's stream has no taker: a successful reload clears what replaced
    instances left (it would otherwise pile up with every reload)."""
    sinks = {1: UdpSink(), 2: UdpSink()}
    both = CONFIG.format(exporters="".join(
        EXPORTER.format(dest=sinks[e].endpoint, engine=e) for e in (1, 2)))
    agent = build_agent(both, tmp_path, [collecting_plugin_module])
    try:
        (tmp_path / "one.toml").write_text(CONFIG.format(
            exporters=EXPORTER.format(dest=sinks[1].endpoint, engine=1)))
        new, issues = validate(tmp_path / "one.toml", build_registry(agent.pipeline.pm), None)
        assert new is not None, issues
        agent.pipeline.reload(new)
        assert "export.netflow[1]" not in agent.pipeline.components
        assert agent.pipeline.context.handover == {}
    finally:
        agent.finish()
        for sink in sinks.values():
            sink.close()


def test_the_most_recent_of_equally_matching_handovers_is_taken():
    """Two stopped instances left streams to the same collector (an instance moved, then
    another reload): the replacement continues the later one."""
    from types import SimpleNamespace

    from netflow_agent.runtime import RunContext

    context = RunContext()
    older = SimpleNamespace(destinations={"10.0.0.1:2055", "10.0.0.2:2055"})
    newer = SimpleNamespace(destinations={"10.0.0.1:2055"})
    context.handover["stream"] = [older, newer]
    assert context.handed_over("stream", {"10.0.0.1:2055"}) is newer
    assert context.handed_over("stream", {"10.0.0.2:2055"}) is older  # the most shared wins
    assert context.handed_over("stream", {"10.0.0.3:2055"}) is None


def test_what_an_instance_leaves_is_found_until_its_replacement_took_it():
    from types import SimpleNamespace

    from netflow_agent.runtime import RunContext

    context = RunContext()
    left = SimpleNamespace(destinations={"10.0.0.1:2055"})
    context.leave("stream", left)
    assert context.handed_over("stream", {"10.0.0.1:2055"}) is left
    context.took("stream", left)
    assert context.handed_over("stream", {"10.0.0.1:2055"}) is None
