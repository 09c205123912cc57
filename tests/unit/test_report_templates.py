"""``agent stats``: the Protocol line shows ``(templates N, active N)`` as ipt_NETFLOW does.

``templates`` = the templates an exporter may send with its settings (flows, NEL, options),
``active`` = those it has put on the wire (a template is active once a collector has had it).
v5 has no templates and the line says nothing about them.
"""

from __future__ import annotations

from netflow_agent.report import build_snapshot, format_report
from tests.export_netflow.test_netflow_component import flows
from tests.support.collectors import UdpSink


def protocol_lines(agent) -> list[str]:
    text = format_report(build_snapshot(agent.pipeline))
    return [line for line in text.splitlines() if line.startswith("Protocol version")]


def test_protocol_line_counts_templates_and_active_ones(make_agent, collecting_plugin):
    with UdpSink() as v9_sink, UdpSink() as ipfix_sink, UdpSink() as v5_sink:
        agent = make_agent(
            "[[ingest.fake]]\n"
            f'[[export.netflow]]\ndestination = ["{v9_sink.endpoint}"]\nprotocol = 9\n'
            f'[[export.netflow]]\ndestination = ["{v5_sink.endpoint}"]\n'
            f'[[export.ipfix]]\ndestination = ["{ipfix_sink.endpoint}"]\n'
            "options_interval_s = 0\ntemplate_refresh_s = 90\n",
            [collecting_plugin])
        before = protocol_lines(agent)
        for name in ("export.netflow[0]", "export.netflow[1]", "export.ipfix[0]"):
            agent[name].agent_export_flows(records=flows(3))  # IPv4 only: one flow template
        after = protocol_lines(agent)
    tail = ". Timeouts: active 1800, inactive 15. Maxflows"
    v9 = "Protocol version 9 (netflow v9) [export.netflow[0]], refresh-rate 20, timeout-rate 30"
    v5 = "Protocol version 5 (netflow v5) [export.netflow[1]], refresh-rate 20, timeout-rate 30"
    ipfix = "Protocol version 10 (ipfix) [export.ipfix[0]], refresh-rate 20, timeout-rate 1.5"
    assert [line.split(tail)[0] for line in before] == [
        v9 + ", (templates 4, active 0)", v5, ipfix + ", (templates 8, active 0)"]
    assert [line.split(tail)[0] for line in after] == [
        v9 + ", (templates 4, active 1)", v5, ipfix + ", (templates 8, active 1)"]
