"""A third-party plugin adds a flow field through the schema and sees it in its export
(issue 13 acceptance).

The plugin below uses only ``netflow_agent.api``: it declares ``vrf_id`` (IANA
ingressVRFID, 234) in ``agent_register_components``, and its ingest fills the field in the
keys it builds (``make_key(..., ext=flow_schema().pack_ext(...))``). ``[flow] fields``
turns the field on; the whole in-process agent (cache, expiry, IPFIX exporter over UDP)
then sends IE 234 with the values the ingest saw, read back by tshark and by the PyPI
``netflow`` package, and flows that differ only in their VRF stay apart.
"""

from __future__ import annotations

import socket
import types
from dataclasses import dataclass

import pytest

from netflow_agent.api import (
    FlowField,
    Ingest,
    PacketBatch,
    RunContext,
    flow_schema,
    hookimpl,
    make_key,
)
from netflow_agent.schema import active, default_schema, set_active
from netflow_agent.testing import build_agent
from tests.support.collectors import UdpSink, cflow_records, netflow_decode, tshark_decode

T0 = 1_764_537_000_000_000_000
S = 1_000_000_000
#: (VRF, UDP source port, packets) the ingest emits, one packet of 100 bytes each
TRAFFIC = [(7, 5000, 3), (7, 5001, 1), (42, 5000, 2)]


@dataclass(frozen=True, slots=True, kw_only=True)
class VrfSourceConfig:
    """``[[ingest.vrf_source]]``: no keys."""


class VrfSource(Ingest):
    """Emits :data:`TRAFFIC` at start, each packet keyed with its VRF, then ends."""

    stage = "ingest"
    type_name = "vrf_source"
    finite = True

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        packets = []
        for vrf, sport, count in TRAFFIC:
            key = make_key(4, 17, socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2"),
                           sport, 53, ext=flow_schema().pack_ext({"vrf_id": vrf}))
            packets += [(key, 100, 0, T0 + n * S, 0) for n in range(count)]
        context.emit(PacketBatch(self.name, packets))
        context.done(self.name)


def register(registry) -> None:
    registry.add_flow_field(FlowField("vrf_id", ie=234, width=4, doc="ingressVRFID"))
    registry.add("ingest", "vrf_source", VrfSource, VrfSourceConfig, doc="VRF test source")


VRF_PLUGIN = types.SimpleNamespace(agent_register_components=hookimpl(register))


@pytest.fixture
def sink():
    with UdpSink() as s:
        yield s


@pytest.fixture(autouse=True)
def _default_schema_afterwards():
    yield
    set_active(default_schema())


def test_a_plugin_flow_field_reaches_the_ipfix_export(tmp_path, sink):
    agent = build_agent(f"""
[flow]
fields = ["vrf_id"]

[[ingest.vrf_source]]

[[export.ipfix]]
destination = ["{sink.endpoint}"]
""", tmp_path, [VRF_PLUGIN])
    assert active().has("vrf_id")
    agent.process()
    agent.finish()
    datagrams = sink.wait_for(lambda got: len(_tshark_rows(got, sink.port)) >= 3)

    rows = _tshark_rows(datagrams, sink.port)
    assert sorted(rows) == sorted((vrf, sport, count) for vrf, sport, count in TRAFFIC)

    _, flows = netflow_decode(datagrams)
    seen = sorted((f["ingressVRFID"], f["sourceTransportPort"], f["packetDeltaCount"])
                  for f in flows if "packetDeltaCount" in f)
    assert seen == sorted(TRAFFIC)


def _tshark_rows(datagrams: list[bytes], port: int) -> list[tuple[int, int, int]]:
    """(ingressVRFID, source port, packets) of every flow record tshark decodes."""
    out = []
    for rec in cflow_records(tshark_decode(datagrams, port)):
        if "cflow.ingress_vrfid" in rec:
            out.append((int(rec["cflow.ingress_vrfid"]), int(rec["cflow.srcport"]),
                        int(rec.get("cflow.packets64") or rec["cflow.packets"])))
    return out
