"""Privileged: ``[agent] snmp_rules`` on the wire, NetFlow v9 and IPFIX, decoded by tshark.

A fresh namespace holds interfaces ``eth3``, ``ppp7`` and ``br0`` (veth ends); the ingest
observes it (``declare_netns``). With ``snmp_rules = ["ppp:200", "eth:100"]`` the core maps the
kernel ifIndexes of the records (:meth:`SnmpIndexMap.apply`, what the scan loop does before
``agent_export_flows``): eth3 -> 103, ppp7 -> 207, br0 keeps its ifIndex. Both exporters must
carry those indexes in INPUT_SNMP/OUTPUT_SNMP (ingress/egressInterface, 10/14) and name the
same indexes in their interface-name options records (scope interface -> interfaceName 82).
The last test runs the whole agent (NFLOG in a namespace, v9 out) to show the scan loop does it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from netflow_agent.plugins.export_ipfix.component import IpfixExporter
from netflow_agent.plugins.export_ipfix.config import Config as IpfixConfig
from netflow_agent.plugins.export_netflow.component import NetflowExporter
from netflow_agent.plugins.export_netflow.config import Config as NetflowConfig
from netflow_agent.runtime import RunContext
from tests.export_ipfix.helpers import flow
from tests.export_ipfix.test_ipfix_netns_names import interface_names
from tests.export_netflow.test_netflow_parity import v9_names
from tests.support.agentproc import Agent
from tests.support.collectors import UdpSink, cflow_records, tshark_decode
from tests.support.netns import Netns, send_udp, veth_pair

pytestmark = pytest.mark.netns


def veths(ns: Netns, *pairs: tuple[str, str]) -> dict[str, int]:
    """veth pairs with both ends in ``ns`` (this kernel has no dummy driver): name -> ifIndex."""
    for a, b in pairs:
        ns.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
    return {name: ns.ifindex(name) for pair in pairs for name in pair}


def found(node: object, key: str) -> list[str]:
    """Every value of ``key`` anywhere in tshark's JSON."""
    if isinstance(node, dict):
        return [x for k, v in node.items() for x in ([v] if k == key else found(v, key))]
    if isinstance(node, list):
        return [x for v in node for x in found(v, key)]
    return []


@pytest.mark.parametrize("kind", ["v9", "ipfix"])
def test_exported_indexes_and_names_follow_the_rules(netns: Netns, kind: str):
    kernel = veths(netns, ("eth3", "ppp7"), ("br0", "wan"))
    ctx = RunContext()
    ctx.declare_netns("ingest.nflog[0]", netns.name)
    ctx.use_snmp_rules(["ppp:200", "eth:100"])
    records = [flow(0, in_if=kernel["eth3"], out_if=kernel["ppp7"]),
               flow(1, in_if=kernel["br0"], out_if=kernel["eth3"])]
    assert ctx.snmp is not None
    ctx.snmp.apply(records)  # the core, before agent_export_flows
    with UdpSink() as sink:
        if kind == "v9":
            exporter: NetflowExporter | IpfixExporter = NetflowExporter(
                NetflowConfig(destination=[sink.endpoint], protocol=9), "export.netflow[0]")
            exporter.agent_start(context=ctx)
            exporter.agent_export_flows(records=records)
        else:
            exporter = IpfixExporter(IpfixConfig(destination=[sink.endpoint]),
                                     "export.ipfix[0]")
            exporter.agent_start(context=ctx)
            exporter.agent_export_flows(records=records)
            exporter._send_options()
        exporter.agent_stop()
        messages = sink.collect()  # sent on loopback before agent_stop returned
        layers = tshark_decode(messages, sink.port)
    flows = {(int(r["cflow.inputint"]), int(r["cflow.outputint"]))
             for r in cflow_records(layers)}
    assert flows == {(103, 207), (kernel["br0"], 103)}
    # the names records use the same (mapped) indexes: by the project's parsers, and tshark
    names = v9_names(messages)[-1] if kind == "v9" else interface_names(messages)
    assert names == {103: "eth3", 207: "ppp7", kernel["br0"]: "br0"}
    assert set(found(layers, "cflow.if_name")) == {"eth3", "ppp7", "br0"}


def test_agent_with_nflog_exports_mapped_indexes(tmp_path: Path):
    """The whole agent: NFLOG in namespace B on interface eth4, NetFlow v9 out; the flows and
    the interface-name options say 104 for eth4 (``"eth:100"``), never B's ifIndex."""
    with Netns() as ns_a, Netns() as ns_b:
        pair = veth_pair(ns_a, ns_b, name_b="eth4")
        b = pair.b
        assert b.ifindex != 104
        with UdpSink() as sink:
            conf = tmp_path / "agent.toml"
            conf.write_text(f"""
[agent]
scan_interval_ms = 200
control_socket = "{tmp_path / 'agent.sock'}"
snmp_rules = ["ppp:200", "eth:100"]

[cache]
inactive_timeout = 1

[[ingest.nflog]]
group = 18
netns = "{ns_b.name}"
manage_rules = true
chains = ["input"]
families = ["ipv4"]
flush_timeout_ms = 50

[[export.netflow]]
protocol = 9
destination = ["{sink.endpoint}"]
""")
            agent = Agent(conf).start(ready="reading NFLOG group")
            try:
                assert send_udp(ns_a, b.addr, 9201, 4, 100, peer=ns_b).received == 4
                sink.wait_for(lambda got: any(104 in n for n in v9_names(got)), timeout=15)
            finally:
                assert agent.stop() == 0, agent.log()
            messages = sink.collect()
    ours = [r for r in cflow_records(tshark_decode(messages, sink.port))
            if r.get("cflow.dstport") == "9201"]
    assert ours and {r["cflow.inputint"] for r in ours} == {"104"}, agent.log()
    assert sum(int(r["cflow.packets"]) for r in ours) == 4
    assert {104: "eth4"}.items() <= v9_names(messages)[-1].items()
