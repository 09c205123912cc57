"""``[[export.ipfix]]`` accepts ``engine_id``, the name every exporter gives the domain id.

The README's ipt_NETFLOW table promises ``engine_id`` on every exporter; on IPFIX it is the
Observation Domain ID (alias of ``observation_domain_id``). Two different values for the one
header field are a config error naming both keys.
"""

from __future__ import annotations

import struct

import pytest

from netflow_agent.config.convert import convert
from netflow_agent.plugins.export_ipfix.component import IpfixExporter
from netflow_agent.plugins.export_ipfix.config import Config
from netflow_agent.runtime import RunContext
from tests.export_ipfix.helpers import flow
from tests.support.collectors import UdpSink, tshark_decode

PATH = "export.ipfix[0]"


def converted(**table) -> tuple[Config | None, list]:
    return convert(Config, {"destination": ["127.0.0.1:4739"], **table}, PATH)


@pytest.mark.parametrize(("table", "domain"), [
    ({}, 0),
    ({"engine_id": 77}, 77),
    ({"observation_domain_id": 77}, 77),
    ({"engine_id": 77, "observation_domain_id": 77}, 77),
])
def test_engine_id_is_the_observation_domain(table, domain):
    config, issues = converted(**table)
    assert issues == [] and config is not None and config.domain_id == domain


def test_different_engine_id_and_observation_domain_id_is_an_error_naming_both():
    config, issues = converted(engine_id=0, observation_domain_id=5)
    (issue,) = issues
    assert issue.severity == "error" and issue.path == f"{PATH}.engine_id"
    assert "engine_id = 0" in issue.message and "observation_domain_id = 5" in issue.message


def test_engine_id_is_in_every_message_header_as_tshark_reads_it():
    with UdpSink() as sink:
        config, _ = convert(Config, {"destination": [sink.endpoint], "engine_id": 4242,
                                     "options_interval_s": 0}, PATH)
        exporter = IpfixExporter(config, PATH)
        exporter.agent_start(RunContext())
        exporter.agent_export_flows(records=[flow(0)])
        exporter.agent_stop()
        messages = sink.wait(1)
    assert {struct.unpack_from("!I", m, 12)[0] for m in messages} == {4242}
    layers = tshark_decode(messages, sink.port)
    assert {layer["cflow.od_id"] for layer in layers} == {"4242"}
