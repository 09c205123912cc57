"""Packet sampling reaches NetFlow collectors: v5 header field, v9 sampling options.

An ingest declares its sampling on the :class:`~agent.runtime.RunContext`; the exporter reads
it before each flow export. Checked on the wire (bytes), and by independent decoders: nfcapd
1.7.1 must scale packets and bytes by the interval and mark the flows sampled; tshark must
show the sampling fields without malformed frames or expert errors. Without sampling, nothing
changes on the wire (the other tests in this directory check those bytes).
"""

from __future__ import annotations

import logging
import struct
import time

import pytest

from netflow_agent.errors import EncodeError
from netflow_agent.model import SAMPLING_DETERMINISTIC, SAMPLING_RANDOM, Sampling
from netflow_agent.plugins.export_netflow import v5, v9
from netflow_agent.plugins.export_netflow.component import NetflowExporter
from netflow_agent.plugins.export_netflow.config import Config
from netflow_agent.plugins.export_netflow.state import ExportState
from netflow_agent.runtime import RunContext
from tests.export_netflow.test_netflow_component import START, flows
from tests.support.collectors import Nfcapd, UdpSink, tshark_decode

SOURCE = "ingest.ebpf[0]"


def exporter(sink_port: int, protocol: int, interval: int = 100,
             algorithm: int = SAMPLING_RANDOM, **kw) -> tuple[NetflowExporter, RunContext]:
    ctx = RunContext(start_ns=START)
    exp = NetflowExporter(Config(destination=[f"127.0.0.1:{sink_port}"], protocol=protocol,
                                 **kw), "export.netflow[0]")
    exp.agent_start(context=ctx)  # exporters start before ingests declare
    ctx.declare_sampling(SOURCE, interval, algorithm)
    return exp, ctx


def v9_flowsets(datagram: bytes) -> list[tuple[int, bytes]]:
    """``(flowset id, body)`` of every FlowSet of a v9 packet."""
    out, pos = [], v9.HEADER.size
    while pos + 4 <= len(datagram):
        fid, length = struct.unpack_from("!HH", datagram, pos)
        out.append((fid, datagram[pos + 4:pos + length]))
        pos += length
    return out


# --- v5 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sampling", "field"), [
    (None, 0),
    (Sampling(1), 0),
    (Sampling(100, SAMPLING_RANDOM), 0b10 << 14 | 100),
    (Sampling(100, SAMPLING_DETERMINISTIC), 0b01 << 14 | 100),
    (Sampling(16383), 0b10 << 14 | 16383),
])
def test_v5_sampling_field(sampling, field):
    assert v5.sampling_field(sampling) == field


def test_v5_sampling_field_refuses_what_14_bits_cannot_hold():
    with pytest.raises(EncodeError, match="14 bits"):
        v5.sampling_field(Sampling(16384))


def test_v5_flow_packets_carry_the_field_and_nat_pseudo_flows_do_not():
    state = ExportState(boot_ns=START, sampling_interval=v5.sampling_field(Sampling(50)))
    packets = v5.encode_flows(flows(40), state, time.time_ns())
    assert len(packets) == 2
    assert {v5.HEADER.unpack_from(p)[8] for p in packets} == {0b10 << 14 | 50}
    nat = v5.packets_from_bodies([bytes(48)], state, time.time_ns(), v5.Tally())
    assert v5.HEADER.unpack_from(nat[0])[8] == 0


def test_v5_component_announces_and_nfcapd_scales(tmp_path):
    with Nfcapd(tmp_path / "v5") as cap:
        exp, _ = exporter(cap.port, 5, 100, SAMPLING_DETERMINISTIC)
        exp.agent_export_flows(records=flows(3))
        exp.agent_stop()  # the paced backlog sent (the pacing thread may not have yet)
        got = cap.flows()  # waits until nfcapd read what was sent
    assert "packet interval: 1, packet space: 99" in cap.log
    assert sorted((f["packets"], f["bytes"], f["raw"]["sampled"]) for f in got) == \
        [(200, 15000, 1)] * 3  # 2 packets / 150 bytes each, times 100
    assert exp.agent_collect_stats()["sampling_interval"] == 100


def test_v5_component_tshark_shows_mode_and_rate():
    with UdpSink() as sink:
        exp, _ = exporter(sink.port, 5, 250, SAMPLING_RANDOM)
        exp.agent_export_flows(records=flows(2))
        datagrams = sink.wait(1)
    layer = tshark_decode(datagrams, sink.port)[0]
    assert (layer["cflow.samplingmode"], layer["cflow.samplerate"]) == ("2", "250")


def test_v5_component_sends_0_and_logs_when_the_interval_does_not_fit():
    errors: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: errors.append(record.getMessage())  # type: ignore[method-assign]
    with UdpSink() as sink:
        exp, _ = exporter(sink.port, 5, 20000)
        exp.log.addHandler(handler)  # not caplog: other tests may stop propagation
        try:
            exp.agent_export_flows(records=flows(1))
        finally:
            exp.log.removeHandler(handler)
        datagrams = sink.wait(1)
    assert v5.HEADER.unpack_from(datagrams[0])[8] == 0
    assert any("does not fit the NetFlow v5 header" in e for e in errors)
    assert exp.agent_collect_stats()["sampling_interval"] == 1


def test_unsampled_component_sends_0():
    with UdpSink() as sink:
        exp = NetflowExporter(Config(destination=[f"127.0.0.1:{sink.port}"]), "export.netflow[0]")
        exp.agent_start(context=RunContext(start_ns=START))
        exp.agent_export_flows(records=flows(1))
        datagrams = sink.wait(1)
    assert v5.HEADER.unpack_from(datagrams[0])[8] == 0


# --- v9 -------------------------------------------------------------------------------------


def test_v9_options_templates_and_records_bytes():
    assert v9.SAMPLING_TEMPLATE.flowset == struct.pack(
        "!HH HHH HH HH HH H", 1, 24, 262, 4, 8, 1, 4, 34, 4, 35, 1, 0)
    assert v9.SAMPLING_INTERVAL_TEMPLATE.flowset == struct.pack(
        "!HH HHH HH HH H", 1, 20, 263, 4, 4, 1, 4, 34, 4, 0)
    (t1, r1), (t2, r2) = v9.sampling_options(Sampling(100, SAMPLING_RANDOM), 7)
    assert (t1.template_id, r1) == (262, struct.pack("!IIB", 7, 100, 2))
    assert (t2.template_id, r2) == (263, struct.pack("!II", 7, 100))
    assert v9.sampling_options(None, 7) == []


def test_v9_options_open_the_first_packet_and_follow_the_template_refresh():
    with UdpSink() as sink:
        exp, _ = exporter(sink.port, 9, 100, refresh_rate=3)
        for _ in range(4):
            exp.agent_export_flows(records=flows(2))
        datagrams = sink.wait(4)
    with_options = []
    for i, d in enumerate(datagrams):
        sets = v9_flowsets(d)
        ids = [fid for fid, _ in sets]
        if 1 in ids:
            with_options.append(i)
            # options template, its records, then flow templates and data
            assert ids[:3] == [1, 262, 1] and ids[3] == 263
            assert sets[1][1][:9] == struct.pack("!IIB", 0, 100, 2)
            # count: 2 flows + 1 flow template + 2 options templates + 2 options records
            assert struct.unpack_from("!H", d, 2)[0] == 7
    assert with_options == [0, 3]  # first packet, then after refresh_rate = 3 packets
    stats = exp.agent_collect_stats()
    assert stats["records_encoded"] == 8 and stats["sampling_interval"] == 100


def test_v9_sampling_change_is_announced_at_once_and_stop_says_1():
    with UdpSink() as sink:
        exp, ctx = exporter(sink.port, 9, 100)
        exp.agent_export_flows(records=flows(1))
        exp.agent_export_flows(records=flows(1))
        ctx.forget_sampling(SOURCE)
        ctx.declare_sampling("ingest.ebpf[1]", 10, SAMPLING_DETERMINISTIC)
        exp.agent_export_flows(records=flows(1))
        ctx.forget_sampling("ingest.ebpf[1]")
        exp.agent_export_flows(records=flows(1))
        datagrams = sink.wait(4)
    announced = []
    for d in datagrams:
        for fid, body in v9_flowsets(d):
            if fid == 262:
                announced.append(struct.unpack_from("!IIB", body)[1:])
    assert announced == [(100, 2), (10, 1), (1, 2)]


def test_v9_nfcapd_scales_and_tshark_decodes(tmp_path):
    with Nfcapd(tmp_path / "v9") as cap, UdpSink() as sink:
        ctx = RunContext(start_ns=START)
        exp = NetflowExporter(Config(destination=[f"127.0.0.1:{cap.port}",
                                                  f"127.0.0.1:{sink.port}"], protocol=9),
                              "export.netflow[0]")
        exp.agent_start(context=ctx)
        ctx.declare_sampling(SOURCE, 64)
        exp.agent_export_flows(records=flows(3) + flows(2, version=6))
        datagrams = sink.wait(1)
        got = cap.flows()  # waits until nfcapd read what was sent
    assert "packet interval: 1, packet space: 63" in cap.log
    assert sorted((f["packets"], f["bytes"], f["raw"]["sampled"]) for f in got) == \
        [(128, 9600, 1)] * 5
    layer = tshark_decode(datagrams, sink.port)[0]
    text = repr(layer)
    assert "'cflow.sampling_interval': '64'" in text
    assert "'cflow.sampling_algorithm': '2'" in text


# --- dry run --------------------------------------------------------------------------------


@pytest.mark.parametrize(("sampling", "code"), [(16383, 0), (16384, 78)])
def test_dry_run_refuses_v5_when_an_ingest_samples_beyond_14_bits(tmp_path, sampling, code):
    from tests.support.agentproc import run_agent

    path = tmp_path / "agent.toml"
    path.write_text(f"""
[[ingest.ebpf]]
interfaces = ["lo"]
sampling = {sampling}

[[export.netflow]]
protocol = 5
destination = ["127.0.0.1:2055"]

[[export.netflow]]
protocol = 9
destination = ["127.0.0.1:2056"]
""")
    result = run_agent("--dry-run", "-c", str(path))
    assert result.returncode == code, result.stdout + result.stderr
    if code:
        out = result.stdout + result.stderr
        assert "export.netflow[0].protocol: an ingest samples 1/16384" in out
        assert "export.netflow[1]" not in out
