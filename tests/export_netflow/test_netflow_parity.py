"""NetFlow v9 carries what IPFIX carries: flowEndReason (136) and interface names (82).

Checked by independent decoders: tshark's cflow dissector must show the values (and find
nothing malformed); nfcapd 1.7.1, which has no field for either, must still read every flow
exactly (packets, bytes, ports) and skip what it does not know without errors.
"""

from __future__ import annotations

import dataclasses

from netflow_agent.model import END_ACTIVE, END_IDLE, END_OF_FLOW
from netflow_agent.plugins.export_netflow.component import NetflowExporter
from netflow_agent.plugins.export_netflow.config import Config
from netflow_agent.runtime import RunContext
from tests.export_netflow.test_netflow_component import START, flows
from tests.support.collectors import Nfcapd, UdpSink, cflow_records, tshark_decode


def v9_exporter(*ports: int, **kw) -> NetflowExporter:
    exp = NetflowExporter(Config(destination=[f"127.0.0.1:{p}" for p in ports], protocol=9,
                                 **kw), "export.netflow[0]")
    exp.agent_start(context=RunContext(start_ns=START))
    return exp


def test_v9_flow_end_reason_decoded_by_tshark_and_nfcapd_reads_the_flows(tmp_path):
    reasons = (END_ACTIVE, END_OF_FLOW, END_IDLE)
    records = [dataclasses.replace(r, end_reason=e)
               for r, e in zip(flows(2) + flows(1, version=6), reasons, strict=True)]
    with Nfcapd(tmp_path / "v9") as cap, UdpSink() as sink:
        exp = v9_exporter(cap.port, sink.port)
        exp.agent_export_flows(records=records)
        datagrams = sink.wait(1)
        got = cap.flows()
    decoded = cflow_records(tshark_decode(datagrams, sink.port))
    by_flow = {(d.get("cflow.srcaddr") or d["cflow.srcaddrv6"], d["cflow.srcport"]):
               d["cflow.flow_end_reason"] for d in decoded}
    assert by_flow == {("10.0.0.1", "1000"): "2", ("10.0.0.1", "1001"): "3",
                       ("fd00::1", "1000"): "1"}
    assert sorted((f["src"], f["sport"], f["packets"], f["bytes"]) for f in got) == [
        ("10.0.0.1", 1000, 2, 150), ("10.0.0.1", 1001, 2, 150), ("fd00::1", 1000, 2, 150)]
    assert "Sequence Errors: 0, Bad Packets: 0" in cap.log
