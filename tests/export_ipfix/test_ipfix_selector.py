"""The cache's flow sampler reaches IPFIX collectors as an RFC 7014 Flow Selection Process.

For each ``[cache] sampler`` mode the exporter (fed the cache counters through its
RunContext) sends, besides samplingInterval/Algorithm (34/35), ipt_NETFLOW's selector
parameters and selector statistics options, and flow records carrying selectorId. tshark
decodes every value; nfcapd 1.7.1 still reads the stream and scales the flows. Packet
sampling and no sampling keep the plain flow templates.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from netflow_agent.model import (
    SAMPLING_DETERMINISTIC,
    SAMPLING_HASH,
    SAMPLING_RANDOM,
    Sampling,
)
from netflow_agent.plugins.export_ipfix.component import IpfixExporter
from netflow_agent.plugins.export_ipfix.config import Config
from netflow_agent.plugins.export_ipfix.ipfix import FLOW_LAYOUTS
from netflow_agent.plugins.export_ipfix.options import (
    SELECTOR_RANDOM,
    SELECTOR_STATS,
    SELECTOR_STATS_HASH,
    SELECTOR_SYSTEMATIC,
    selector_groups,
    selector_statistics,
)
from netflow_agent.runtime import RunContext
from tests.export_ipfix.helpers import flow, sets_of
from tests.support.collectors import Nfcapd, UdpSink, tshark_decode

N = 10
#: the cache counters the exporter reads (``RunContext.stats``): 400 flows expired, 40 of
#: them exported; 1,000 packets accounted, 100 still in the table; 5,000 discarded by hash
CORE = {"exported_flows": 40, "sampler_unselected_flows": 360, "traffic_packets": 1000,
        "memtraf_packets": 100, "sampler_discarded_packets": 5000}
FLOWS = [flow(i) for i in range(3)] + [flow(i, v6=True) for i in range(2)]
SELECTED_PACKETS = sum(r.packets for r in FLOWS)

#: mode -> (selector parameters as tshark shows them, selector statistics)
EXPECTED: dict[int, tuple[dict[str, str], dict[str, str]]] = {
    SAMPLING_DETERMINISTIC: (
        {"cflow.selector_id": "1", "cflow.flow_selector_algorithm": "1",
         "cflow.sampling_flow_interval": "1", "cflow.sampling_flow_spacing": str(N - 1)},
        {"cflow.selector_id": "1", "cflow.selectorid_total_flows_observed": "400",
         "cflow.selectorid_total_flows_selected": "40",
         "cflow.selector_id_total_pkts_observed": "900",
         "cflow.selector_id_total_pkts_selected": str(SELECTED_PACKETS)}),
    SAMPLING_RANDOM: (
        {"cflow.selector_id": "2", "cflow.flow_selector_algorithm": "3",
         "cflow.sampling_size": "1", "cflow.sampling_population": str(N)},
        {"cflow.selector_id": "2", "cflow.selectorid_total_flows_observed": "400",
         "cflow.selectorid_total_flows_selected": "40",
         "cflow.selector_id_total_pkts_observed": "900",
         "cflow.selector_id_total_pkts_selected": str(SELECTED_PACKETS)}),
    SAMPLING_HASH: (
        {"cflow.selector_id": "3", "cflow.flow_selector_algorithm": "3",
         "cflow.sampling_size": "1", "cflow.sampling_population": str(N)},
        {"cflow.selector_id": "3", "cflow.selectorid_total_flows_selected": "40",
         "cflow.selector_id_total_pkts_observed": "6000",
         "cflow.selector_id_total_pkts_selected": "1000"}),
}


def start(destination: str, algorithm: int, flows: bool = True,
          **cfg: Any) -> tuple[IpfixExporter, RunContext]:
    ctx = RunContext(core_stats=lambda: CORE)
    exporter = IpfixExporter(Config(destination=[destination], observation_domain_id=3, **cfg),
                             "export.ipfix[0]")
    exporter.agent_start(ctx)
    ctx.declare_sampling("cache" if flows else "ingest.ebpf[0]", N, algorithm, flows=flows)
    return exporter, ctx


def records_by_set(layers: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Data records tshark decoded, by set id (the ``Flow n`` entries of every data set)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for frame in layers:
        for name, body in frame.items():
            if not name.startswith("Set ") or not isinstance(body, dict):
                continue
            set_id = int(body["cflow.flowset_id"])
            if set_id >= 256:
                out.setdefault(set_id, []).extend(
                    v for k, v in body.items() if k.startswith("Flow "))
    return out


def subset(record: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    return {k: record.get(k) for k in keys}


def test_selector_templates_use_ipt_netflow_widths():
    assert SELECTOR_SYSTEMATIC.encode() == struct.pack(
        "!HHH" + "HH" * 5, 278, 5, 2, 149, 4, 302, 1, 390, 1, 396, 1, 397, 2)
    assert SELECTOR_RANDOM.encode() == struct.pack(
        "!HHH" + "HH" * 5, 279, 5, 2, 149, 4, 302, 1, 390, 1, 309, 1, 310, 2)
    assert [ie for ie, _ in SELECTOR_STATS.fields] == [302, 394, 395, 318, 319, 152, 153]
    assert [ie for ie, _ in SELECTOR_STATS_HASH.fields] == [302, 395, 318, 319, 152, 153]
    (det,) = selector_groups(Sampling(N, SAMPLING_DETERMINISTIC, flows=True), 9)
    assert list(det.records) == [struct.pack("!IBBBH", 9, 1, 1, 1, N - 1)]
    (hashed,) = selector_groups(Sampling(N, SAMPLING_HASH, flows=True), 9)
    assert hashed.template is SELECTOR_RANDOM
    assert list(hashed.records) == [struct.pack("!IBBBH", 9, 3, 3, 1, N)]
    # packet sampling is no Flow Selection Process
    assert selector_groups(Sampling(N, SAMPLING_RANDOM), 9) == []
    assert selector_groups(None, 9) == []


def test_selector_statistics_from_the_cache_counters():
    det = selector_statistics(Sampling(N, SAMPLING_DETERMINISTIC, True), CORE, 77, 1, 2)
    assert (det.flows_observed, det.flows_selected, det.packets_observed,
            det.packets_selected) == (400, 40, 900, 77)
    hashed = selector_statistics(Sampling(N, SAMPLING_HASH, True), CORE, 77, 1, 2)
    assert (hashed.flows_observed, hashed.flows_selected, hashed.packets_observed,
            hashed.packets_selected) == (None, 40, 6000, 1000)


@pytest.mark.parametrize("algorithm", [SAMPLING_DETERMINISTIC, SAMPLING_RANDOM, SAMPLING_HASH])
def test_tshark_decodes_the_selector_and_flows_carry_its_id(algorithm):
    with UdpSink() as sink:
        exporter, _ = start(f"127.0.0.1:{sink.port}", algorithm)
        exporter.agent_export_flows(records=FLOWS)
        exporter._send_options()
        exporter.agent_stop()
        messages = sink.collect()
    records = records_by_set(tshark_decode(messages, sink.port))
    parameters, statistics = EXPECTED[algorithm]
    parameter_set = 278 if algorithm == SAMPLING_DETERMINISTIC else 279
    # the announcement, then every options round: the first, the explicit one, the one at stop
    assert [subset(r, parameters) for r in records[parameter_set]] == [parameters] * 4
    stats_set = 281 if algorithm == SAMPLING_HASH else 280
    assert [subset(r, statistics) for r in records[stats_set]] == [statistics] * 3
    if algorithm == SAMPLING_HASH:
        assert "cflow.selectorid_total_flows_observed" not in records[stats_set][0]
    flows = [r for set_id in range(288, 296) for r in records.get(set_id, [])]
    assert len(flows) == len(FLOWS)
    assert {r["cflow.selector_id"] for r in flows} == {str(algorithm)}
    assert not any(set_id in records for set_id in range(256, 264))
    # 34/35 stay for the collectors that read only those
    assert {r.get("cflow.sampling_interval") for r in records[277]} == {str(N)}


@pytest.mark.parametrize("algorithm", [SAMPLING_DETERMINISTIC, SAMPLING_RANDOM, SAMPLING_HASH])
def test_nfcapd_still_scales_flow_sampled_records(tmp_path, algorithm):
    with Nfcapd(tmp_path / "ipfix") as cap:
        exporter, _ = start(f"127.0.0.1:{cap.port}", algorithm)
        exporter.agent_export_flows(records=FLOWS)
        exporter._send_options()
        exporter.agent_stop()  # the paced backlog sent (the pacing thread may not have yet)
        got = cap.flows()  # waits until nfcapd read what was sent
    expected = sorted((r.packets * N, r.octets * N, 1) for r in FLOWS)
    assert sorted((f["packets"], f["bytes"], f["raw"]["sampled"]) for f in got) == expected


def test_packet_sampling_and_sampling_off_keep_the_plain_flow_templates():
    with UdpSink() as sink:
        exporter, ctx = start(f"127.0.0.1:{sink.port}", SAMPLING_RANDOM, flows=False,
                              options_interval_s=0)
        exporter.agent_export_flows(records=FLOWS[:1])
        ctx.forget_sampling("ingest.ebpf[0]")
        ctx.declare_sampling("cache", N, SAMPLING_HASH, flows=True)
        exporter.agent_export_flows(records=FLOWS[:1])
        ctx.forget_sampling("cache")  # the sampler switched off at reload
        exporter.agent_export_flows(records=FLOWS[:1])
        messages = sink.wait_for(lambda got: sum(
            sid in (256, 288) for m in got for sid, _ in sets_of(m)) >= 3)
    flow_sets = [sid for m in messages for sid, _ in sets_of(m) if sid in (256, 288)]
    assert flow_sets == [256, 288, 256]
    assert FLOW_LAYOUTS[256].template.record_length + 1 == \
        exporter.templates[288].record_length
    selector_sets = [sid for m in messages for sid, _ in sets_of(m) if sid in (278, 279)]
    assert selector_sets == [279]  # only while the flow sampler was on
