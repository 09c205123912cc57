"""NetFlow v9 carries what IPFIX carries: flowEndReason (136) and interface names (82).

Checked by independent decoders: tshark's cflow dissector must show the values (and find
nothing malformed); nfcapd 1.7.1, which has no field for either, must still read every flow
exactly (packets, bytes, ports) and skip what it does not know without errors.
"""

from __future__ import annotations

import dataclasses
import socket
import struct

from netflow_agent.model import END_ACTIVE, END_IDLE, END_OF_FLOW
from netflow_agent.plugins.export_netflow import v9
from netflow_agent.plugins.export_netflow.component import NetflowExporter
from netflow_agent.plugins.export_netflow.config import Config
from netflow_agent.runtime import RunContext
from tests.export_netflow.test_netflow_component import START, flows
from tests.export_netflow.test_netflow_sampling import v9_flowsets
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


def v9_names(datagrams: list[bytes]) -> list[dict[int, str]]:
    """ifIndex -> name from each interface-names options FlowSet (264), in order."""
    out = []
    for d in datagrams:
        for fid, body in v9_flowsets(d):
            if fid == v9.TEMPLATE_INTERFACE_NAMES:
                rec = v9.INTERFACE_NAMES_TEMPLATE.record
                usable = len(body) - len(body) % rec.size
                out.append({index: name.rstrip(b"\0").decode()
                            for index, name in rec.iter_unpack(body[:usable])})
    return out


def test_v9_interface_names_options_bytes():
    assert v9.INTERFACE_NAMES_TEMPLATE.flowset == struct.pack(
        "!HH HHH HH HH H", 1, 20, 264, 4, 4, 2, 4, 82, 16, 0)
    (t1, r1), (t2, r2) = v9.interface_names_options({7: "veth-b", 1: "lo"})
    assert (t1.template_id, r1) == (264, struct.pack("!I16s", 1, b"lo"))
    assert r2 == struct.pack("!I", 7) + b"veth-b".ljust(16, b"\0")


def test_v9_interface_names_decoded_by_tshark_and_ignored_by_nfcapd(tmp_path):
    lo = socket.if_nametoindex("lo")
    records = [dataclasses.replace(r, in_if=lo, out_if=0) for r in flows(2)]
    with Nfcapd(tmp_path / "v9") as cap, UdpSink() as sink:
        exp = v9_exporter(cap.port, sink.port)
        exp.agent_export_flows(records=records)
        datagrams = sink.wait(1)
        got = cap.flows()
    assert v9_names(datagrams) == [{lo: "lo"}]
    layers = tshark_decode(datagrams, sink.port)
    text = repr(layers)
    assert "'cflow.if_name': 'lo'" in text and f"'cflow.scope_interface': '{lo}'" in text
    assert sorted((f["sport"], f["in_if"], f["packets"], f["bytes"]) for f in got) == [
        (1000, lo, 2, 150), (1001, lo, 2, 150)]
    assert "Sequence Errors: 0, Bad Packets: 0" in cap.log
    stats = exp.agent_collect_stats()
    assert (stats["if_names"], stats["templates"], stats["templates_active"]) == (1, 5, 2)


def test_v9_interface_names_follow_the_template_refresh_and_new_interfaces_go_at_once():
    lo = socket.if_nametoindex("lo")
    gone = 0x7FFF_FFF0  # an ifIndex no interface has: noted, never named
    with UdpSink() as sink:
        exp = v9_exporter(sink.port, refresh_rate=3)
        for in_if in (0, lo, lo, lo, lo, gone):
            exp.agent_export_flows(records=[dataclasses.replace(flows(1)[0], in_if=in_if)])
        datagrams = sink.wait(6)
    # packet 0: no interface yet; 1: lo is new; 4: refresh (3 packets later); 5: a new index
    sent = {i: names for i, d in enumerate(datagrams) for names in v9_names([d])}
    assert sent == {1: {lo: "lo"}, 4: {lo: "lo"}, 5: {lo: "lo"}}
    assert exp.agent_collect_stats()["if_names_unresolved"] >= 1


def test_v9_interface_names_resolved_once_per_scan_and_anew_after_it():
    """The parts of one scan (no agent_tick between them) resolve names once, though every
    part sends them again with the template refresh; after the scan's tick a renamed
    interface goes out under its new name."""
    lo = socket.if_nametoindex("lo")
    names = {lo: "lo"}
    calls = []

    def resolve(indexes):
        calls.append(sorted(indexes))
        return {i: names[i] for i in indexes if i in names}

    with UdpSink() as sink:
        exp = v9_exporter(sink.port, refresh_rate=1)
        assert exp.context is not None
        exp.context.interface_names = resolve  # type: ignore[method-assign]
        for _ in range(3):  # one scan's parts: each refreshes templates and names
            exp.agent_export_flows(records=[dataclasses.replace(flows(1)[0], in_if=lo)])
        assert calls == [[lo]]
        names[lo] = "renamed"
        exp.agent_tick(now_ns=0)  # the scan ended
        exp.agent_export_flows(records=[dataclasses.replace(flows(1)[0], in_if=lo)])
        sent = v9_names(sink.wait(4))
    assert calls == [[lo], [lo]]
    assert sent == [{lo: "lo"}] * 3 + [{lo: "renamed"}]
