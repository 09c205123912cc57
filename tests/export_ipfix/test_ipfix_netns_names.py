"""Privileged: IPFIX interfaceName options name the interfaces of the namespace an ingest observes.

A veth pair joins two fresh namespaces A and B; the ingest observes B (``netns = B``), so the
ifIndexes in its flows are B's. The interface-names Options Data Records (template 275,
scope ingressInterface 10, interfaceName 82) must carry B's name for B's veth, where the
agent's own namespace knows that index under another name or not at all. Decoded by the
records' own layout (RFC 7011 section 7 variable length) and by tshark's cflow dissector;
the flow records (PyPI ``netflow``) must carry the same ifIndex as ingressInterface.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from netflow_agent.netns import names_here
from netflow_agent.plugins.export_ipfix.component import IpfixExporter
from netflow_agent.plugins.export_ipfix.config import Config
from netflow_agent.plugins.export_ipfix.options import INTERFACE_NAMES_ID
from netflow_agent.runtime import RunContext
from tests.export_ipfix.helpers import decodable, flow, sets_of
from tests.support.agentproc import start_agent, stop_agent
from tests.support.collectors import UdpSink, netflow_decode, tshark_decode
from tests.support.netns import VethPair, send_udp

pytestmark = pytest.mark.netns

_SCOPE = struct.Struct("!II")


def interface_names(messages: list[bytes]) -> dict[int, str]:
    """ifIndex -> interfaceName from every template-275 Data Set (last one wins)."""
    names: dict[int, str] = {}
    for message in messages:
        for set_id, body in sets_of(message):
            if set_id != INTERFACE_NAMES_ID:
                continue
            pos = 0
            while pos + _SCOPE.size + 1 <= len(body):
                _odid, index = _SCOPE.unpack_from(body, pos)
                pos += _SCOPE.size
                length = body[pos]
                pos += 1
                if length == 255:
                    length = int.from_bytes(body[pos:pos + 2], "big")
                    pos += 2
                names[index] = body[pos:pos + length].decode()
                pos += length
    return names


def tshark_names(messages: list[bytes], port: int) -> set[str]:
    """Every ``cflow.if_name`` value tshark decodes (it also checks nothing is malformed)."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "cflow.if_name":
                    found.add(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tshark_decode(messages, port))
    return found


def _exported_names(ctx: RunContext, index: int) -> list[bytes]:
    with UdpSink() as sink:
        exporter = IpfixExporter(Config(destination=[f"127.0.0.1:{sink.port}"],
                                        options_interval_s=60), "export.ipfix[0]")
        exporter.agent_start(context=ctx)
        exporter.agent_export_flows(records=[flow(0, in_if=index, out_if=0)])
        exporter._send_options()
        exporter.agent_stop()
        time.sleep(0.2)
        return sink.payloads()


def test_exporter_resolves_in_the_declared_namespace(veth_pair_ns: VethPair):
    b = veth_pair_ns.b
    here = names_here([b.ifindex]).get(b.ifindex)
    assert here != b.ifname  # the agent's namespace would name it wrongly or not at all

    undeclared = interface_names(_exported_names(RunContext(), b.ifindex))
    assert undeclared.get(b.ifindex) == here  # the old behaviour: the agent's own table

    ctx = RunContext()
    ctx.declare_netns("ingest.nflog[0]", b.ns.name)
    assert interface_names(_exported_names(ctx, b.ifindex)) == {b.ifindex: b.ifname}

    ctx.declare_netns("ingest.ebpf[0]", "")  # a second namespace: ambiguous, no names
    assert interface_names(_exported_names(ctx, b.ifindex)) == {}


def test_agent_with_nflog_in_netns_exports_the_names_there(veth_pair_ns: VethPair,
                                                          tmp_path: Path):
    a, b = veth_pair_ns.a, veth_pair_ns.b
    with UdpSink() as sink:
        conf = tmp_path / "agent.toml"
        conf.write_text(f"""
[agent]
scan_interval_ms = 200

[cache]
inactive_timeout = 1

[[ingest.nflog]]
group = 17
netns = "{b.ns.name}"
manage_rules = true
chains = ["input"]
families = ["ipv4"]
flush_timeout_ms = 50

[[export.ipfix]]
destination = ["127.0.0.1:{sink.port}"]
options_interval_s = 1
""")
        proc = start_agent(conf, tmp_path / "agent.log", ready="reading NFLOG group")
        try:
            traffic = send_udp(a.ns, b.addr, 9200, 5, 100, peer=b.ns)
            assert traffic.received == 5
            deadline = time.monotonic() + 15
            while (b.ifindex not in interface_names(sink.payloads())
                   and time.monotonic() < deadline):
                time.sleep(0.2)
        finally:
            stop_agent(proc)
        messages = sink.payloads()

    assert interface_names(messages).get(b.ifindex) == b.ifname, (tmp_path / "agent.log") \
        .read_text()
    assert b.ifname in tshark_names(messages, sink.port)
    _, records = netflow_decode(decodable(messages))
    ours = [r for r in records if r.get("destinationTransportPort") == 9200]
    assert ours and {r["ingressInterface"] for r in ours} == {b.ifindex}
    assert sum(r["packetDeltaCount"] for r in ours) == 5
