"""``[cache] sampler`` end to end: the agent replays a known flow population from a pcap.

1,000 UDP flows of 2 packets each go through ``agent`` with each ipt_NETFLOW sampler mode at
N = 10 and are exported as NetFlow v9 to nfcapd (plus a raw sink for tshark):

* deterministic exports exactly every 10th flow (100);
* random exports a binomial(1000, 1/10) share: mean 100, sd 9.5; the bounds 50..150 are
  over 5 sd wide, so a correct sampler fails them with probability below 1e-6;
* hash exports exactly the flows the documented hash selects (CRC-32 of version, protocol,
  ports and addresses, ``% 10 == 0``), the same flows on a second run, a binomial share too.

nfcapd must read the announcement (v9 sampling options 34/35): it scales every record's
packets and bytes by 10 and marks it sampled; tshark must decode the options record without
malformed frames, with interval 10 and the mode's algorithm number; the v5 header (mode bits
11 = hash, as ipt_NETFLOW) and IPFIX (34/35) announce it too and nfcapd scales them.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from netflow_agent.model import make_key
from netflow_agent.sampler import hash_selects
from tests.support.agentproc import run_agent
from tests.support.collectors import Nfcapd, UdpSink, tshark_decode, wait_udp_drained
from tests.support.pcapgen import FlowSpec, PcapBuilder

FLOWS = 1000
N = 10
PACKETS, PAYLOAD = 2, 100


def _specs() -> list[FlowSpec]:
    return [FlowSpec("udp", f"10.1.{i // 250}.{i % 250 + 1}", "10.2.0.1", 10000 + i, 53,
                     packets=PACKETS, payload=PAYLOAD) for i in range(FLOWS)]


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("sampler") / "flows.pcap"
    builder = PcapBuilder()
    for spec in _specs():
        builder.add(spec)
    return path, builder.write(path)


def _run(tmp_path: Path, pcap: Path, sampler: str,
         exporter: str = "[[export.netflow]]\nprotocol = 9") -> tuple[list[dict], list[dict]]:
    """Replay ``pcap`` with ``sampler``; return nfdump's records and tshark's cflow layers."""
    with Nfcapd(tmp_path / "nfcapd") as cap, UdpSink() as sink:
        config = tmp_path / "agent.toml"
        config.write_text(
            f'[agent]\ncontrol_socket = "{tmp_path / "agent.sock"}"\n\n'
            f'[cache]\nsampler = "{sampler}"\n\n[[ingest.pcap]]\npath = "{pcap}"\n\n'
            f"{exporter}\n"
            f'destination = ["127.0.0.1:{cap.port}", "{sink.endpoint}"]\n')
        result = run_agent("-c", str(config))
        assert result.returncode == 0, result.stderr
        wait_udp_drained(sink.port)  # the final options round may still be queued
        datagrams = sink.wait(1)
        records = cap.flows()
    return records, tshark_decode(datagrams, sink.port)


def _announced(layers: list[dict]) -> tuple[str, str]:
    text = repr(layers)
    interval = f"'cflow.sampling_interval': '{N}'"
    assert interval in text, text[:2000]
    for algorithm in ("1", "2", "3"):
        if f"'cflow.sampling_algorithm': '{algorithm}'" in text:
            return str(N), algorithm
    raise AssertionError("no sampling algorithm announced")


def _check_scaled(records: list[dict]) -> None:
    """nfcapd read the announcement: every record scaled by N and marked sampled."""
    ip_bytes = 20 + 8 + PAYLOAD
    assert {(r["packets"], r["bytes"], r["raw"]["sampled"]) for r in records} == \
        {(PACKETS * N, PACKETS * ip_bytes * N, 1)}


def _sources(records: list[dict]) -> set[tuple[str, int]]:
    return {(r["src"], r["sport"]) for r in records}


def test_deterministic_exports_exactly_every_nth_flow(tmp_path, capture):
    records, layers = _run(tmp_path, capture[0], f"deterministic:{N}")
    assert len(records) == FLOWS // N
    _check_scaled(records)
    assert _announced(layers) == (str(N), "1")


def test_random_exports_a_binomial_share(tmp_path, capture):
    records, layers = _run(tmp_path, capture[0], f"random:{N}")
    assert 50 <= len(records) <= 150, len(records)
    assert len(_sources(records)) == len(records)  # whole flows, none split
    _check_scaled(records)
    assert _announced(layers) == (str(N), "2")


def test_hash_selects_the_documented_flows_on_every_run(tmp_path, capture):
    first, layers = _run(tmp_path / "a", capture[0], f"hash:{N}")
    second, _ = _run(tmp_path / "b", capture[0], f"hash:{N}")
    expected = {(s.src, s.sport) for s in _specs() if hash_selects(make_key(
        4, 17, ipaddress.ip_address(s.src).packed, ipaddress.ip_address(s.dst).packed,
        s.sport, s.dport, in_if=7), N)}
    assert 50 <= len(expected) <= 150, len(expected)
    assert _sources(first) == _sources(second) == expected
    _check_scaled(first)
    assert _announced(layers) == (str(N), "3")


@pytest.mark.parametrize(("exporter", "fields"), [
    ("[[export.netflow]]\nprotocol = 5", ("cflow.samplingmode", "cflow.samplerate")),
    ("[[export.ipfix]]", ("cflow.sampling_algorithm", "cflow.sampling_interval")),
])
def test_v5_and_ipfix_announce_flow_sampling(tmp_path, capture, exporter, fields):
    records, layers = _run(tmp_path, capture[0], f"hash:{N}", exporter)
    assert 50 <= len(records) <= 150
    _check_scaled(records)
    assert f"'{fields[0]}': '3'" in repr(layers)  # 3 = hash (v5 mode bits 11, as ipt_NETFLOW)
    assert f"'{fields[1]}': '{N}'" in repr(layers)


def test_dry_run_refuses_flow_and_packet_sampling_together(tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text('[cache]\nsampler = "hash:100"\n\n'
                      '[[ingest.ebpf]]\ninterfaces = ["lo"]\nsampling = 10\n\n'
                      '[[export.netflow]]\ndestination = ["127.0.0.1:2055"]\n')
    result = run_agent("--dry-run", "-c", str(config))
    assert result.returncode == 78
    assert "cache.sampler" in result.stderr + result.stdout
    assert "packet sampling 1/10" in result.stderr + result.stdout


@pytest.mark.parametrize("bad", ["hash", "hash:1", "hash:16384", "sometimes:10", "random:x"])
def test_dry_run_refuses_a_bad_sampler(tmp_path, bad):
    config = tmp_path / "agent.toml"
    config.write_text(f'[cache]\nsampler = "{bad}"\n\n'
                      '[[export.netflow]]\ndestination = ["127.0.0.1:2055"]\n')
    result = run_agent("--dry-run", "-c", str(config))
    assert result.returncode == 78
    assert "cache.sampler" in result.stderr + result.stdout


def _last_record(layers: list[dict], field: str) -> dict:
    """The last data record tshark decoded that has ``field`` (the final options round)."""
    found = [flow for frame in layers for name, body in frame.items()
             if name.startswith("Set ") and isinstance(body, dict)
             for key, flow in body.items() if key.startswith("Flow ") and field in flow]
    assert found, f"no record with {field}"
    return found[-1]


@pytest.mark.parametrize(("mode", "observed_flows"), [
    ("deterministic", str(FLOWS)), ("random", str(FLOWS)), ("hash", None)])
def test_ipfix_selector_statistics_count_the_replay(tmp_path, capture, mode, observed_flows):
    """RFC 7014 selector records with the cache's real counters, and selectorId per flow."""
    records, layers = _run(tmp_path, capture[0], f"{mode}:{N}", "[[export.ipfix]]")
    _check_scaled(records)
    sid = {"deterministic": "1", "random": "2", "hash": "3"}[mode]
    stats = _last_record(layers, "cflow.selectorid_total_flows_selected")
    assert stats["cflow.selector_id"] == sid
    assert stats["cflow.selectorid_total_flows_selected"] == str(len(records))
    assert stats.get("cflow.selectorid_total_flows_observed") == observed_flows
    assert stats["cflow.selector_id_total_pkts_observed"] == str(FLOWS * PACKETS)
    assert stats["cflow.selector_id_total_pkts_selected"] == str(len(records) * PACKETS)
    algorithm = _last_record(layers, "cflow.flow_selector_algorithm")
    assert algorithm["cflow.flow_selector_algorithm"] == ("1" if mode == "deterministic"
                                                          else "3")
    flows = _last_record(layers, "cflow.srcaddr")
    assert flows["cflow.selector_id"] == sid
