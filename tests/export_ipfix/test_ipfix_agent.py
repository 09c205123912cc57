"""The real ``agent`` CLI replays a generated pcap and exports IPFIX over UDP.

Mirrored to nfcapd and a raw sink: nfdump must list exactly the ground truth (IPv4 and IPv6,
packets and bytes); tshark must find nothing malformed and decode the options records; the
PyPI ``netflow`` package must parse the same flows; the header sequence numbers must follow
RFC 7011 section 3.1 on the wire. Loopback only, no root needed.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tests.support.agentproc import run_agent
from tests.support.collectors import (
    Nfcapd,
    UdpSink,
    cflow_records,
    flow_table,
    netflow_decode,
    tshark_decode,
)
from tests.support.pcapgen import MIXED_FLOWS, SAMPLE_EPOCH_NS, FlowSpec, PcapBuilder

SPECS = [
    *MIXED_FLOWS,
    FlowSpec("icmpv6", "fd00::3", "fd00::2", packets=3, payload=16, icmp_type=128),
]
# many small flows so that the export needs several MTU-bounded messages
SPECS += [FlowSpec("udp", f"10.9.{i // 250}.{i % 250 + 1}", "10.0.0.2", 2000 + i, 53,
                   packets=1 + i % 3, payload=10 + i % 50) for i in range(120)]


@pytest.fixture
def capture(tmp_path):
    builder = PcapBuilder()
    for i, spec in enumerate(SPECS):
        start = SAMPLE_EPOCH_NS + i * 10_000_000
        builder.add(FlowSpec(**{**spec.__dict__, "start_ns": start, "gap_ns": 2_000_000}))
    truth = builder.write(tmp_path / "flows.pcap")
    return tmp_path / "flows.pcap", truth


def test_agent_exports_ipfix_over_udp(tmp_path, capture):
    pcap, truth = capture
    sink = UdpSink()
    try:
        with Nfcapd(tmp_path / "nfcapd") as cap:
            config = tmp_path / "agent.toml"
            config.write_text(
                f'[[ingest.pcap]]\npath = "{pcap}"\n\n'
                f"[[export.ipfix]]\n"
                f'destination = ["127.0.0.1:{cap.port}", "127.0.0.1:{sink.port}"]\n'
                f"observation_domain_id = 77\nmtu = 576\nrefresh_rate = 3\n"
                f"options_interval_s = 1\n")
            result = run_agent("-c", str(config))
            assert result.returncode == 0, result.stderr
            flows = cap.flows()
        datagrams = sink.payloads()
    finally:
        sink.close()

    expected = {f[1:]: v for f, v in truth.table().items()}
    got = flow_table(r for r in flows if r.get("packets"))
    assert got == expected
    assert {r["src"] for r in flows if ":" in str(r["src"])}  # IPv6 flows made it

    _check_wire(datagrams)
    _check_netflow_package(datagrams, expected)
    _check_tshark(datagrams, sink.port, expected)


def _check_wire(datagrams: list[bytes]) -> None:
    assert len(datagrams) > 3
    expected_seq = 0
    for d in datagrams:
        version, length, _, seq, odid = struct.unpack_from("!HHIII", d)
        assert (version, length, odid) == (10, len(d), 77)
        assert len(d) <= 576 - 28
        assert seq == expected_seq
        expected_seq += _data_records(d)


def _data_records(message: bytes) -> int:
    """Count data records by walking the sets with templates learnt from the same stream."""
    from netflow_agent.plugins.export_ipfix.component import IpfixExporter
    from netflow_agent.plugins.export_ipfix.config import Config
    from netflow_agent.plugins.export_ipfix.ipfix import message_totals

    templates = IpfixExporter(Config(destination=["127.0.0.1:1"], natevents=True),
                              "t").templates
    return message_totals(message, templates)[0]


def _check_netflow_package(datagrams: list[bytes], expected: dict) -> None:
    # interface-name records use variable-length fields, which the package cannot parse
    from netflow_agent.plugins.export_ipfix.options import INTERFACE_NAMES_ID

    plain = [d for d in datagrams if not _has_set(d, INTERFACE_NAMES_ID)]
    _, records = netflow_decode(plain)
    table: dict[tuple, tuple[int, int]] = {}
    for r in records:
        if "packetDeltaCount" not in r:
            continue
        src = r.get("sourceIPv4Address", r.get("sourceIPv6Address"))
        dst = r.get("destinationIPv4Address", r.get("destinationIPv6Address"))
        v6 = "sourceIPv6Address" in r
        icmp = r.get("icmpTypeCodeIPv4", r.get("icmpTypeCodeIPv6"))
        key = (r["protocolIdentifier"],
               str(ipaddress.IPv6Address(src) if v6 else ipaddress.IPv4Address(src)),
               str(ipaddress.IPv6Address(dst) if v6 else ipaddress.IPv4Address(dst)),
               r.get("sourceTransportPort", 0),
               icmp if icmp is not None else r.get("destinationTransportPort", 0))
        pk, by = table.get(key, (0, 0))
        table[key] = (pk + r["packetDeltaCount"], by + r["octetDeltaCount"])
    assert table == expected
    assert any("exportedFlowRecordTotalCount" in r for r in records)
    assert any("notSentFlowTotalCount" in r for r in records)


def _has_set(message: bytes, set_id: int) -> bool:
    pos = 16
    while pos + 4 <= len(message):
        sid, length = struct.unpack_from("!HH", message, pos)
        if sid == set_id:
            return True
        pos += max(length, 4)
    return False


def _check_tshark(datagrams: list[bytes], port: int, expected: dict) -> None:
    layers = tshark_decode(datagrams, port)  # raises on malformed frames / expert errors
    records = cflow_records(layers)
    packets = sum(int(r["cflow.packets"]) for r in records if "cflow.packets" in r)
    assert packets == sum(p for p, _ in expected.values())
    keys = set(_all_keys(layers))
    # the statistics options records decode (pcap replay has no interfaces: no ifName)
    assert {"cflow.notsent_flows", "cflow.ignore_packets", "cflow.od_id"} <= keys


def _all_keys(node) -> list[str]:
    if isinstance(node, dict):
        return [k for k, v in node.items() for k in [k, *_all_keys(v)]]
    if isinstance(node, list):
        return [k for v in node for k in _all_keys(v)]
    return []
